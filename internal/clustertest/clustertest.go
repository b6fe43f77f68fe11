// Package clustertest runs a walflow cluster of `walflow run` child processes for the
// cluster fault test (internal/faulttest) and the takeover benchmark (bench): the nodes'
// configuration, starting and SIGKILLing them, finding the leader, timing a takeover, a
// writer that logs every change it commits, and the check that the ledger stream holds
// every committed change once, in commit order.
//
// It is test support: its functions take a testing.TB and fail it on any error.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/jetstream"
)

// Schema is the cluster's database: items, which the writer changes (REPLICA IDENTITY
// FULL, so a delete carries its row), and sums, the SQL operator's derived table.
const Schema = `
CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, val int NOT NULL);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE sums (grp int PRIMARY KEY, total bigint NOT NULL, n bigint NOT NULL);`

// SumsQuery recomputes the derived row of a group; the operator sums runs it.
const SumsQuery = `INSERT INTO sums SELECT $1::int, coalesce(sum(val), 0), count(*) FROM items WHERE grp = $1
ON CONFLICT (grp) DO UPDATE SET total = EXCLUDED.total, n = EXCLUDED.n`

// SumsDiffQuery counts the rows in which sums differs from its recomputation from items.
const SumsDiffQuery = `SELECT count(*) FROM (
	(SELECT grp, total, n FROM sums WHERE n > 0 EXCEPT SELECT grp, sum(val), count(*) FROM items GROUP BY grp)
	UNION ALL
	(SELECT grp, sum(val), count(*) FROM items GROUP BY grp EXCEPT SELECT grp, total, n FROM sums)) d`

// PollEvery is how often Poll looks again.
const PollEvery = 20 * time.Millisecond

// Poll calls f every PollEvery until it reports done, and fails tb with what f last said
// when timeout passes first or f returns an error.
func Poll(tb testing.TB, timeout time.Duration, what string, f func() (done bool, state string, err error)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(PollEvery)
	defer tick.Stop()
	for {
		done, state, err := f()
		if err != nil {
			tb.Fatalf("waiting for %s: %v", what, err)
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("waiting for %s: not done after %s (%s)", what, timeout, state)
		}
		select {
		case <-tb.Context().Done():
			tb.Fatalf("waiting for %s: %v", what, tb.Context().Err())
		case <-tick.C:
		}
	}
}

// Options is the configuration every node of a cluster shares.
type Options struct {
	// DSN is the database, Slot the replication slot.
	DSN, Slot string
	// URLs are the NATS servers of the stream.
	URLs []string
	// Heartbeat and NodeTTL are cluster.heartbeat and cluster.node_ttl; zero leaves the
	// defaults.
	Heartbeat, NodeTTL time.Duration
	// LogLevel is the nodes' log level; empty is info.
	LogLevel string
	// Stream is cluster.stream; the registry's bucket is then <Stream>_nodes. Empty
	// leaves both defaults (cluster.StreamDefault, cluster.BucketDefault).
	Stream string
}

// Node is one `walflow run` child of a cluster. Its fields are set by NewNodes.
type Node struct {
	// Name is the node's cluster.node; Config its walflow.yaml; Addr its http.addr;
	// LogPath the file its output is appended to, every run.
	Name, Config, Addr, LogPath string

	runs   int
	cmd    *exec.Cmd
	exited chan struct{}
}

