package demo

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/source/pgwal"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// noEnv is a getenv with nothing set.
func noEnv(string) string { return "" }

// TestDemoEngineFailsWhileStarting: an engine that fails before it streams (here: the
// blog's tables are missing) ends the demo with its error; it used to wait forever for a
// second result from the engine.
func TestDemoEngineFailsWhileStarting(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t) // no blog in it
	var stderr syncbuf.Buffer
	d := &demo{env: &env{stdout: io.Discard, stderr: &stderr, getenv: noEnv}, dir: t.TempDir(), slot: "demo_fails", dsn: dsn}
	if err := d.configure("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.run(t.Context(), time.Minute, false) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the demo did not end after its engine failed\nstderr:\n%s", stderr.String())
	}
	// Whichever notices the missing blog first stops the engine: the source (the
	// publication's tables) or the operator (its query's tables).
	var pe *pgconn.PgError
	missing := errors.Is(err, pgwal.ErrNoTable) || (errors.As(err, &pe) && pe.Code == pgerrcode.UndefinedTable)
	if !missing || !strings.Contains(err.Error(), "demo: the engine stopped: ") {
		t.Fatalf("demo ended with %v, want the engine's error naming a missing table (pgwal.ErrNoTable, or the operator's undefined table)", err)
	}
}
