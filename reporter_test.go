package walflow_test

import (
	"context"
	"errors"
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
	"github.com/walflow/walflow/retry"
)

// haltRecorder is a retry.Reporter that keeps what it is told.
type haltRecorder struct {
	mu      sync.Mutex
	retries []retry.Consumer
	halts   []string // "consumer@position: error"
}

func (r *haltRecorder) Retry(_ context.Context, c retry.Consumer, _ *event.Event, _ int, _ time.Duration, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retries = append(r.retries, c)
}

func (r *haltRecorder) Halted(_ context.Context, c retry.Consumer, e *event.Event, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.halts = append(r.halts, c.String()+"@"+e.Position.String()+": "+err.Error())
}

func (r *haltRecorder) waitHalt(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r.mu.Lock()
		for _, h := range r.halts {
			if strings.HasPrefix(h, prefix) {
				r.mu.Unlock()
				return h
			}
		}
		got := append([]string(nil), r.halts...)
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("the ErrorReporter saw no halt of %s within 30s; it saw %q", prefix, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestErrorReporterSeesProjectorHalts: Config.ErrorReporter receives a projector's retries
// and its halt, named as a projector, as it does an operator's.
func TestErrorReporterSeesProjectorHalts(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	pc, _ := pgx.ParseConfig(dsn)
	rep := &haltRecorder{}
	eng, err := walflow.Open(t.Context(), walflow.Config{
		DatabaseURL: dsn, Slot: pc.Database, LedgerDir: filepath.Join(t.TempDir(), "ledger"),
		Tables:        []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Logger:        testLogger(t),
		ErrorReporter: rep,
		OperatorRetry: retry.Policy{Min: time.Millisecond, Max: time.Millisecond, MaxRetries: 1},
		Projectors: []projector.Projector{{Name: "mailer", Entities: []string{"posts"}, Handle: func(context.Context, event.Event) error {
			return errors.New("smtp: refused")
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	runStoppable(t, eng)
	waitStreaming(t, eng)
	if _, err := conn.Exec(t.Context(), `INSERT INTO posts VALUES (1, 'a')`); err != nil {
		t.Fatal(err)
	}
	h := rep.waitHalt(t, "projector mailer@")
	if !strings.HasSuffix(h, "smtp: refused") {
		t.Errorf("halt = %q, want the handler's error", h)
	}
	rep.mu.Lock()
	retries := rep.retries
	rep.mu.Unlock()
	if len(retries) != 1 || retries[0] != (retry.Consumer{Kind: retry.Projector, Name: "mailer"}) {
		t.Errorf("retries reported = %v, want one of projector mailer", retries)
	}
	if s := eng.Projectors().Status(); len(s) != 1 || s[0].Phase != projector.Halted {
		t.Errorf("projector status = %+v, want halted", s)
	}
}

// TestErrorReporterSeesIndexFailures: an indexer whose Func fails stops the engine, and
// Config.ErrorReporter receives the failure, named as an index, at the event.
func TestErrorReporterSeesIndexFailures(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	pc, _ := pgx.ParseConfig(dsn)
	rep := &haltRecorder{}
	eng, err := walflow.Open(t.Context(), walflow.Config{
		DatabaseURL: dsn, Slot: pc.Database, LedgerDir: filepath.Join(t.TempDir(), "ledger"),
		Tables:        []channel.Table{{Name: "posts"}},
		Logger:        testLogger(t),
		ErrorReporter: rep,
		Indexers: []index.Indexer{{Name: "broken", Func: func(e *event.Event, dst []string) []string {
			panic("broken indexer")
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close() })
	done := make(chan error, 1)
	go func() { done <- eng.Run(t.Context()) }()
	waitStreaming(t, eng)
	if _, err := conn.Exec(t.Context(), `INSERT INTO posts VALUES (1, 'a')`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "broken indexer") {
			t.Fatalf("Run = %v, want the indexer's failure", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop within 30s after the indexer failed")
	}
	h := rep.waitHalt(t, "index broken@")
	if !strings.Contains(h, "broken indexer") || strings.HasPrefix(h, "index broken@0:") {
		t.Errorf("halt = %q, want the indexer's failure at its event", h)
	}
}
