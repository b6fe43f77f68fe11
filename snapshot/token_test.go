package snapshot

import (
	"errors"
	"slices"
	"testing"

	"github.com/walflow/walflow/event"
)

func TestTokenDeliver(t *testing.T) {
	// Snapshot 100:110:103,107 at l1 = 5000, reading from position 20.
	tok := Token{After: 20, LSN: 5000, Xmin: 100, Xmax: 110, Xip: []uint64{103, 107}}
	cases := []struct {
		name string
		e    event.Event
		want bool
	}{
		{"at or before After", event.Event{Position: 20, LSN: 100, XID: 200}, false},
		{"below xmin: visible", event.Event{Position: 21, LSN: 4000, XID: 99}, false},
		{"between, not in flight: visible", event.Event{Position: 22, LSN: 4000, XID: 105}, false},
		{"in flight at the snapshot", event.Event{Position: 23, LSN: 4000, XID: 103}, true},
		{"in flight, last of xip", event.Event{Position: 23, LSN: 4000, XID: 107}, true},
		{"at xmax: started after", event.Event{Position: 24, LSN: 4000, XID: 110}, true},
		{"commit LSN at l1", event.Event{Position: 25, LSN: 5000, XID: 99}, true},
		{"commit LSN after l1", event.Event{Position: 26, LSN: 6000, XID: 105}, true},
	}
	for _, c := range cases {
		if got := tok.Deliver(&c.e); got != c.want {
			t.Errorf("%s: Deliver(position %d, lsn %d, xid %d) = %v, want %v", c.name, c.e.Position, c.e.LSN, c.e.XID, got, c.want)
		}
	}
}

func TestTokenDeliverAcrossWraparound(t *testing.T) {
	// Epoch 3, xmax just past the 32-bit wraparound: xids 4294967290 (epoch 2) and 5
	// (epoch 3) compare as PostgreSQL does.
	const epoch3 = uint64(3) << 32
	tok := Token{LSN: 1 << 40, Xmin: epoch3 - 10, Xmax: epoch3 + 10, Xip: []uint64{epoch3 - 6, epoch3 + 5}}
	for _, c := range []struct {
		xid  uint32
		want bool
	}{
		{4294967290, true},  // epoch3-6: in flight
		{4294967291, false}, // epoch3-5: visible
		{5, true},           // epoch3+5: in flight
		{6, false},          // visible
		{10, true},          // xmax
		{4294967280, false}, // below xmin, epoch 2
	} {
		e := event.Event{Position: 1, LSN: 1, XID: c.xid}
		if got := tok.Deliver(&e); got != c.want {
			t.Errorf("xid %d: Deliver = %v, want %v (widened to %d)", c.xid, got, c.want, FullXID(tok.Xmax, c.xid))
		}
	}
	if got := FullXID(epoch3+10, 4294967290); got != epoch3-6 {
		t.Errorf("FullXID across the wrap = %d, want %d", got, epoch3-6)
	}
	if got := FullXID(10, 4294967290); got != 4294967290 {
		t.Errorf("FullXID below epoch 0 = %d, want the id itself", got)
	}
}

func TestTokenText(t *testing.T) {
	tok := Token{After: 42, LSN: 0x16B374D848, Xmin: 1 << 33, Xmax: 1<<33 + 9, Xip: []uint64{1<<33 + 1, 1<<33 + 4}}
	got, err := ParseToken(tok.String())
	if err != nil {
		t.Fatal(err)
	}
	if got.After != tok.After || got.LSN != tok.LSN || got.Xmin != tok.Xmin || got.Xmax != tok.Xmax || !slices.Equal(got.Xip, tok.Xip) {
		t.Fatalf("round trip of %s gave %+v", tok, got)
	}
	noXip := Token{After: 1, LSN: 2, Xmin: 3, Xmax: 3}
	if got, err := ParseToken(noXip.String()); err != nil || got.Xip != nil || got.Xmax != 3 {
		t.Fatalf("round trip of %s gave %+v, %v", noXip, got, err)
	}
	for _, bad := range []string{"", "s1", "s2.1.2.3.4", "s1.1.2.3", "s1.1.2.x.4", "s1.1.2.5.4", "s1.1.2.3.9.10", "s1.1.2.3.9.5.4", "s1.1.2.3.9.2"} {
		if _, err := ParseToken(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) = %v, want ErrBadToken", bad, err)
		}
	}
}

func TestParseSnapshot(t *testing.T) {
	xmin, xmax, xip, err := parseSnapshot("100:110:107,103")
	if err != nil || xmin != 100 || xmax != 110 || !slices.Equal(xip, []uint64{103, 107}) {
		t.Fatalf("got %d %d %v %v", xmin, xmax, xip, err)
	}
	if _, _, xip, err := parseSnapshot("5:5:"); err != nil || xip != nil {
		t.Fatalf("empty xip: %v %v", xip, err)
	}
}
