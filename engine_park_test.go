package walflow_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
)

// TestEngineParkedMetrics: a parking operator's parked events and rows show in /metrics.
func TestEngineParkedMetrics(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+`CREATE TABLE counts (id int PRIMARY KEY, n int);
		CREATE FUNCTION refuse_two() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id = 2 THEN RAISE EXCEPTION 'counts row 2 refused'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_two BEFORE INSERT OR UPDATE ON counts FOR EACH ROW EXECUTE FUNCTION refuse_two();`)
	ctx := t.Context()
	cfg, _ := pgx.ParseConfig(dsn)
	counts := operator.SQL{
		Target: "counts", Entities: []string{"comments"}, ID: map[string]string{"comments": "post_id"},
		Query:     `INSERT INTO counts SELECT $1::int, (SELECT count(*) FROM comments c WHERE c.post_id = $1::int) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`,
		OnFailure: operator.Park,
	}
	eng, err := walflow.Open(ctx, walflow.Config{DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true, StatusInterval: 100 * time.Millisecond,
		Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}}, Operators: []operator.Operator{counts},
		OperatorRetry: operator.RetryPolicy{Min: time.Millisecond, Max: time.Millisecond, MaxRetries: -1},
		Logger:        testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	if _, err := conn.Exec(ctx, `INSERT INTO posts VALUES (1, 'a'), (2, 'b'); INSERT INTO comments VALUES (1, 1, 'x'), (2, 2, 'y'), (3, 2, 'z'), (4, 1, 'w')`); err != nil {
		t.Fatal(err)
	}
	want := []string{`walflow_operator_parked_events{operator="counts"} 2`, `walflow_operator_parked_ids{operator="counts"} 1`}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec := httptest.NewRecorder()
		eng.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		var n int
		_ = conn.QueryRow(ctx, `SELECT n FROM counts WHERE id = 1`).Scan(&n)
		if n == 2 && strings.Contains(rec.Body.String(), want[0]) && strings.Contains(rec.Body.String(), want[1]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts row 1 = %d; /metrics lacks %v:\n%s", n, want, rec.Body.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
