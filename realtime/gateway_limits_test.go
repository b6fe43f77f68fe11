package realtime_test

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/realtime"
)

// eventually polls cond until it holds or 30s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialSlow opens a raw stream on channel with a tiny receive buffer and never reads it.
func dialSlow(t *testing.T, addr, channel string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024)
		})
		return cmp.Or(err, serr)
	}}
	conn, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "GET /?channel=%s HTTP/1.1\r\nHost: %s\r\n\r\n", channel, addr); err != nil {
		t.Fatal(err)
	}
	return conn
}

// TestGatewaySlowClient fills the socket of a client that never reads: the gateway ends
// that stream as an overflow within WriteTimeout and logs its resume position, while a
// reading client on the same gateway receives every event.
func TestGatewaySlowClient(t *testing.T) {
	t.Parallel()
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
	f := setup(t, realtime.GatewayConfig{
		Authorizer: realtime.AllowAll{}, WriteTimeout: 3 * time.Second, Buffer: 64, Logger: logger,
	})
	fast := f.open(channels("comments"), nil)
	fast.ack()
	dialSlow(t, f.srv.Listener.Addr().String(), "comments")
	eventually(t, "both streams open", func() bool { return f.gw.Stats().Connections == 2 })

	// About 20 MB of events: far more than the slow socket's buffers hold.
	const txs, perTx = 4, 5000
	for i := range txs {
		f.exec(fmt.Sprintf(`INSERT INTO comments SELECT g, 1, repeat('x', 1000) FROM generate_series(%d, %d) g`,
			i*perTx+1, (i+1)*perTx))
	}

	var last uint64
	for i := range txs * perTx {
		m := fast.mustNext()
		if m.Event != "insert" {
			t.Fatalf("event %d: %+v", i, m)
		}
		if !strings.Contains(m.Data, fmt.Sprintf(`"id":%d,`, i+1)) {
			t.Fatalf("event %d is not comment %d: %.200s", i, i+1, m.Data)
		}
		fmt.Sscan(m.ID, &last)
	}
	eventually(t, "slow stream ended as overflow", func() bool {
		st := f.gw.Stats()
		return st.Disconnects[realtime.DisconnectOverflow] == 1 && st.Connections == 1 && st.Subscriptions == 1
	})
	st := f.gw.Stats()
	if st.Disconnects[realtime.DisconnectClientGone] != 0 || st.ConnectionsTotal != 2 {
		t.Errorf("stats %+v", st)
	}
	var ended string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, `msg="stream ended"`) {
			ended = line
		}
	}
	var pos uint64
	if i := strings.Index(ended, "position="); !strings.Contains(ended, "reason=overflow") || i < 0 {
		t.Fatalf("no overflow record with a position in the log:\n%s", logs.String())
	} else if _, err := fmt.Sscan(ended[i+len("position="):], &pos); err != nil || pos >= last {
		t.Errorf("overflow logged position %d (%v), want below the last event %d: %s", pos, err, last, ended)
	}
}

func TestGatewayMaxConnections(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, MaxConnections: 2})
	a, b := f.open(channels("posts"), nil), f.open(channels("comments"), nil)
	a.ack()
	b.ack()
	resp := f.get(channels("posts"), nil)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many connections (limit 2)") {
		t.Fatalf("third stream: %d %q, want 503 too many connections", resp.StatusCode, body)
	}
	a.close()
	eventually(t, "closed stream counted", func() bool { return f.gw.Stats().Connections == 1 })
	c := f.open(channels("posts"), nil)
	c.ack()
	f.exec(`INSERT INTO posts VALUES (1, 'a')`)
	if got, _ := c.summary(1); got != "posts posts insert 1" {
		t.Errorf("new stream got %s", got)
	}
	st := f.gw.Stats()
	if st.Rejected[http.StatusServiceUnavailable] != 1 || st.Connections != 2 || st.ConnectionsTotal != 3 {
		t.Errorf("stats %+v", st)
	}
}

func TestGatewayHeartbeat(t *testing.T) {
	t.Parallel()
	f := setup(t, realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, Heartbeat: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"?channel=posts", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	var lines []string
	pings := 0
	for pings < 3 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", lines, err)
		}
		line = strings.TrimSuffix(line, "\n")
		lines = append(lines, line)
		switch {
		case line == ": ping":
			pings++
		case line == "", strings.HasPrefix(line, "id: "), line == "event: subscribed", strings.HasPrefix(line, "data: {\"channels\""):
		default:
			t.Fatalf("unexpected line %q (so far %q)", line, lines)
		}
	}
	if lines[1] != "event: subscribed" {
		t.Errorf("stream began %q, want the subscribed ack first", lines)
	}
}
