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
	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/retry"
)

// TestEngineParked: a parking operator's parked events and rows show in /metrics, and
// process status reports the parked comments alone as not processed (their timestamps),
// and no LSN after the first of them, until a retry applies them.
func TestEngineParked(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+`CREATE TABLE counts (id int PRIMARY KEY, n int);
		ALTER TABLE comments ADD COLUMN updated_at timestamptz NOT NULL DEFAULT clock_timestamp();
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
		OperatorRetry: retry.Policy{Min: time.Millisecond, Max: time.Millisecond, MaxRetries: -1},
		Logger:        testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)
	for _, sql := range []string{`INSERT INTO posts VALUES (1, 'a'), (2, 'b')`, `INSERT INTO comments VALUES (1, 1, 'x')`, `INSERT INTO comments VALUES (2, 2, 'y')`,
		`INSERT INTO comments VALUES (3, 2, 'z')`, `INSERT INTO comments VALUES (4, 1, 'w')`} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	lsn, err := processstatus.CurrentLSN(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	micros := map[int]int64{}
	for id := 1; id <= 4; id++ {
		var m int64
		if err := conn.QueryRow(ctx, `SELECT (extract(epoch FROM updated_at) * 1000000)::bigint FROM comments WHERE id = $1`, id).Scan(&m); err != nil {
			t.Fatal(err)
		}
		micros[id] = m
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
	// Comments 1 and 4 (post 1) are processed; 2 and 3 (post 2, parked) are not, although 4
	// came after them; nor is any LSN after them.
	waitTrue(t, "comment 4 processed", func() bool { return eng.Processed("comments", micros[4]) })
	for _, id := range []int{2, 3} {
		if eng.Processed("comments", micros[id]) {
			t.Errorf("comment %d is parked but reads as processed", id)
		}
	}
	if !eng.Processed("comments", micros[1]) || eng.ProcessedLSN(lsn) {
		t.Errorf("Processed(comment 1) = %v (want true), ProcessedLSN(after the parked events) = %v (want false)", eng.Processed("comments", micros[1]), eng.ProcessedLSN(lsn))
	}
	// Fixed and retried: everything is processed.
	if _, err := conn.Exec(ctx, `DROP TRIGGER refuse_two ON counts`); err != nil {
		t.Fatal(err)
	}
	if err := eng.Operators().Retry(ctx, "counts", ""); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "the retried comments processed", func() bool {
		return eng.Processed("comments", micros[2]) && eng.Processed("comments", micros[3]) && eng.ProcessedLSN(lsn)
	})
	var n int
	if err := conn.QueryRow(ctx, `SELECT n FROM counts WHERE id = 2`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("counts row 2 = %d, %v after the retry; want 2", n, err)
	}
}

func waitTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
