package pgwal

import (
	"testing"
	"time"
)

// TestSilenceLimits checks when a standby session's silent connection is pinged and when
// it is presumed dead: at half of SenderTimeout, as the walsender pings its client, and a
// whole SenderTimeout after that, so that a leader cut off from PostgreSQL stops leading
// 1.5 × SenderTimeout after the last message it received, not twice SenderTimeout.
func TestSilenceLimits(t *testing.T) {
	for _, c := range []struct {
		sb         *Standby
		ping, dead time.Duration
	}{
		{nil, 0, 0},
		{&Standby{SenderTimeout: -1}, 0, 0},
		{&Standby{SenderTimeout: 5 * time.Second}, 2500 * time.Millisecond, 7500 * time.Millisecond},
		{&Standby{SenderTimeout: time.Second}, 500 * time.Millisecond, 1500 * time.Millisecond},
	} {
		ping, dead := silenceLimits(c.sb)
		if ping != c.ping || dead != c.dead {
			t.Errorf("silenceLimits(%+v) = %s, %s; want %s, %s", c.sb, ping, dead, c.ping, c.dead)
		}
		st := &stream{src: &Source{cfg: Config{Standby: c.sb}}}
		if got := st.silenceLimit(); got != c.ping {
			t.Errorf("silenceLimit before the ping = %s, want %s", got, c.ping)
		}
		st.pinged = true
		if got := st.silenceLimit(); got != c.dead {
			t.Errorf("silenceLimit after the ping = %s, want %s", got, c.dead)
		}
	}
}