// NewNodes writes the configuration of n nodes (node-1 …) into dir and returns them, not
// started: the tables items, the SQL operator sums over it, the custom index by_grp (the
// field grp, computed by one node at a time into the shared store), an anonymous realtime gateway
// on the items channel, and the cluster with three replicas.
func NewNodes(tb testing.TB, dir string, n int, o Options) []*Node {
	tb.Helper()
	level := o.LogLevel
	if level == "" {
		level = "info"
	}
	var extra string
	if o.Heartbeat > 0 {
		extra += fmt.Sprintf("  heartbeat: %s\n", o.Heartbeat)
	}
	if o.NodeTTL > 0 {
		extra += fmt.Sprintf("  node_ttl: %s\n", o.NodeTTL)
	}
	if o.Stream != "" {
		extra += fmt.Sprintf("  stream: %s\n  bucket: %s_nodes\n", o.Stream, o.Stream)
	}
	urls := `"` + strings.Join(o.URLs, `", "`) + `"`
	var nodes []*Node
	for i := 1; i <= n; i++ {
		nd := &Node{Name: fmt.Sprintf("node-%d", i), Addr: FreeAddr(tb)}
		nd.Config = filepath.Join(dir, nd.Name+".yaml")
		nd.LogPath = filepath.Join(dir, nd.Name+".log")
		yaml := fmt.Sprintf(`database_url: %q
slot: %s
status_interval: 200ms
http: {addr: %q}
log: {level: %s}
ledger: {dir: %q}
tables:
  items: {}
operators:
  sums:
    entities: [items]
    id: {items: grp}
    query: %q
indexes:
  by_grp: {field: grp}
realtime:
  allow_anonymous: true
  anonymous_channels: [items]
cluster:
  node: %s
  urls: [%s]
  replicas: 3
%s`, o.DSN, o.Slot, nd.Addr, level, filepath.Join(dir, nd.Name+"-ledger"), SumsQuery, nd.Name, urls, extra)
		if err := os.WriteFile(nd.Config, []byte(yaml), 0o600); err != nil {
			tb.Fatal(err)
		}
		nodes = append(nodes, nd)
	}
	return nodes
}

// FreeAddr returns a loopback address no one listens on (at the time of the call).
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Start starts the node's walflow run (bin), its output appended to its log file.
func (n *Node) Start(tb testing.TB, bin string) {
	tb.Helper()
	f, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	n.runs++
	fmt.Fprintf(f, "--- run %d\n", n.runs)
	n.cmd = exec.Command(bin, "run", "--config", n.Config)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		f.Close()
		tb.Fatalf("start %s: %v", n.Name, err)
	}
	n.exited = make(chan struct{})
	cmd, exited := n.cmd, n.exited
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(exited)
	}()
}

// Kill SIGKILLs the node's process and waits for it to exit. It does nothing when the
// node is not running.
func (n *Node) Kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
	n.cmd = nil
}

// Alive reports whether the node's process runs.
func (n *Node) Alive() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Status fetches the node's /status, waiting at most 5 s.
func (n *Node) Status(ctx context.Context) (walflow.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return walflow.FetchStatus(ctx, n.Addr)
}

// LogTail logs the last lines of the node's log file.
func (n *Node) LogTail(tb testing.TB, lines int) {
	tb.Helper()
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		return
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	tb.Logf("%s (last %d lines):\n%s", filepath.Base(n.LogPath), lines, strings.Join(ls[max(0, len(ls)-lines):], "\n"))
}

// WaitLeader waits until a live node other than not streams the slot, and returns it.
func WaitLeader(tb testing.TB, nodes []*Node, not *Node, timeout time.Duration) *Node {
	tb.Helper()
	var leader *Node
	Poll(tb, timeout, "a leader", func() (bool, string, error) {
		leader = nil
		var states []string
		for _, n := range nodes {
			if n == not || !n.Alive() {
				continue
			}
			st, err := n.Status(tb.Context())
			if err != nil {
				states = append(states, n.Name+": "+err.Error())
				continue
			}
			states = append(states, fmt.Sprintf("%s: streaming %v", n.Name, st.Streaming))
			if st.Streaming {
				leader = n
			}
		}
		return leader != nil, strings.Join(states, "; "), nil
	})
	return leader
}

