package walflow_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
)

// cutProxy forwards TCP connections from a loopback listener to target until Cut: from
// then on it blackholes, as a cut network does, every connection, open or new. It keeps
// them open and drops what either side sends, so neither end sees an error: each only
// notices the silence. Heal closes every connection, as the far ends do once they gave
// up, and forwards new connections again.
type cutProxy struct {
	ln     net.Listener
	target string
	cut    atomic.Bool

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *cutProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if p.cut.Load() {
				p.pipe(io.Discard, c) // a blackholed connection: never reaches the server
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil || !p.track(up) {
				if up != nil {
					up.Close()
				}
				c.Close()
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.pipe(c, up)
			}()
			p.pipe(up, c)
		}()
	}
}

// pipe copies src to dst while the network is up and drops what src sends while it is
// cut. When src ends, it closes dst too, unless the network is cut: then dst, which
// cannot hear of it, stays open until Heal.
func (p *cutProxy) pipe(dst io.Writer, src net.Conn) {
	defer src.Close()
	if c, ok := dst.(net.Conn); ok {
		defer func() {
			if !p.cut.Load() {
				c.Close()
			}
		}()
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.cut.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// heal closes every connection, open or blackholed, and forwards new ones again.
// A connection is tracked before its goroutine reads cut, so each one is either closed
// here or accepted after and forwarded.
func (p *cutProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	p.cut.Store(false)
}

func (p *cutProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// TestClusterNetworkCut cuts the network between the leader and PostgreSQL, the nastiest
// way: a blackhole, in which packets vanish and no connection ends. NATS stays reachable,
// so the leader keeps its registry entry alive, and only PostgreSQL can tell: the
// walsender of the cut leader's replication connection gets no reply within the
// standby's wal_sender_timeout (pgwal.Standby.SenderTimeout, 5s) and exits, freeing the
// slot. Another node takes it over while a writer commits throughout; once the network
// heals, the old leader rejoins as a standby. The stream holds every committed change
// once, in commit order, and the operator's derived table equals its recomputation.
func TestClusterNetworkCut(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+countsSchema)
	lc := startNATS(t, 3)
	pcfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startCutProxy(t, fmt.Sprintf("%s:%d", pcfg.Host, pcfg.Port))
	viaProxy := strings.Replace(dsn, fmt.Sprintf("%s:%d", pcfg.Host, pcfg.Port), proxy.addr(), 1)
	if viaProxy == dsn {
		t.Fatalf("cannot route %s through the proxy", dsn)
	}
	// Every node keeps its channel index under the same ledger directory, one per node
	// name, and finds it again when it restarts.
	ledgerDir := filepath.Join(t.TempDir(), "data")
	start := func(name, url string) *clusterNode {
		eng, err := walflow.Open(ctx, walflow.Config{
			DatabaseURL: url, Slot: pcfg.Database, LedgerDir: ledgerDir,
			Tables: []channel.Table{
				{Name: "posts"},
				{Name: "comments", Scopes: []channel.Scope{mustScope(t, "posts/{post_id}")}},
			},
			Operators:      []operator.Operator{countsOperator},
			StatusInterval: 200 * time.Millisecond,
			Logger:         testLogger(t),
			Cluster: &cluster.Config{URLs: lc.URLs(), NodeName: name, Replicas: 3,
				Heartbeat: 500 * time.Millisecond, NodeTTL: 3 * time.Second},
		})
		return runClusterNode(t, name, eng, err)
	}
	// Engine.Status would wait up to 5s on node-1's slot query over the cut network, and
	// so see each step late: read the source's state directly.
	streaming := func(n *clusterNode) bool { return walflow.Streaming(n.eng) }

	// node-1 reaches PostgreSQL through the proxy, and leads: it starts first.
	first := start("node-1", viaProxy)
	poll(t, "node-1 to lead", func() bool { return streaming(first) })
	others := []*clusterNode{start("node-2", dsn), start("node-3", dsn)}
	if _, err := conn.Exec(ctx, `INSERT INTO posts VALUES (1, 'a'), (2, 'b')`); err != nil {
		t.Fatal(err)
	}

	// The writer commits a comment every 20ms, on its own connection, until stopped.
	wconn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wconn.Close(context.Background()) })
	var (
		committedMu sync.Mutex
		committed   []int
	)
	// It stops between commits, so that each insert it started is known committed or not.
	stopWriter := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for i := 1; ; i++ {
			if _, err := wconn.Exec(ctx, `INSERT INTO comments VALUES ($1, $2, 'x')`, i, 1+i%2); err != nil {
				writerDone <- err
				return
			}
			committedMu.Lock()
			committed = append(committed, i)
			committedMu.Unlock()
			select {
			case <-stopWriter:
				writerDone <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	writerStopped := false
	stopWriting := func() {
		if writerStopped {
			return
		}
		writerStopped = true
		close(stopWriter)
		if err := <-writerDone; err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	t.Cleanup(stopWriting)
	nCommitted := func() int {
		committedMu.Lock()
		defer committedMu.Unlock()
		return len(committed)
	}
	for _, n := range append([]*clusterNode{first}, others...) {
		poll(t, n.name+" to follow the writer", func() bool { return n.eng.Ledger().State().Head >= 12 })
	}

	// Cut node-1's network to PostgreSQL.
	proxy.cut.Store(true)
	cutAt := time.Now()
	cutHead := first.eng.Ledger().State().Head
	// Three steps follow, each timed from the cut: another node streams (the walsender's
	// wal_sender_timeout freed the slot), node-1 notices the silence and stops streaming,
	// and the operators run on another node (PostgreSQL ended node-1's idle lock session).
	var (
		second                      *clusterNode
		takeover, stepDown, opsMove time.Duration
		opsNode                     string
	)
	for takeover == 0 || stepDown == 0 || opsMove == 0 {
		since := time.Since(cutAt)
		if since > 60*time.Second {
			t.Fatalf("60s after the cut: another node streams after %s, node-1 stopped after %s, the operators moved after %s (0: not yet)", takeover, stepDown, opsMove)
		}
		for _, n := range others {
			if second == nil && streaming(n) {
				second, takeover = n, since
			}
		}
		if stepDown == 0 && !streaming(first) {
			stepDown = since
		}
		if opsMove == 0 {
			if c := others[0].eng.Status(ctx).Cluster; c != nil && len(c.Operators) == 1 && c.Operators[0].Node != first.name {
				opsNode, opsMove = c.Operators[0].Node, since
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("network cut: %s streams %s after the cut, node-1 stops streaming after %s, the operators run on %s after %s",
		second.name, takeover.Round(10*time.Millisecond), stepDown.Round(10*time.Millisecond), opsNode, opsMove.Round(10*time.Millisecond))
	// The new leader resumes from the slot: it appends what was committed after the cut.
	after := nCommitted()
	poll(t, second.name+" to append the changes committed since the cut", func() bool {
		return second.eng.Ledger().State().Head >= event.Position(2+after)
	})
	if h := first.eng.Ledger().State().Head; h < cutHead {
		t.Fatalf("node-1's head went back from %d to %d", cutHead, h)
	}

	// Heal the network: node-1 finds its connections gone and stands by.
	proxy.heal()
	healAt := time.Now()
	poll(t, "node-1 to stand by", func() bool {
		c := first.eng.Status(ctx).Cluster
		return !streaming(first) && c != nil && c.Leader == second.name
	})
	t.Logf("network healed: node-1 stands by %s later", time.Since(healAt).Round(10*time.Millisecond))
	time.Sleep(500 * time.Millisecond) // a few more commits with node-1 back as a standby
	stopWriting()

	// The stream: every committed change once, in commit order, on every node.
	committedMu.Lock()
	want := []string{"insert posts 1", "insert posts 2"}
	for _, id := range committed {
		want = append(want, fmt.Sprintf("insert comments %d", id))
	}
	committedMu.Unlock()
	var rows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM comments`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != len(want)-2 {
		t.Fatalf("comments holds %d rows; the writer committed %d", rows, len(want)-2)
	}
	for _, n := range append([]*clusterNode{first}, others...) {
		poll(t, fmt.Sprintf("%s to read %d events", n.name, len(want)), func() bool {
			return n.eng.Ledger().State().Head >= event.Position(len(want))
		})
		evs, err := n.eng.Ledger().Read(ctx, 0, len(want)+100)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for i, e := range evs {
			if e.Position != event.Position(i+1) {
				t.Fatalf("%s: event %d at position %d", n.name, i, e.Position)
			}
			got = append(got, describeChange(e))
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("%s: stream of %d events:\n%s\nwant %d:\n%s", n.name, len(got), strings.Join(got, "\n"), len(want), strings.Join(want, "\n"))
		}
	}
	for _, n := range others {
		if n != second && streaming(n) {
			t.Fatalf("both %s and %s stream the slot", second.name, n.name)
		}
	}

	// The operator ran on one node at a time and left the derived table right.
	poll(t, "counts to equal its recomputation", func() bool {
		var diff int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM (
			(SELECT id, n FROM counts EXCEPT SELECT p.id, (SELECT count(*) FROM comments c WHERE c.post_id = p.id) FROM posts p)
			UNION ALL
			(SELECT p.id, (SELECT count(*) FROM comments c WHERE c.post_id = p.id) FROM posts p EXCEPT SELECT id, n FROM counts)) d`).Scan(&diff); err != nil {
			t.Fatal(err)
		}
		return diff == 0
	})
}
