package walflow_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/projector"
)

// clusterNode is one engine of a test cluster, stopped by stop.
type clusterNode struct {
	name string
	eng  *walflow.Engine
	stop func() error
	ran  <-chan struct{} // closed when the engine's Run returned
}

// poll calls cond every 20ms until it holds, failing the test after two minutes.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runClusterNode runs eng, which walflow.Open returned with err, as the cluster node name
// until the test ends or its stop is called; stop checks Run's result and closes the
// engine, once.
func runClusterNode(t *testing.T, name string, eng *walflow.Engine, err error) *clusterNode {
	t.Helper()
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	var runErr error
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		runErr = eng.Run(runCtx)
	}()
	n := &clusterNode{name: name, eng: eng, ran: ran}
	stopped := false
	n.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		<-ran
		err := runErr
		if cerr := eng.Close(); err == nil {
			err = cerr
		}
		return err
	}
	t.Cleanup(func() {
		if err := n.stop(); err != nil {
			t.Errorf("node %s: %v", name, err)
		}
	})
	return n
}

// TestClusterTakeover runs three engines on one database and one three-server JetStream
// cluster. One leads; every change reaches the shared stream once; a subscriber on a
// standby receives it; the operator runs on one node. The leader stops, another takes the
// slot over and resumes where it left off: the stream holds every change once, in commit
// order, the subscriber misses nothing, and the derived table equals its recomputation.
func TestClusterTakeover(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+countsSchema+projectedSchema)
	lc := startNATS(t, 3)
	pcfg, _ := pgx.ParseConfig(dsn)
	// Every node keeps its channel index under the same ledger directory, one per node
	// name, and finds it again when it restarts.
	ledgerDir := filepath.Join(t.TempDir(), "data")
	start := func(name string) *clusterNode {
		eng, err := walflow.Open(ctx, walflow.Config{
			DatabaseURL: dsn, Slot: pcfg.Database, LedgerDir: ledgerDir,
			Tables: []channel.Table{
				{Name: "posts"},
				{Name: "comments", Scopes: []channel.Scope{mustScope(t, "posts/{post_id}")}},
			},
			Operators:      []operator.Operator{countsOperator},
			Indexers:       []index.Indexer{index.Field("by_post", "post_id")},
			Projectors:     []projector.Projector{tallyProjector},
			StatusInterval: 200 * time.Millisecond,
			Logger:         testLogger(t),
			Cluster: &cluster.Config{URLs: lc.URLs(), NodeName: name, Replicas: 3,
				Heartbeat: 500 * time.Millisecond, NodeTTL: 3 * time.Second},
		})
		return runClusterNode(t, name, eng, err)
	}
	nodes := []*clusterNode{start("node-1"), start("node-2"), start("node-3")}
	leader := func(ns []*clusterNode) *clusterNode {
		var l *clusterNode
		for _, n := range ns {
			if n.eng.Status(ctx).Streaming {
				if l != nil {
					t.Fatalf("both %s and %s stream the slot", l.name, n.name)
				}
				l = n
			}
		}
		return l
	}
	var first *clusterNode
	poll(t, "a leader", func() bool { first = leader(nodes); return first != nil })
	var standby *clusterNode
	for _, n := range nodes {
		if n != first {
			standby = n
			break
		}
	}
	zero := event.Position(0)
	sub, err := standby.eng.Subscribe(ctx, &walflow.SubscribeOpts{After: &zero, Buffer: 1024}, "comments")
	if err != nil {
		t.Fatal(err)
	}

	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO posts VALUES (1, 'a'), (2, 'b')`)
	for i := 1; i <= 20; i++ {
		exec(`INSERT INTO comments VALUES ($1, $2, 'x')`, i, 1+i%2)
	}
	// 1 transaction of 2 posts + 20 comments.
	for _, n := range nodes {
		poll(t, n.name+" to read 22 events", func() bool { return n.eng.Ledger().State().Head >= 22 })
	}
	// The registry shows each node as of its last heartbeat: wait for the leader's to say so.
	var st walflow.Status
	poll(t, "the cluster status on "+standby.name+" to show 3 nodes led by "+first.name, func() bool {
		st = standby.eng.Status(ctx)
		return st.Cluster != nil && len(st.Cluster.Nodes) == 3 && st.Cluster.Leader == first.name
	})
	poll(t, "the operator to run on one node", func() bool {
		c := standby.eng.Status(ctx).Cluster
		return c != nil && len(c.Operators) == 1 && c.Operators[0].Name == "counts"
	})

	if err := first.stop(); err != nil {
		t.Fatalf("stop the leader %s: %v", first.name, err)
	}
	rest := slices.DeleteFunc(slices.Clone(nodes), func(n *clusterNode) bool { return n == first })
	for i := 21; i <= 40; i++ {
		exec(`INSERT INTO comments VALUES ($1, $2, 'x')`, i, 1+i%2)
	}
	exec(`UPDATE comments SET body = 'y' WHERE id = 3`)
	exec(`DELETE FROM comments WHERE id = 4`)
	var second *clusterNode
	poll(t, "another leader", func() bool { second = leader(rest); return second != nil })
	for _, n := range rest {
		poll(t, n.name+" to read 44 events", func() bool { return n.eng.Ledger().State().Head >= 44 })
	}

	// The stream: every change once, in commit order.
	evs, err := rest[0].eng.Ledger().Read(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, e := range evs {
		if e.Position != event.Position(i+1) {
			t.Fatalf("event %d at position %d", i, e.Position)
		}
		got = append(got, describeChange(e))
	}
	var want []string
	want = append(want, "insert posts 1", "insert posts 2")
	for i := 1; i <= 40; i++ {
		want = append(want, fmt.Sprintf("insert comments %d", i))
	}
	want = append(want, "update comments 3", "delete comments 4")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stream:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The standby's subscriber: every comment once, in order.
	var seen []string
	for len(seen) < 42 {
		select {
		case e, ok := <-sub.Events():
			if !ok {
				t.Fatalf("subscription ended after %d events: %v", len(seen), sub.Err())
			}
			seen = append(seen, describeChange(e))
		case <-time.After(time.Minute):
			t.Fatalf("subscriber got %d of 42 events: %v", len(seen), seen)
		}
	}
	if strings.Join(seen, "\n") != strings.Join(want[2:], "\n") {
		t.Fatalf("subscriber on %s got:\n%s", standby.name, strings.Join(seen, "\n"))
	}

	// The operator moved with its lock and left the derived table right.
	poll(t, "the operator to move to a live node", func() bool {
		c := second.eng.Status(ctx).Cluster
		return c != nil && len(c.Operators) == 1 && c.Operators[0].Node != first.name
	})
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
	// Every node reads the custom index that one of them computes into the shared store.
	for _, n := range rest {
		poll(t, n.name+"'s index to hold post 1's comments", func() bool {
			evs, err := n.eng.Indexes().Read(ctx, "by_post", "1", 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			return len(evs) == 21 // the inserts of the even ids, and the delete of 4
		})
	}
	// The projector ran on one node at a time and moved: each comment event once.
	poll(t, "the projector to apply every comment event", func() bool {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM projected`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 42
	})
	var twice int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM projected WHERE n > 1`).Scan(&twice); err != nil {
		t.Fatal(err)
	}
	if twice != 0 {
		t.Fatalf("the projector applied %d events more than once across nodes", twice)
	}
	poll(t, "the projector to run on one live node", func() bool {
		c := second.eng.Status(ctx).Cluster
		return c != nil && len(c.Projectors) == 1 && c.Projectors[0].Node != first.name
	})
	// The registry settles within a heartbeat or two (slower under load).
	poll(t, fmt.Sprintf("the cluster status to show 2 nodes led by %s", second.name), func() bool {
		c := second.eng.Status(ctx).Cluster
		return c != nil && c.Leader == second.name && len(c.Nodes) == 2
	})
}

// describeChange names an event by type, table and id.
func describeChange(e event.Event) string {
	rec := e.NewRecord
	if e.Type == event.Delete {
		rec = e.OldRecord
	}
	id, _ := rec.Get("id")
	return fmt.Sprintf("%s %s %v", e.Type, e.Name, id)
}

// startNATS starts n in-process NATS servers with JetStream as one cluster, on loopback,
// shut down when the test ends.
func startNATS(t *testing.T, n int) *cluster.LocalCluster {
	t.Helper()
	lc, err := cluster.StartLocalCluster(t.Context(), t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Shutdown)
	return lc
}

// countsSchema is the derived table of countsOperator.
const countsSchema = `CREATE TABLE counts (id int PRIMARY KEY, n int);`

// countsOperator keeps counts(id, n): each post's number of comments.
var countsOperator = operator.SQL{
	Target: "counts", Entities: []string{"comments", "posts"}, ID: map[string]string{"comments": "post_id"},
	Query: `INSERT INTO counts SELECT p.id, (SELECT count(*) FROM comments c WHERE c.post_id = p.id) FROM posts p WHERE p.id = $1
		ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`,
	DeleteWith: []string{"posts"},
}

// projectedSchema is the table of tallyProjector.
const projectedSchema = `CREATE TABLE projected (position bigint PRIMARY KEY, n int NOT NULL);`

// tallyProjector counts each comment event it applies, in its transaction, by position:
// an event applied twice shows as n = 2.
var tallyProjector = projector.Projector{Name: "tally", Entities: []string{"comments"},
	HandleTx: func(ctx context.Context, tx pgx.Tx, e event.Event) error {
		_, err := tx.Exec(ctx, `INSERT INTO projected VALUES ($1, 1) ON CONFLICT (position) DO UPDATE SET n = projected.n + 1`, int64(e.Position))
		return err
	}}

// oneNodeConfig is the configuration of the only node, node-1, of a cluster on the NATS
// servers lc (one replica), following posts and comments in the database dsn; callers add
// what they run.
func oneNodeConfig(t *testing.T, dsn string, lc *cluster.LocalCluster) walflow.Config {
	t.Helper()
	pcfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return walflow.Config{
		DatabaseURL: dsn, Slot: pcfg.Database, LedgerDir: filepath.Join(t.TempDir(), "ledger"),
		Tables:         []channel.Table{{Name: "posts"}, {Name: "comments"}},
		StatusInterval: 200 * time.Millisecond,
		Logger:         testLogger(t),
		Cluster: &cluster.Config{URLs: lc.URLs(), NodeName: "node-1", Replicas: 1,
			Heartbeat: 500 * time.Millisecond, NodeTTL: 3 * time.Second},
	}
}
