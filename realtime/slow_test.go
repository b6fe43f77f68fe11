package realtime_test

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/realtime"
)

const (
	slowEvents = 100_000
	slowTxs    = 4
	// slowHeapGrowth bounds the live heap's growth while events flow to clients that do
	// not read: far less than what one of them would hold if its events were buffered
	// without limit (slowEvents × about 350 bytes of JSON, over 500 bytes as Go values).
	slowHeapGrowth = 10 << 20
)

// TestSlowClients streams 100,000 events to a channel with an SSE client and a WebSocket
// client that never read, next to a reading client of each protocol. The readers receive
// every event; the slow clients are disconnected as overflows with their resume position
// logged, while the heap holds nothing beyond what the ledger keeps. Each slow client then
// resumes from the last event it received and gets the rest with no gap, while two more
// clients that never read ask for the whole backlog: the heap stays bounded.
//
// It does not run in parallel: it measures the process's heap.
func TestSlowClients(t *testing.T) {
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
	f := setup(t, realtime.GatewayConfig{
		Authorizer: realtime.AllowAll{}, WriteTimeout: time.Second, Buffer: 256, Logger: logger,
	})
	addr := f.srv.Listener.Addr().String()

	// Live: the events flow while the clients are connected.
	fastSSE := f.open(channels("comments"), nil)
	fastSSE.ack()
	fastWS := dialFastWS(t, f, `{"type":"subscribe","channel":"comments"}`)
	slowSSE := dialSlow(t, addr, "comments")
	slowWS := dialSlowWS(t, addr, `{"type":"subscribe","channel":"comments","ref":"slow"}`)
	eventually(t, "four subscriptions", func() bool {
		st := f.gw.Stats()
		return st.Connections == 4 && st.Subscriptions == 4
	})
	before := heapLive()
	sampler := sampleHeap()
	sseDone := make(chan error, 1)
	go func() { sseDone <- readFastSSE(fastSSE.msgs, 1) }()
	wsDone := make(chan error, 1)
	go func() { wsDone <- readFastWS(fastWS, 1) }()
	for i := range slowTxs {
		per := slowEvents / slowTxs
		f.exec(fmt.Sprintf(`INSERT INTO comments SELECT g, 1, 'x' FROM generate_series(%d, %d) g`, i*per+1, (i+1)*per))
	}
	waitReaders(t, map[string]chan error{"reading SSE client": sseDone, "reading WebSocket client": wsDone})
	eventually(t, "both slow clients disconnected as overflows", func() bool {
		st := f.gw.Stats()
		return st.Disconnects[realtime.DisconnectOverflow] == 2 && st.Connections == 2
	})
	during := sampler.stop()
	after := heapLive()
	// The memory ledger keeps the events, so the heap grows by their size: nothing else
	// may remain, or have been held while they flowed.
	t.Logf("live flow: live heap %d KiB before, at most %d KiB during, %d KiB after (the ledger holds the events)", before>>10, during>>10, after>>10)
	if during > after+slowHeapGrowth {
		t.Errorf("live flow: live heap reached %d KiB while the events flowed, %d KiB after: more than %d KiB held for the clients",
			during>>10, after>>10, slowHeapGrowth>>10)
	}
	if st := f.gw.Stats(); st.Disconnects[realtime.DisconnectClientGone] != 0 || st.Subscriptions != 2 {
		t.Errorf("stats %+v", st)
	}

	// The slow clients read what reached them; the gateway logged where to resume.
	sseLogged := overflowPosition(t, logs.String(), slowSSE)
	sseLast := readSlowSSE(t, slowSSE)
	wsLogged := overflowPosition(t, logs.String(), slowWS.conn)
	wsLast := readSlowWS(t, slowWS)
	t.Logf("overflows logged at positions %d (SSE) and %d (WebSocket); the clients received through %d and %d",
		sseLogged, wsLogged, sseLast, wsLast)
	// The logged position is one to resume from without a gap: the client has everything
	// up to it (and maybe more, of a write that timed out).
	if sseLast < sseLogged || wsLast < wsLogged {
		t.Errorf("the slow clients received less than the logged positions")
	}

	// Backlog: the slow clients resume from their last events (as Last-Event-ID does, so
	// with no duplicate either) and read the rest, while
	// two clients that never read ask for all the events.
	before = heapLive()
	sampler = sampleHeap()
	dialSlow(t, addr, "comments&after=0")
	dialSlowWS(t, addr, `{"type":"subscribe","channel":"comments","after":0}`)
	resumedSSE := f.open(channels("comments"), http.Header{"Last-Event-ID": {strconv.FormatUint(sseLast, 10)}})
	if a := resumedSSE.ack(); a.Position != sseLast {
		t.Fatalf("SSE resumed at %d, want %d", a.Position, sseLast)
	}
	go func() { sseDone <- readFastSSE(resumedSSE.msgs, sseLast+1) }()
	resumedWS := dialFastWS(t, f, fmt.Sprintf(`{"type":"subscribe","channel":"comments","after":%d}`, wsLast))
	go func() { wsDone <- readFastWS(resumedWS, wsLast+1) }()
	waitReaders(t, map[string]chan error{"resumed SSE client": sseDone, "resumed WebSocket client": wsDone})
	eventually(t, "the clients of the backlog disconnected as overflows", func() bool {
		return f.gw.Stats().Disconnects[realtime.DisconnectOverflow] == 4
	})
	during = sampler.stop()
	after = heapLive()
	t.Logf("backlog: live heap %d KiB before, at most %d KiB during, %d KiB after", before>>10, during>>10, after>>10)
	if during > before+slowHeapGrowth || after > before+slowHeapGrowth {
		t.Errorf("backlog: live heap grew from %d KiB to %d KiB (after: %d KiB), more than %d KiB",
			before>>10, during>>10, after>>10, slowHeapGrowth>>10)
	}
}