// WaitNodes waits until every node answers /status and lists every node as live.
func WaitNodes(tb testing.TB, nodes []*Node, timeout time.Duration) {
	tb.Helper()
	Poll(tb, timeout, "every node to join", func() (bool, string, error) {
		for _, n := range nodes {
			st, err := n.Status(tb.Context())
			if err != nil {
				return false, n.Name + ": " + err.Error(), nil
			}
			if st.Cluster == nil || len(st.Cluster.Nodes) != len(nodes) {
				return false, fmt.Sprintf("%s sees %+v", n.Name, st.Cluster), nil
			}
		}
		return true, "", nil
	})
}

// KillLeader waits until every node has joined, SIGKILLs the leader and measures the
// takeover: the time from the SIGKILL to another node streaming. It returns the killed
// node (not restarted) and the new leader.
func KillLeader(tb testing.TB, nodes []*Node, timeout time.Duration) (killed, next *Node, takeover time.Duration) {
	tb.Helper()
	// Every node is up (a restarted one has opened the stream and joined the registry),
	// so the takeover time is a standby's, not a start-up's.
	WaitNodes(tb, nodes, timeout)
	killed = WaitLeader(tb, nodes, nil, timeout)
	killed.Kill()
	at := time.Now()
	next = WaitLeader(tb, nodes, killed, timeout)
	return killed, next, time.Since(at)
}

// Writer commits transactions of 1 to 20 random changes to items (inserts, updates and
// deletes), one at a time, so that commit order is the order it commits them in, and logs
// each committed change as "<type> <id>", until stopped between two transactions.
type Writer struct {
	conn    *pgx.Conn
	stopped atomic.Bool
	done    chan error

	mu  sync.Mutex
	txs [][]string
}

// StartWriter starts a writer on conn, which it uses alone until Stop.
func StartWriter(ctx context.Context, conn *pgx.Conn) *Writer {
	w := &Writer{conn: conn, done: make(chan error, 1)}
	go func() { w.done <- w.run(ctx) }()
	return w
}

// Stop stops the writer after its current transaction and returns its error, if any. It
// may be called more than once.
func (w *Writer) Stop() error {
	if w.stopped.Swap(true) {
		return nil
	}
	return <-w.done
}

