package walflow_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/projector"
)

// TestEngineProjectors: Config.Projectors run with the engine, keep their position in
// PostgreSQL across a restart (a restarted projector receives only what it had not
// applied, HandleTx exactly once), and show in /metrics.
func TestEngineProjectors(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+`
		CREATE TABLE comment_counts (post_id int PRIMARY KEY, n int NOT NULL);`)
	ctx := t.Context()
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	pc, _ := pgx.ParseConfig(dsn)
	dir := t.TempDir()

	var mu sync.Mutex
	var seen []event.Position  // what the Handle projector received, over both runs
	var post1 []event.Position // what the projector on the by_post index received
	run := func() (*walflow.Engine, func()) {
		eng, err := walflow.Open(ctx, walflow.Config{
			DatabaseURL: dsn, Slot: pc.Database, LedgerDir: filepath.Join(dir, "ledger"),
			Tables:         []channel.Table{{Name: "posts"}, {Name: "comments"}},
			StatusInterval: 200 * time.Millisecond,
			Logger:         testLogger(t),
			Indexers:       []index.Indexer{index.Field("by_post", "post_id")},
			Projectors: []projector.Projector{
				{Name: "post1", Index: "by_post", Values: []string{"1"}, Handle: func(_ context.Context, e event.Event) error {
					mu.Lock()
					post1 = append(post1, e.Position)
					mu.Unlock()
					return nil
				}},
				{Name: "seen", Entities: []string{"comments"}, Handle: func(_ context.Context, e event.Event) error {
					mu.Lock()
					seen = append(seen, e.Position)
					mu.Unlock()
					return nil
				}},
				{Name: "counts", Entities: []string{"comments"}, DependsOn: []string{"seen"},
					HandleTx: func(ctx context.Context, tx pgx.Tx, e event.Event) error {
						if e.Type != event.Insert {
							return nil
						}
						post, _ := e.NewRecord.Get("post_id")
						_, err := tx.Exec(ctx, `INSERT INTO comment_counts VALUES ($1::int, 1)
							ON CONFLICT (post_id) DO UPDATE SET n = comment_counts.n + 1`, post.String())
						return err
					}},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		stop := runStoppable(t, eng)
		waitStreaming(t, eng)
		return eng, stop
	}
	waitApplied := func(eng *walflow.Engine, n event.Position) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			done := eng.Ledger().State().Head >= n
			for _, s := range eng.Projectors().Status() {
				done = done && s.Phase == projector.Live && s.Position >= n
			}
			if done {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("projectors did not apply through %d: %+v", n, eng.Projectors().Status())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	eng, stop := run()
	exec(`INSERT INTO posts VALUES (1, 'a')`)
	exec(`INSERT INTO comments VALUES (10, 1, 'x'), (11, 1, 'y')`)
	waitApplied(eng, 3)
	srv := httptest.NewServer(eng.Handler())
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// /status carries the same, typed: each projector's phase and position, each index's.
	resp, err = srv.Client().Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var st walflow.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	// The keys of walflow index status --json and walflow projector status --json.
	var keys struct {
		Indexes, Projectors []map[string]json.RawMessage
	}
	if err := json.Unmarshal(raw, &keys); err != nil || len(keys.Indexes) != 1 || len(keys.Projectors) != 3 {
		t.Fatalf("/status: %v\n%s", err, raw)
	}
	for _, k := range []string{"name", "phase", "checkpoint", "lag_events", "since", "built"} {
		if keys.Indexes[0][k] == nil {
			t.Errorf("/status indexes lack the key %s:\n%s", k, raw)
		}
	}
	for _, k := range []string{"name", "phase", "position", "lag_events", "seen"} {
		if keys.Projectors[0][k] == nil {
			t.Errorf("/status projectors lack the key %s:\n%s", k, raw)
		}
	}
	srv.Close()
	if len(st.Projectors) != 3 || st.Projectors[2].Name != "counts" || st.Projectors[2].Phase != projector.Live || st.Projectors[2].Position < 3 {
		t.Errorf("/status projectors: %+v", st.Projectors)
	}
	if len(st.Indexes) != 1 || st.Indexes[0].Indexer != "by_post" || st.Indexes[0].Phase != index.Live || st.Indexes[0].Checkpoint < 3 || !st.Indexes[0].Stored || st.IndexError != "" {
		t.Errorf("/status indexes: %+v (%s)", st.Indexes, st.IndexError)
	}
	if !strings.Contains(string(body), `walflow_projector_standby{projector="counts"} 0`) {
		t.Errorf("/metrics has no projector standby gauge:\n%s", body)
	}
	if !strings.Contains(string(body), `walflow_projector_lag_events{projector="counts"} 0`) {
		t.Errorf("/metrics has no projector lag:\n%s", body)
	}
	stop()

	exec(`INSERT INTO comments VALUES (12, 1, 'z')`) // while stopped: in the slot
	eng, _ = run()
	waitApplied(eng, 4)
	mu.Lock()
	got := append([]event.Position(nil), seen...)
	got1 := append([]event.Position(nil), post1...)
	mu.Unlock()
	if len(got) != 3 || got[0] != 2 || got[1] != 3 || got[2] != 4 {
		t.Errorf("the Handle projector received positions %v over two runs, want [2 3 4]", got)
	}
	if len(got1) != 3 || got1[0] != 2 || got1[1] != 3 || got1[2] != 4 {
		t.Errorf("the projector on index by_post received positions %v over two runs, want [2 3 4]", got1)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT n FROM comment_counts WHERE post_id = 1`).Scan(&n); err != nil || n != 3 {
		t.Errorf("comment_counts for post 1: %d, %v; want 3 (each insert once)", n, err)
	}
}
