package jetstream_test

import (
	"context"
	"net"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// latencyProxy forwards TCP connections from a loopback listener to target, holding each
// byte back, in each direction, for the delay set when it is forwarded (none at first).
type latencyProxy struct {
	ln     net.Listener
	target string
	delay  atomic.Int64 // nanoseconds

	mu    gosync.Mutex
	conns []net.Conn
	wg    gosync.WaitGroup
}

func startLatencyProxy(t *testing.T, target string) *latencyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &latencyProxy{ln: ln, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(up, c)
			go p.pipe(c, up)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// pipe copies src to dst, each chunk the proxy's delay after it was read.
func (p *latencyProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	type chunk struct {
		at time.Time
		b  []byte
	}
	q := make(chan chunk, 1024)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer dst.Close()
		for c := range q {
			time.Sleep(time.Until(c.at.Add(time.Duration(p.delay.Load()))))
			if _, err := dst.Write(c.b); err != nil {
				return
			}
		}
	}()
	defer close(q)
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{time.Now(), buf[:n]}
		}
		if err != nil {
			return
		}
	}
}

// TestSlowServerRead reads a range of events older than the cache from a server that
// answers later than a fetch waits (a loaded server, or a slow network): the read waits
// longer and returns every event, rather than reporting the first one missing.
func TestSlowServerRead(t *testing.T) {
	defer jetstream.SetFetchWait(500 * time.Millisecond)()
	s := startServer(t, "", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream := newStream()
	w := lead(t, connect(t, s), stream)
	const n = 300
	ledgertest.WriteTx(t, w, 10, txEvents(10, n)...)
	sync(t, w)

	proxy := startLatencyProxy(t, s.Addr().String())
	nc, err := nats.Connect("nats://"+proxy.ln.Addr().String(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	r, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Indexer: ledgertest.Indexer, CacheEvents: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	eventually(t, "the reader to follow the stream", func() bool { return r.State().Head == n })

	// A round trip of 1.6s: longer than the first fetch waits (500ms, and a second more
	// before the client gives up).
	proxy.delay.Store(int64(800 * time.Millisecond))
	start := time.Now()
	es, err := r.Read(ctx, 0, n)
	if err != nil {
		t.Fatalf("Read from a slow server: %v", err)
	}
	t.Logf("read %d events in %s", len(es), time.Since(start).Round(time.Millisecond))
	if len(es) != n {
		t.Fatalf("read %d events, want %d", len(es), n)
	}
	for i, e := range es {
		if e.Position != event.Position(i+1) {
			t.Fatalf("event %d has position %d", i, e.Position)
		}
	}
}
