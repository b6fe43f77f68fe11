package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
)

const (
	restarts = 5
	// restartProgress is how many events the engine must append between restarts, proving
	// that it reconnected.
	restartProgress = 100
)

// startCluster starts a cluster of the test's own, stopped when the test ends.
func startCluster(t *testing.T, opts *pgtest.Options) *pgtest.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
	})
	if err := c.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	return c
}

// restartWriter inserts rows one small transaction at a time, with synchronous commit, and
// reconnects whenever PostgreSQL goes away.
type restartWriter struct {
	dsn string

	mu         sync.Mutex
	commits    int
	failures   int
	reconnects int
}

func (w *restartWriter) run(ctx context.Context) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
	retry := time.NewTicker(50 * time.Millisecond)
	defer retry.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := pgx.Connect(ctx, w.dsn)
			if err == nil {
				// A commit the writer saw succeed must survive an immediate shutdown.
				if _, err = c.Exec(ctx, "SET synchronous_commit = on"); err != nil {
					c.Close(context.Background())
				}
			}
			if err != nil {
				select {
				case <-ctx.Done():
				case <-retry.C:
				}
				continue
			}
			conn = c
			w.mu.Lock()
			w.reconnects++
			w.mu.Unlock()
		}
		_, err := conn.Exec(ctx, "INSERT INTO t (n) SELECT g FROM generate_series(1, $1::int) g", 1+rng.IntN(5))
		w.mu.Lock()
		if err != nil {
			// Whether a commit cut off by the restart happened is for the table to say.
			w.failures++
			conn.Close(context.Background())
			conn = nil
		} else {
			w.commits++
		}
		w.mu.Unlock()
	}
}

func (w *restartWriter) stats() (commits, failures, reconnects int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.commits, w.failures, w.reconnects
}

// TestPostgresRestarts restarts PostgreSQL five times, alternating fast and immediate
// shutdowns, while a writer commits and the engine streams; the engine reconnects by itself
// each time, and in the end the ledger holds each row of the table exactly once, in commit
// order.
func TestPostgresRestarts(t *testing.T) {
	t.Parallel()
	cluster := startCluster(t, nil)
	dsn := cluster.DSN("app")
	conn := connect(t, dsn)
	exec1(t, conn, `CREATE TABLE t (id bigserial PRIMARY KEY, n int NOT NULL)`)
	conn.Close(t.Context())
	ledgerDir := t.TempDir()
	r := startEngine(t, dsn, "walflow_restarts", ledgerDir, "t")
	r.waitStreaming(60 * time.Second)
	led := r.eng.Ledger()

	w := &restartWriter{dsn: dsn}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { w.run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	for i := range restarts {
		waitHead(t, led, led.State().Head+restartProgress, 2*time.Minute)
		mode := "fast"
		if i%2 == 1 {
			mode = "immediate"
		}
		rctx, rcancel := context.WithTimeout(t.Context(), 2*time.Minute)
		err := cluster.Restart(rctx, mode)
		rcancel()
		if err != nil {
			t.Fatalf("restart %d (%s): %v", i+1, mode, err)
		}
		t.Logf("restart %d (%s) at ledger head %d", i+1, mode, led.State().Head)
	}
	waitHead(t, led, led.State().Head+restartProgress, 2*time.Minute)
	cancel()
	wg.Wait()
	commits, failures, reconnects := w.stats()

	// Catch up with everything the writer committed, then stop.
	conn = connect(t, dsn)
	target := currentLSN(t, conn)
	poll(t, 2*time.Minute, "the engine to catch up with "+target.String(), func() (bool, string, error) {
		st := led.State()
		acked := max(st.AckedLSN, st.LastEndLSN)
		return acked >= target, fmt.Sprintf("acknowledged %s, head %d", acked, st.Head), nil
	})
	status := r.eng.Status(t.Context())
	r.stop()
	t.Logf("writer: %d commits, %d failed statements, %d connections; engine: %d reconnects, %d events received, %d appended",
		commits, failures, reconnects, status.Reconnects, status.EventsReceived, status.EventsAppended)
	if status.Reconnects < restarts {
		t.Errorf("engine reconnected %d times across %d restarts", status.Reconnects, restarts)
	}

	rows, err := conn.Query(t.Context(), "SELECT id FROM t ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	want, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	scanLedger(t, ledgerDir, []channel.Table{{Name: "t"}}, func(e *event.Event) {
		if e.Type != event.Insert || e.Name != "t" {
			t.Fatalf("event %d: %s of %s, want only inserts of t", e.Position, e.Type, e.Name)
		}
		id := idOf(t, e, "id")
		if n := len(got); n > 0 && id <= got[n-1] {
			t.Fatalf("event %d: row %d after row %d: duplicated or out of commit order", e.Position, id, got[n-1])
		}
		got = append(got, id)
	})
	if !slices.Equal(got, want) {
		missing, extra := diffSorted(want, got)
		t.Fatalf("ledger has %d rows, the table %d; missing from the ledger %v, not in the table %v", len(got), len(want), head(missing), head(extra))
	}
	t.Logf("ledger and table agree on %d rows", len(got))
}

// diffSorted returns the elements only in a and only in b, both ascending.
func diffSorted(a, b []int64) (onlyA, onlyB []int64) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			onlyA = append(onlyA, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return onlyA, onlyB
}

// head returns at most the first 10 elements.
func head(s []int64) []int64 { return s[:min(len(s), 10)] }
