package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowProxy forwards TCP connections from a loopback listener to target, as a slow
// network does: every byte is held back for delay in each direction, and each
// connection's bytes from the client pass at rate bytes per second at most (what the
// client sends faster waits in its socket: its writes block).
type slowProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	rate   int

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startSlowProxy(t *testing.T, target string, delay time.Duration, rate int) *slowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{ln: ln, target: target, delay: delay, rate: rate}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *slowProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *slowProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(up, c, p.rate)
		go p.pipe(c, up, 0)
	}
}

// pipe copies src to dst, each chunk delay after it was read, reading at rate bytes per
// second at most (0: as fast as src sends).
func (p *slowProxy) pipe(dst, src net.Conn, rate int) {
	defer p.wg.Done()
	type chunk struct {
		at time.Time
		b  []byte
	}
	q := make(chan chunk, 4096)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer dst.Close()
		for c := range q {
			time.Sleep(time.Until(c.at.Add(p.delay)))
			if _, err := dst.Write(c.b); err != nil {
				return
			}
		}
	}()
	defer close(q)
	for {
		buf := make([]byte, 16<<10)
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{time.Now(), buf[:n]}
			if rate > 0 {
				time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *slowProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestRegistrySlowWrites runs a node whose connection to NATS is slow (300 ms each way, a
// write's round trip three heartbeats) and saturated by the node's other traffic (as a
// leader's ledger appends saturate it), and checks that its entry stays in the registry
// all along: a node is live as long as a write lands within every NodeTTL, and its
// heartbeat does not queue behind the rest of its traffic.
func TestRegistrySlowWrites(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	lc := startOneServer(t, ctx)
	const (
		// A write's round trip is a fifth of the TTL: room for a loaded machine's stalls,
		// while the flood's queue, on the heartbeat's path, grows past the TTL in seconds.
		heartbeat = 200 * time.Millisecond
		ttl       = 3 * time.Second
		delay     = 300 * time.Millisecond
		rate      = 1 << 20 // bytes/s from each client connection
	)
	open := func(name, url string) (*Registry, *Conn) {
		return openTestRegistry(t, ctx, Config{URLs: []string{url}, NodeName: name, Replicas: 1, Heartbeat: heartbeat, NodeTTL: ttl})
	}
	proxy := startSlowProxy(t, strings.TrimPrefix(lc.URLs()[0], "nats://"), delay, rate)
	slow, conn := open("slow", proxy.url())
	watcher, _ := open("watcher", lc.URLs()[0])

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- slow.Run(runCtx, func() NodeInfo { return NodeInfo{Role: RoleLeader} }) }()
	defer func() {
		stop()
		<-done
	}()
	waitNodes(t, ctx, watcher, "slow")

	// The node's other traffic: more than its connection carries, for as long as the test.
	floodCtx, stopFlood := context.WithCancel(ctx)
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		payload := make([]byte, 32<<10)
		for floodCtx.Err() == nil {
			if err := conn.NC.Publish("flood", payload); err != nil {
				return
			}
		}
	}()
	defer func() {
		stopFlood()
		conn.NC.Close() // unblocks a Publish waiting on the saturated socket
		<-flooded
	}()

	for end := time.Now().Add(4 * ttl); time.Now().Before(end); {
		nodes, err := watcher.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 1 {
			t.Fatalf("the slow node's entry expired while it was running: nodes %+v", nodes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRegistryWritesInOrder runs a node whose writes take several heartbeats (a slow
// connection) and checks that each entry is filled only once the previous one has landed,
// so that entries land in the order they were filled: an older one never overwrites a
// newer one, such as the one a Beat wrote.
func TestRegistryWritesInOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	lc := startOneServer(t, ctx)
	open := func(name, url string) *Registry {
		reg, _ := openTestRegistry(t, ctx, Config{URLs: []string{url}, NodeName: name, Replicas: 1, Heartbeat: 20 * time.Millisecond, NodeTTL: 2 * time.Second})
		return reg
	}
	proxy := startSlowProxy(t, strings.TrimPrefix(lc.URLs()[0], "nats://"), 100*time.Millisecond, 1<<20)
	slow := open("slow", proxy.url())
	watcher := open("watcher", lc.URLs()[0])

	var (
		mu         sync.Mutex
		filled     uint64
		violations []string
	)
	fill := func() NodeInfo {
		mu.Lock()
		defer mu.Unlock()
		if filled > 0 {
			// The entry filled before this one has landed: the stored one is it.
			e, err := watcher.kv.Get(ctx, nodeKey("slow"))
			if err != nil {
				violations = append(violations, fmt.Sprintf("fill %d: read the stored entry: %v", filled+1, err))
			} else {
				var n NodeInfo
				if err := json.Unmarshal(e.Value(), &n); err != nil || n.Position != filled {
					violations = append(violations, fmt.Sprintf("fill %d while entry %d is stored (%v): the previous write has not landed", filled+1, n.Position, err))
				}
			}
		}
		filled++
		return NodeInfo{Role: RoleLeader, Position: filled}
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- slow.Run(runCtx, fill) }()
	for range 10 {
		if err := slow.Beat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for {
		mu.Lock()
		n := filled
		mu.Unlock()
		if n >= 20 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Fatalf("entries filled before the previous one landed:\n%s", strings.Join(violations, "\n"))
	}
}
