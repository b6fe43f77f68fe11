package walflow_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pgtest"
)

// TestEngineIndexes: Config.Indexers are built beside a disk ledger, read by value, shown
// in /metrics, kept across a restart, and rebuilt identically when their directory is
// deleted while the engine is stopped.
func TestEngineIndexes(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	ctx := t.Context()
	pc, _ := pgx.ParseConfig(dsn)
	dir := t.TempDir()
	cfg := walflow.Config{
		DatabaseURL: dsn, Slot: pc.Database, LedgerDir: filepath.Join(dir, "ledger"),
		Tables:         []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Indexers:       []index.Indexer{index.Field("by_post", "post_id"), index.Type("by_type")},
		StatusInterval: 200 * time.Millisecond,
		Logger:         testLogger(t),
	}
	const events = 7 // the changes below
	read := func(eng *walflow.Engine, ix, value string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for eng.Ledger().State().Head < events {
			if time.Now().After(deadline) {
				t.Fatalf("the ledger has %d events, want %d", eng.Ledger().State().Head, events)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for {
			sts, err := eng.Indexes().Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			caught := true
			for _, s := range sts {
				caught = caught && s.Checkpoint == eng.Ledger().State().Head
			}
			if caught {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("indexes did not catch up: %+v", sts)
			}
			time.Sleep(20 * time.Millisecond)
		}
		evs, err := eng.Indexes().Read(ctx, ix, value, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			out = append(out, fmt.Sprintf("%d %s %s", e.Position, e.Name, e.Type))
		}
		return strings.Join(out, ", ")
	}
	run := func() (*walflow.Engine, func()) {
		eng, err := walflow.Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		stop := runStoppable(t, eng)
		return eng, stop
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	eng, stop := run()
	waitStreaming(t, eng)
	exec(`INSERT INTO posts VALUES (1, 'a'), (2, 'b')`)
	exec(`INSERT INTO comments VALUES (10, 1, 'x'), (11, 2, 'y'), (12, 1, 'z')`)
	exec(`UPDATE comments SET post_id = 2 WHERE id = 12`)
	exec(`DELETE FROM comments WHERE id = 10`)
	want1 := read(eng, "by_post", "1")
	if want1 == "" || strings.Count(want1, ",") != 3 {
		t.Fatalf("by_post 1: %q, want the insert of 10 and 12, the move of 12 and the delete of 10", want1)
	}
	// Every event was indexed from values computed while it was appended, none read back.
	sts, err := eng.Indexes().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sts {
		if s.Fed != events || s.ReadBack != 0 {
			t.Errorf("%s: %d events fed and %d read back; want all %d fed", s.Indexer, s.Fed, s.ReadBack, events)
		}
	}
	srv := httptest.NewServer(eng.Handler())
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	srv.Close()
	if !strings.Contains(string(body), `walflow_index_lag_events{index="by_post"} 0`) {
		t.Errorf("/metrics has no index lag:\n%s", body)
	}
	wantType := read(eng, "by_type", "delete")
	stop()

	// Restart: kept. Then delete the index directory while stopped: rebuilt identically.
	for _, del := range []bool{false, true} {
		if del {
			if err := os.RemoveAll(cfg.LedgerDir + ".index"); err != nil {
				t.Fatal(err)
			}
		}
		eng, stop := run()
		if got := read(eng, "by_post", "1"); got != want1 {
			t.Errorf("after a restart (index deleted: %v): by_post 1 = %q, want %q", del, got, want1)
		}
		if got := read(eng, "by_type", "delete"); got != wantType {
			t.Errorf("after a restart (index deleted: %v): by_type delete = %q, want %q", del, got, wantType)
		}
		if sts, err := eng.Indexes().Status(ctx); err != nil || (del && sts[0].ReadBack != events) {
			t.Errorf("after deleting the index: %+v, %v; want the %d events read back to rebuild it", sts, err, events)
		}
		stop()
	}
}

func waitStreaming(t *testing.T, eng *walflow.Engine) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !eng.Status(t.Context()).Streaming {
		if time.Now().After(deadline) {
			t.Fatal("engine did not start streaming within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runStoppable runs eng until stop is called or the test ends; stop checks Run's result
// and closes the engine, once.
func runStoppable(t *testing.T, eng *walflow.Engine) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if err := eng.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