func (w *Writer) run(ctx context.Context) error {
	rnd := rand.New(rand.NewPCG(1, 2))
	var ids []int64
	next := int64(1)
	for !w.stopped.Load() {
		tx, err := w.conn.Begin(ctx)
		if err != nil {
			return fmt.Errorf("writer: begin: %w", err)
		}
		var changes []string
		live := slices.Clone(ids)
		for range 1 + rnd.IntN(20) {
			switch r := rnd.IntN(10); {
			case r < 6 || len(live) == 0:
				_, err = tx.Exec(ctx, `INSERT INTO items VALUES ($1, $2, $3)`, next, rnd.IntN(10), rnd.IntN(1000))
				changes = append(changes, fmt.Sprintf("insert %d", next))
				live = append(live, next)
				next++
			case r < 9:
				id := live[rnd.IntN(len(live))]
				_, err = tx.Exec(ctx, `UPDATE items SET val = val + 1 WHERE id = $1`, id)
				changes = append(changes, fmt.Sprintf("update %d", id))
			default:
				i := rnd.IntN(len(live))
				_, err = tx.Exec(ctx, `DELETE FROM items WHERE id = $1`, live[i])
				changes = append(changes, fmt.Sprintf("delete %d", live[i]))
				live = slices.Delete(live, i, i+1)
			}
			if err != nil {
				_ = tx.Rollback(context.WithoutCancel(ctx))
				return fmt.Errorf("writer: %w", err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("writer: commit: %w", err)
		}
		ids = live
		w.mu.Lock()
		w.txs = append(w.txs, changes)
		w.mu.Unlock()
		t := time.NewTimer(time.Duration(2+rnd.IntN(10)) * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Count returns how many transactions the writer committed so far.
func (w *Writer) Count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.txs)
}

// Changes returns every change the writer committed so far, in commit order, and the
// number of transactions.
func (w *Writer) Changes() (changes []string, txs int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, tx := range w.txs {
		changes = append(changes, tx...)
	}
	return changes, len(w.txs)
}

// WaitHeads waits until every node's /status reports a ledger head of at least head.
func WaitHeads(tb testing.TB, nodes []*Node, head uint64, timeout time.Duration) {
	tb.Helper()
	for _, n := range nodes {
		Poll(tb, timeout, n.Name+" to read every change", func() (bool, string, error) {
			st, err := n.Status(tb.Context())
			if err != nil {
				return false, err.Error(), nil
			}
			return st.LedgerHead >= head, fmt.Sprintf("head %d of %d", st.LedgerHead, head), nil
		})
	}
}

// CheckStream reads the whole ledger stream (on the NATS servers urls; empty is
// cluster.StreamDefault) and fails tb unless it holds exactly want, in order: every
// committed change once, in commit order.
func CheckStream(tb testing.TB, urls []string, stream string, want []string) {
	tb.Helper()
	got := ReadStream(tb, urls, stream)
	if len(got) != len(want) {
		tb.Errorf("the stream holds %d events, the writer committed %d changes", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			tb.Fatalf("stream position %d is %q, want %q (every committed change once, in commit order)", i+1, got[i], want[i])
		}
	}
}

// ReadStream reads the whole ledger stream (on the NATS servers urls; empty is
// cluster.StreamDefault), each event as "<type> <id>" of an items row, and fails tb when a
// position is missing.
func ReadStream(tb testing.TB, urls []string, stream string) []string {
	tb.Helper()
	var out []string
	for _, e := range ReadEvents(tb, urls, stream) {
		out = append(out, ChangeOf(tb, &e))
	}
	return out
}

// ReadEvents reads the whole ledger stream (on the NATS servers urls; empty is
// cluster.StreamDefault) and fails tb when a position is missing.
func ReadEvents(tb testing.TB, urls []string, stream string) []event.Event {
	tb.Helper()
	if stream == "" {
		stream = cluster.StreamDefault
	}
	ctx := tb.Context()
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		tb.Fatal(err)
	}
	defer nc.Close()
	led, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: stream, Replicas: 3, SpoolDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	defer led.Close()
	var out []event.Event
	var after event.Position
	for {
		evs, err := led.Read(ctx, after, 1000)
		// A NATS server restarted by the test may leave the stream without a leader for a
		// moment (no responders, timeouts): read again for up to a minute.
		for try := 0; err != nil && try < 60 && (errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)); try++ {
			time.Sleep(time.Second)
			evs, err = led.Read(ctx, after, 1000)
		}
		if err != nil {
			tb.Fatal(err)
		}
		if len(evs) == 0 {
			return out
		}
		for _, e := range evs {
			if e.Position != after+1 {
				tb.Fatalf("stream position %d after %d", e.Position, after)
			}
			after = e.Position
			out = append(out, e)
		}
	}
}

// ChangeOf names an items event as the writer logs it: "<type> <id>".
func ChangeOf(tb testing.TB, e *event.Event) string {
	tb.Helper()
	rec := e.NewRecord
	if e.Type == event.Delete {
		rec = e.OldRecord
	}
	v, ok := rec.Get("id")
	if !ok {
		tb.Fatalf("event %d (%s %s) has no id", e.Position, e.Type, e.Name)
	}
	s, ok := v.Text()
	if !ok {
		tb.Fatalf("event %d (%s %s): id is %s, want an integer", e.Position, e.Type, e.Name, v.Kind())
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		tb.Fatalf("event %d (%s %s): id: %v", e.Position, e.Type, e.Name, err)
	}
	return fmt.Sprintf("%s %d", e.Type, id)
}

// Median returns the median and the maximum of ds (the upper median of an even count).
func Median(ds []time.Duration) (median, maximum time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)/2], s[len(s)-1]
}
