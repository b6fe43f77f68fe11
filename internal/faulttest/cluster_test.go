package faulttest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
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
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger/jetstream"
)

// clusterKillsEnv sets how many times TestClusterFaults SIGKILLs the leader; the full run
// is clusterKillsFull.
const (
	clusterKillsEnv     = "WALFLOW_CLUSTER_KILLS"
	clusterKillsFull    = 10
	clusterNATSDownTime = 20 * time.Second
)

const clusterSchema = `
CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, val int NOT NULL);
ALTER TABLE items REPLICA IDENTITY FULL;
CREATE TABLE sums (grp int PRIMARY KEY, total bigint NOT NULL, n bigint NOT NULL);`

// clusterSumsQuery recomputes the derived row of a group; the operator runs it.
const clusterSumsQuery = `INSERT INTO sums SELECT $1::int, coalesce(sum(val), 0), count(*) FROM items WHERE grp = $1
ON CONFLICT (grp) DO UPDATE SET total = EXCLUDED.total, n = EXCLUDED.n`

// clusterNodeProc is one walflow run child of the fault test's cluster.
type clusterNodeProc struct {
	name, config, addr, logPath string
	runs                        int
	cmd                         *exec.Cmd
	exited                      chan struct{}
}

// TestClusterFaults runs three walflow run children as one cluster on a three-server
// JetStream cluster, with a writer committing throughout. It SIGKILLs the leader
// WALFLOW_CLUSTER_KILLS times (default 10) at random moments, restarting it each time,
// and stops one NATS server for 20 s once. At the end the stream holds every committed
// change exactly once, in commit order; the SQL operator's derived table equals its
// recomputation; and an SSE client started on each node, which resumes with after= on
// the next node whenever its stream ends, received every event of its channel once, in
// order. It logs the takeover times (SIGKILL to another node streaming).
func TestClusterFaults(t *testing.T) {
	t.Parallel()
	kills := clusterKillsFull
	if s := os.Getenv(clusterKillsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q is not a positive number of kills", clusterKillsEnv, s)
		}
		kills = n
	}
	ctx := t.Context()
	bin := buildCommand(t, "github.com/walflow/walflow/cmd/walflow", "walflow")
	dsn, conn := pgtest.NewDatabaseWith(t, clusterSchema)
	lc, err := cluster.StartLocalCluster(ctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Shutdown)
	slot := dbName(t, dsn)

	dir := t.TempDir()
	var nodes []*clusterNodeProc
	for i := 1; i <= 3; i++ {
		n := &clusterNodeProc{name: fmt.Sprintf("node-%d", i), addr: freeAddr(t)}
		n.config = filepath.Join(dir, n.name+".yaml")
		n.logPath = filepath.Join(dir, n.name+".log")
		urls := `"` + strings.Join(lc.URLs(), `", "`) + `"`
		yaml := fmt.Sprintf(`database_url: %q
slot: %s
status_interval: 200ms
http: {addr: %q}
log: {level: info}
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
  heartbeat: 500ms
  node_ttl: 3s
`, dsn, slot, n.addr, clusterSumsQuery, n.name, urls)
		if err := os.WriteFile(n.config, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.kill()
		}
		if t.Failed() {
			for _, n := range nodes {
				logTail(t, n.logPath, 60)
			}
		}
	})
	for _, n := range nodes {
		n.start(t, bin)
	}
	leader := waitClusterLeader(t, nodes, nil, 2*time.Minute)
	t.Logf("%s leads", leader.name)

	// Realtime clients, one starting on each node.
	cctx, stopClients := context.WithCancel(ctx)
	var cwg sync.WaitGroup
	clients := make([]*sseClient, len(nodes))
	for i := range nodes {
		c := &sseClient{nodes: nodes, at: i}
		clients[i] = c
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			c.run(cctx)
		}()
	}
	defer func() {
		stopClients()
		cwg.Wait()
	}()

	// The writer commits until told to stop.
	w := &clusterWriter{conn: conn}
	werr := make(chan error, 1)
	go func() { werr <- w.run(ctx) }()
	writing := true
	defer func() {
		if writing {
			w.stopped.Store(true)
			<-werr
		}
	}()

	var takeovers []time.Duration
	natsAt := kills / 2
	for k := range kills {
		// Every node is up (a restarted one has opened the stream and joined the
		// registry), so the takeover time is a standby's, not a start-up's.
		waitClusterNodes(t, nodes, 2*time.Minute)
		time.Sleep(time.Duration(300+rand.IntN(1500)) * time.Millisecond)
		leader = waitClusterLeader(t, nodes, nil, 2*time.Minute)
		leader.kill()
		killed := time.Now()
		next := waitClusterLeader(t, nodes, leader, 2*time.Minute)
		takeovers = append(takeovers, time.Since(killed))
		indexesOn := "?"
		if st, err := next.status(ctx); err == nil && st.Cluster != nil && len(st.Cluster.Indexes) > 0 {
			indexesOn = st.Cluster.Indexes[0].Node // as of the nodes' last heartbeats
		}
		t.Logf("kill %d: %s killed, %s leads after %s (writer at %d transactions; the index runs on %s)", k+1, leader.name, next.name, takeovers[len(takeovers)-1].Round(time.Millisecond), w.count(), indexesOn)
		leader.start(t, bin)
		if k == natsAt {
			s := lc.Servers()[rand.IntN(3)]
			s.Stop()
			t.Logf("NATS server %s stopped for %s", s.Name(), clusterNATSDownTime)
			time.Sleep(clusterNATSDownTime)
			if err := s.Restart(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.stopped.Store(true)
	writing = false
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	txs := w.log()
	var want []string
	for _, tx := range txs {
		want = append(want, tx...)
	}
	t.Logf("writer committed %d transactions, %d changes", len(txs), len(want))

	// Every node reaches the stream's end.
	for _, n := range nodes {
		poll(t, 2*time.Minute, n.name+" to read every change", func() (bool, string, error) {
			st, err := n.status(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			return st.LedgerHead >= uint64(len(want)), fmt.Sprintf("head %d of %d", st.LedgerHead, len(want)), nil
		})
	}

	// The stream: every committed change once, in commit order.
	got, entries := readStream(t, lc.URLs())
	if len(got) != len(want) {
		t.Errorf("the stream holds %d events, the writer committed %d changes", len(got), len(want))
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Fatalf("stream position %d is %q, want %q (every committed change once, in commit order)", i+1, got[i], want[i])
		}
	}

	// The derived table equals its recomputation.
	poll(t, 2*time.Minute, "sums to equal its recomputation", func() (bool, string, error) {
		var diff int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM (
			(SELECT grp, total, n FROM sums WHERE n > 0 EXCEPT SELECT grp, sum(val), count(*) FROM items GROUP BY grp)
			UNION ALL
			(SELECT grp, sum(val), count(*) FROM items GROUP BY grp EXCEPT SELECT grp, total, n FROM sums)) d`).Scan(&diff)
		return diff == 0, fmt.Sprintf("%d rows differ", diff), err
	})

	// The custom index, computed by one node at a time into the shared store and moved
	// at each death of its holder, equals its recomputation from the stream: every
	// event's value once.
	for _, n := range nodes {
		poll(t, 2*time.Minute, n.name+"'s index to reach the head", func() (bool, string, error) {
			st, err := n.status(ctx)
			if err != nil || len(st.Indexes) != 1 {
				return false, fmt.Sprintf("status: %v, %d indexes", err, len(st.Indexes)), nil
			}
			return st.Indexes[0].Checkpoint >= event.Position(len(want)), fmt.Sprintf("checkpoint %d of %d", st.Indexes[0].Checkpoint, len(want)), nil
		})
	}
	var stored []string
	rows, err := conn.Query(ctx, `SELECT convert_from(value, 'UTF8'), position FROM walflow.index_entries WHERE indexer = $1 ORDER BY position, value`, slot+"/by_grp")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		var p int64
		if err := rows.Scan(&v, &p); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, fmt.Sprintf("%s@%d", v, p))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(stored, entries) {
		t.Fatalf("the index holds %d entries, its recomputation from the stream %d; first difference at %d",
			len(stored), len(entries), firstDiff(stored, entries))
	}

	// Every realtime client got every event once, in order, across node deaths.
	for i, c := range clients {
		poll(t, 2*time.Minute, fmt.Sprintf("client %d to receive every event", i), func() (bool, string, error) {
			n := c.received()
			return n >= len(want), fmt.Sprintf("%d of %d events", n, len(want)), nil
		})
		evs, resumes := c.result()
		if !slices.Equal(evs, want) {
			for j := range min(len(evs), len(want)) {
				if evs[j] != want[j] {
					t.Fatalf("client %d: event %d is %q, want %q", i, j+1, evs[j], want[j])
				}
			}
			t.Fatalf("client %d got %d events, want %d", i, len(evs), len(want))
		}
		t.Logf("client %d: %d events, resumed %d times; first ends: %q", i, len(evs), resumes, c.ends)
	}
	slices.Sort(takeovers)
	t.Logf("takeover after SIGKILL: median %s, max %s, over %d kills", takeovers[len(takeovers)/2].Round(time.Millisecond), takeovers[len(takeovers)-1].Round(time.Millisecond), len(takeovers))
}

// firstDiff is the first index at which a and b differ.
func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// logTail logs the last lines of a child's log file.
func logTail(t *testing.T, path string, lines int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	t.Logf("%s (last %d lines):\n%s", filepath.Base(path), lines, strings.Join(ls[max(0, len(ls)-lines):], "\n"))
}

// start starts the node's walflow run, its output appended to its log file.
func (n *clusterNodeProc) start(t *testing.T, bin string) {
	t.Helper()
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	n.runs++
	fmt.Fprintf(f, "--- run %d\n", n.runs)
	n.cmd = exec.Command(bin, "run", "--config", n.config)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", n.name, err)
	}
	n.exited = make(chan struct{})
	cmd, exited := n.cmd, n.exited
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(exited)
	}()
}

// kill SIGKILLs the node's process and waits for it to exit.
func (n *clusterNodeProc) kill() {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
	n.cmd = nil
}

func (n *clusterNodeProc) alive() bool {
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

// status fetches the node's /status.
func (n *clusterNodeProc) status(ctx context.Context) (walflow.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return walflow.FetchStatus(ctx, n.addr)
}

// waitClusterLeader waits until a live node other than not streams the slot, and returns
// it. It fails the test when two nodes stream at once.
func waitClusterLeader(t *testing.T, nodes []*clusterNodeProc, not *clusterNodeProc, timeout time.Duration) *clusterNodeProc {
	t.Helper()
	var leader *clusterNodeProc
	poll(t, timeout, "a leader", func() (bool, string, error) {
		leader = nil
		var states []string
		for _, n := range nodes {
			if n == not || !n.alive() {
				continue
			}
			st, err := n.status(t.Context())
			if err != nil {
				states = append(states, n.name+": "+err.Error())
				continue
			}
			states = append(states, fmt.Sprintf("%s: streaming %v", n.name, st.Streaming))
			if st.Streaming {
				leader = n
			}
		}
		return leader != nil, strings.Join(states, "; "), nil
	})
	return leader
}

// waitClusterNodes waits until every node answers /status and lists every node as live.
func waitClusterNodes(t *testing.T, nodes []*clusterNodeProc, timeout time.Duration) {
	t.Helper()
	poll(t, timeout, "every node to join", func() (bool, string, error) {
		for _, n := range nodes {
			st, err := n.status(t.Context())
			if err != nil {
				return false, n.name + ": " + err.Error(), nil
			}
			if st.Cluster == nil || len(st.Cluster.Nodes) != len(nodes) {
				return false, fmt.Sprintf("%s sees %+v", n.name, st.Cluster), nil
			}
		}
		return true, "", nil
	})
}

// clusterWriter commits transactions of 1 to 20 random changes to items, one at a time
// (so commit order is the order it commits them in), and logs each committed change,
// until stopped between two transactions.
type clusterWriter struct {
	conn    *pgx.Conn
	stopped atomic.Bool

	mu  sync.Mutex
	txs [][]string
}

func (w *clusterWriter) run(ctx context.Context) error {
	rnd := rand.New(rand.NewPCG(1, 2))
	var ids []int64
	next := int64(1)
	for !w.stopped.Load() {
		tx, err := w.conn.Begin(ctx)
		if err != nil {
			return err
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
				return err
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("commit: %w", err)
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

func (w *clusterWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.txs)
}

func (w *clusterWriter) log() [][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.txs)
}

// readStream reads the whole ledger stream, as "<type> <id>", and the entries of the
// by_grp index recomputed from it, as "<value>@<position>" in position order.
func readStream(t *testing.T, urls []string) (changes, entries []string) {
	t.Helper()
	ctx := t.Context()
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	led, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: cluster.StreamDefault, Replicas: 3, SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	var after event.Position
	byGrp := index.Field("by_grp", "grp")
	for {
		evs, err := led.Read(ctx, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return changes, entries
		}
		for _, e := range evs {
			if e.Position != after+1 {
				t.Fatalf("stream position %d after %d", e.Position, after)
			}
			after = e.Position
			changes = append(changes, changeOf(t, &e))
			vs := byGrp.Func(&e, nil)
			slices.Sort(vs)
			for _, v := range vs {
				entries = append(entries, fmt.Sprintf("%s@%d", v, e.Position))
			}
		}
	}
}

// changeOf names an items event as the writer logs it.
func changeOf(t *testing.T, e *event.Event) string {
	rec := e.NewRecord
	if e.Type == event.Delete {
		rec = e.OldRecord
	}
	v, ok := rec.Get("id")
	if !ok {
		t.Fatalf("event %d (%s %s) has no id", e.Position, e.Type, e.Name)
	}
	return fmt.Sprintf("%s %d", e.Type, intValue(t, e, v))
}

// sseClient follows the items channel over SSE, starting on node at; when its stream
// ends (its node died) it resumes after the last position it received on the next live
// node.
type sseClient struct {
	nodes []*clusterNodeProc
	at    int

	mu      sync.Mutex
	events  []string
	last    event.Position
	resumes int      // streams opened with a resume position
	ends    []string // why the first streams ended
}

func (c *sseClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

func (c *sseClient) result() ([]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events), c.resumes
}

func (c *sseClient) run(ctx context.Context) {
	for ctx.Err() == nil {
		n := c.nodes[c.at]
		err := c.follow(ctx, n) // any end, error or not, is resumed on the next node
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		if len(c.ends) < 5 {
			c.ends = append(c.ends, fmt.Sprintf("%s: %v", n.name, err))
		}
		c.mu.Unlock()
		c.at = (c.at + 1) % len(c.nodes)
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// follow reads one SSE stream from node n until it ends.
func (c *sseClient) follow(ctx context.Context, n *clusterNodeProc) error {
	c.mu.Lock()
	after := c.last
	c.mu.Unlock()
	url := "http://" + n.addr + "/realtime/?channel=items&after=" + strconv.FormatUint(uint64(after), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if after > 0 {
		c.mu.Lock()
		c.resumes++
		c.mu.Unlock()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var id event.Position
	var typ string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			p, err := strconv.ParseUint(strings.TrimPrefix(line, "id: "), 10, 64)
			if err != nil {
				return err
			}
			id = event.Position(p)
		case strings.HasPrefix(line, "event: "):
			typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && typ != "subscribed" && typ != "error":
			var msg struct {
				Event struct {
					Type      string          `json:"type"`
					NewRecord json.RawMessage `json:"new_record"`
					OldRecord json.RawMessage `json:"old_record"`
				} `json:"event"`
			}
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &msg); err != nil {
				return err
			}
			rec := msg.Event.NewRecord
			if msg.Event.Type == "delete" {
				rec = msg.Event.OldRecord
			}
			var row struct {
				ID int64 `json:"id"`
			}
			if err := json.Unmarshal(rec, &row); err != nil {
				return err
			}
			// A position at or before the last one is a duplicate: it is kept, so that the
			// comparison with the stream fails.
			c.mu.Lock()
			c.last = max(c.last, id)
			c.events = append(c.events, fmt.Sprintf("%s %d", msg.Event.Type, row.ID))
			c.mu.Unlock()
		case strings.HasPrefix(line, "data: ") && typ == "error":
			return errors.New(line)
		}
	}
	return sc.Err()
}
