package walflow_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/operator"
)

// TestOperatorHaltLogged checks the engine's log of an operator halt: it carries the
// component key once (component=operator, never beside component=engine).
func TestOperatorHaltLogged(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	cfg, _ := pgx.ParseConfig(dsn)
	logs := &syncbuf.Buffer{}
	// A division by zero cannot heal: the operator halts at its first event.
	divides := operator.SQL{Name: "divides", Target: "posts", Entities: []string{"comments"}, ID: map[string]string{"comments": "post_id"},
		Query: "SELECT 1 / (length($1::text) - length($1::text))"}
	eng, err := walflow.Open(t.Context(), walflow.Config{DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true,
		StatusInterval: 100 * time.Millisecond, Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Operators: []operator.Operator{divides}, Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	if _, err := conn.Exec(t.Context(), `INSERT INTO comments VALUES (1, 1, 'x')`); err != nil {
		t.Fatal(err)
	}
	var line string
	deadline := time.Now().Add(60 * time.Second)
	for line == "" {
		for l := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(l, `"msg":"operator halted`) {
				line = l
			}
		}
		if line == "" && time.Now().After(deadline) {
			t.Fatalf("no halt logged within 60s:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(line, `"component":`); n != 1 || !strings.Contains(line, `"component":"operator"`) {
		t.Fatalf("the halt's log has the component key %d times, want once, operator:\n%s", n, line)
	}
}
