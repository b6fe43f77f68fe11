package walflow_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/projector"
)

// TestClusterRetentionProjectorElsewhere runs two engines whose projector runs on the node
// that does not lead. The leader, which applies retention for every node, stands the
// projector by: its status shows the position the other node stored (not 0), and its
// retention removes the events the projector applied instead of holding the ledger back
// for ever.
func TestClusterRetentionProjectorElsewhere(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+projectedSchema)
	lc := startNATS(t, 1)
	pcfg, _ := pgx.ParseConfig(dsn)
	ledgerDir := filepath.Join(t.TempDir(), "data")
	start := func(name string) *clusterNode {
		eng, err := walflow.Open(ctx, walflow.Config{
			DatabaseURL: dsn, Slot: pcfg.Database, LedgerDir: ledgerDir,
			Tables:         []channel.Table{{Name: "posts"}, {Name: "comments"}},
			Projectors:     []projector.Projector{tallyProjector},
			Retention:      time.Nanosecond,
			StatusInterval: 200 * time.Millisecond,
			Logger:         testLogger(t),
			Cluster: &cluster.Config{URLs: lc.URLs(), NodeName: name, Replicas: 1,
				Heartbeat: 500 * time.Millisecond, NodeTTL: 3 * time.Second},
		})
		if err == nil {
			walflow.SetRetentionInterval(eng, 100*time.Millisecond)
		}
		return runClusterNode(t, name, eng, err)
	}
	phase := func(n *clusterNode) projector.Phase { return n.eng.Projectors().Status()[0].Phase }
	runs := func(n *clusterNode) bool { ph := phase(n); return ph == projector.Live || ph == projector.Rehydrating }

	// The test holds the projector's lock while the nodes start, so that the first node
	// leads without taking the projector.
	const key = `hashtextextended('walflow.projectors/tally', 0)`
	hold, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hold.Close(context.Background()) })
	if _, err := hold.Exec(ctx, `SELECT pg_advisory_lock(`+key+`)`); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	leader := start("node-1")
	poll(t, "node-1 to lead", func() bool { return leader.eng.Status(ctx).Streaming })
	other := start("node-2")
	poll(t, "node-2 to stand the projector by", func() bool { return phase(other) == projector.Standby })
	// Let it go, until node-2 takes it: when node-1 does, take it back by ending the
	// holder's lock session while waiting for the lock (PostgreSQL grants a waiter the lock
	// as the holder releases it), and let it go again.
	for attempt := 1; ; attempt++ {
		if _, err := hold.Exec(ctx, `SELECT pg_advisory_unlock(`+key+`)`); err != nil {
			t.Fatal(err)
		}
		poll(t, "a node to run the projector", func() bool { return runs(leader) || runs(other) })
		if runs(other) {
			t.Logf("node-2 took the projector at attempt %d", attempt)
			break
		}
		if attempt == 20 {
			t.Fatal("node-1 took the projector 20 times in a row")
		}
		holders, err := projector.NewPostgresStore(pool).Holders(ctx)
		if err != nil {
			t.Fatal(err)
		}
		locked := make(chan error, 1)
		go func() {
			_, err := hold.Exec(context.Background(), `SELECT pg_advisory_lock(`+key+`)`)
			locked <- err
		}()
		waiting := func() bool {
			var n int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted`, hold.PgConn().PID()).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n == 1
		}
		poll(t, "the test to wait for the projector's lock", waiting)
		if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, holders["tally"].PID); err != nil {
			t.Fatal(err)
		}
		if err := <-locked; err != nil {
			t.Fatal(err)
		}
		poll(t, "both nodes to stand the projector by", func() bool { return phase(leader) == projector.Standby && phase(other) == projector.Standby })
	}
	if !leader.eng.Status(ctx).Streaming {
		t.Fatal("node-1 no longer leads")
	}

	if _, err := conn.Exec(ctx, `INSERT INTO posts VALUES (1, 'a')`); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES ($1, 1, 'x')`, i); err != nil {
			t.Fatal(err)
		}
	}
	var stored event.Position
	poll(t, "node-2's projector to store position 21", func() bool {
		stored = other.eng.Projectors().Status()[0].Position
		return stored >= 21
	})
	var st projector.Status
	poll(t, "node-1's status to show the position node-2 stored", func() bool {
		sts := leader.eng.Status(ctx).Projectors
		st = sts[0]
		return len(sts) == 1 && st.Phase == projector.Standby && st.Position >= 21
	})
	if st.Lag != uint64(st.Head-st.Position) {
		t.Fatalf("node-1 shows %+v: its lag is not head - position", st)
	}
	poll(t, "node-1's retention to move the tail past 0", func() bool { return leader.eng.Ledger().State().Tail > 0 })
	var n, twice int
	if err := conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE n > 1) FROM projected`).Scan(&n, &twice); err != nil {
		t.Fatal(err)
	}
	if n != 20 || twice != 0 {
		t.Fatalf("the projector applied %d events, %d more than once; want 20 and 0", n, twice)
	}
	if !runs(other) || !leader.eng.Status(ctx).Streaming {
		t.Fatal("the projector or the lead moved during the test")
	}
}