// waitReaders waits for the readers' results.
func waitReaders(t *testing.T, readers map[string]chan error) {
	t.Helper()
	for name, done := range readers {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s: not done within 2 minutes", name)
		}
	}
}

// heapLive collects garbage and returns the bytes it found live. (HeapInuse or HeapAlloc
// would also count what the streaming goroutines allocate while the collection finishes,
// tens of megabytes under the race detector.)
func heapLive() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// heapSampler records the most live heap every 250ms.
type heapSampler struct {
	done chan struct{}
	max  chan uint64
}

func sampleHeap() *heapSampler {
	s := &heapSampler{done: make(chan struct{}), max: make(chan uint64)}
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		var most uint64
		for {
			most = max(most, heapLive())
			select {
			case <-tick.C:
			case <-s.done:
				s.max <- max(most, heapLive())
				return
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the most live heap seen.
func (s *heapSampler) stop() uint64 {
	close(s.done)
	return <-s.max
}

// commentID returns the id of the comment in an event's JSON, or "".
func commentID(data string) string {
	const key = `"new_record":{"id":`
	i := strings.Index(data, key)
	if i < 0 {
		return ""
	}
	rest := data[i+len(key):]
	if j := strings.IndexByte(rest, ','); j >= 0 {
		return rest[:j]
	}
	return ""
}

// readFastSSE reads the events from comment from to comment slowEvents, checking that
// event n is comment n at position n. It holds no event once checked.
func readFastSSE(msgs <-chan msg, from uint64) error {
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for want := from; want <= slowEvents; want++ {
		var m msg
		select {
		case mm, ok := <-msgs:
			if !ok {
				return fmt.Errorf("stream ended before event %d", want)
			}
			m = mm
		case <-timeout.C:
			return fmt.Errorf("event %d not within 30s", want)
		}
		if want%1000 == 0 {
			timeout.Reset(30 * time.Second)
		}
		if pos, id := strconv.FormatUint(want, 10), commentID(m.Data); m.ID != pos || id != pos {
			return fmt.Errorf("event %s of comment %s (%s), want %d", m.ID, id, m.Event, want)
		}
	}
	return nil
}

// dialFastWS sends the subscribe message on a new WebSocket connection and reads its
// acknowledgement, for readFastWS.
func dialFastWS(t *testing.T, f *fixture, subscribe string) *websocket.Conn {
	t.Helper()
	c, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(f.srv.URL, "http")+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	if err := c.Write(t.Context(), websocket.MessageText, []byte(subscribe)); err != nil {
		t.Fatal(err)
	}
	_, b, err := c.Read(t.Context())
	if err != nil || !strings.HasPrefix(string(b), `{"type":"subscribed"`) {
		t.Fatalf("subscribe: %s %v", b, err)
	}
	return c
}

// readFastWS reads events as readFastSSE does.
func readFastWS(c *websocket.Conn, from uint64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for want := from; want <= slowEvents; {
		_, b, err := c.Read(ctx)
		if err != nil {
			return fmt.Errorf("after %d events: %w", want-1, err)
		}
		m := string(b)
		if strings.HasPrefix(m, `{"type":"heartbeat"`) {
			continue
		}
		pos := strconv.FormatUint(want, 10)
		if !strings.HasPrefix(m, `{"type":"event","channel":"comments","position":`+pos+`,`) || commentID(m) != pos {
			return fmt.Errorf("got %.200s, want event %d", m, want)
		}
		want++
	}
	return nil
}

// dialTiny dials addr with a tiny receive buffer, so that the kernel holds little of what
// a client that never reads is sent.
func dialTiny(t *testing.T, addr string) net.Conn {
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
	return conn
}

// rawWS is a WebSocket client written by hand on a TCP connection, which reads only when
// told.
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialSlowWS upgrades a connection with a tiny receive buffer, sends the subscribe
// message (under 126 bytes) and leaves it unread.
func dialSlowWS(t *testing.T, addr, subscribe string) *rawWS {
	t.Helper()
	conn := dialTiny(t, addr)
	key := base64.StdEncoding.EncodeToString([]byte(rand.Text())[:16])
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", addr, key); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("upgrade: %s %v", resp.Status, resp.Header)
	}
	// A client frame: FIN and text, then the masked length and payload.
	p := []byte(subscribe)
	mask := []byte{0x12, 0x34, 0x56, 0x78}
	frame := append([]byte{0x81, 0x80 | byte(len(p))}, mask...)
	for i, c := range p {
		frame = append(frame, c^mask[i%4])
	}
	if _, err := conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	return &rawWS{conn: conn, br: br}
}

// next reads one unfragmented text message.
func (w *rawWS) next() (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return "", err
	}
	if h[0] != 0x81 || h[1]&0x80 != 0 {
		return "", fmt.Errorf("frame header %x: not one unmasked text frame", h)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(w.br, l[:]); err != nil {
			return "", err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(w.br, l[:]); err != nil {
			return "", err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	if n > 1<<20 {
		return "", fmt.Errorf("frame of %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(w.br, p); err != nil {
		return "", err
	}
	return string(p), nil
}

// overflowPosition finds the log record of the overflow of conn's stream and returns its
// position.
func overflowPosition(t *testing.T, logs string, conn net.Conn) uint64 {
	t.Helper()
	addr := "remote_addr=" + conn.LocalAddr().String()
	for line := range strings.Lines(logs) {
		if !strings.Contains(line, `msg="stream ended"`) || !strings.HasSuffix(strings.TrimSpace(line), addr) {
			continue
		}
		i := strings.Index(line, " position=")
		if !strings.Contains(line, "reason=overflow") || i < 0 {
			t.Fatalf("stream ended, not as an overflow: %s", line)
		}
		f := strings.Fields(line[i+len(" position="):])
		pos, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		return pos
	}
	t.Fatalf("no stream ended record for %s in the log:\n%s", addr, logs)
	return 0
}

// readSlowSSE reads what reached a slow SSE client before the gateway cut it: the
// acknowledgement, then events 1 to n, maybe followed by a truncated one. It returns n.
func readSlowSSE(t *testing.T, conn net.Conn) uint64 {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	acked := false
	err = readSSE(resp.Body, func(m msg) bool {
		switch {
		case !acked:
			acked = m.Event == "subscribed" && m.ID == "0"
			if !acked {
				t.Errorf("first message %+v, want the acknowledgement", m)
			}
		case m.ID == strconv.FormatUint(n+1, 10) && commentID(m.Data) == m.ID:
			n++
		default:
			t.Errorf("after event %d: %.200q", n, m)
			return false
		}
		return true
	})
	// The stream ends cut, maybe in the middle of a chunk; it must not stay open.
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("reading what reached the slow client: %v", err)
	}
	return n
}

// readSlowWS reads what reached a slow WebSocket client before the gateway cut it, as
// readSlowSSE does.
func readSlowWS(t *testing.T, w *rawWS) uint64 {
	t.Helper()
	if err := w.conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	m, err := w.next()
	if err != nil || !strings.HasPrefix(m, `{"type":"subscribed","ref":"slow","channel":"comments","position":0}`) {
		t.Fatalf("first message %q (%v), want the acknowledgement", m, err)
	}
	var n uint64
	for {
		m, err := w.next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("reading what reached the slow client: %v", err)
			}
			return n
		}
		if strings.HasPrefix(m, `{"type":"heartbeat"`) {
			continue
		}
		pos := strconv.FormatUint(n+1, 10)
		if !strings.HasPrefix(m, `{"type":"event","channel":"comments","position":`+pos+`,`) || commentID(m) != pos {
			t.Fatalf("after event %d: %.200s", n, m)
		}
		n++
	}
}
