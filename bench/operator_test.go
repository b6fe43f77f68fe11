package bench

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
)

// The operator benchmark compares walflow's batched operator execution with a baseline
// that applies each event in its own transaction with its own checkpoint update, the way a
// one-event-at-a-time queue works. Both run the post_with_comments_counts MERGE on
// the same ledger backlog of comment events, each into its own derived table.

const opSchema = `
	CREATE TABLE posts (id int PRIMARY KEY, title text, body text,
		inserted_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
	CREATE TABLE comments (id serial PRIMARY KEY, post_id int, body text,
		inserted_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
	CREATE INDEX ON comments (post_id);
	CREATE TABLE counts_batched (id int PRIMARY KEY, title text, body text, inserted_at timestamptz, updated_at timestamptz, comments_count int);
	CREATE TABLE counts_baseline (LIKE counts_batched INCLUDING ALL);
	ALTER TABLE posts REPLICA IDENTITY FULL;
	ALTER TABLE comments REPLICA IDENTITY FULL;`

func countsOperator(target string) operator.SQL {
	return operator.SQL{
		Target:   target,
		Entities: []string{"comments", "posts"},
		Query: `MERGE INTO ` + target + ` dest
			USING (SELECT p.id, p.title, p.body, p.inserted_at, p.updated_at,
				(SELECT COUNT(c.id) FROM comments c WHERE c.post_id = p.id) AS comments_count
				FROM posts p WHERE p.id = $1) src ON src.id = dest.id
			WHEN NOT MATCHED THEN INSERT (id, title, body, inserted_at, updated_at, comments_count)
				VALUES (src.id, src.title, src.body, src.inserted_at, src.updated_at, src.comments_count)
			WHEN MATCHED THEN UPDATE SET title = src.title, body = src.body, inserted_at = src.inserted_at,
				updated_at = src.updated_at, comments_count = src.comments_count`,
		ID:         map[string]string{"comments": "post_id", "posts": "id"},
		DeleteWith: []string{"posts"},
	}
}

type opResult struct {
	events              int
	baseline, batched   time.Duration
	baselineN, batchedN int
}

func (r opResult) rates() (base, batch float64) {
	return float64(r.baselineN) / r.baseline.Seconds(), float64(r.batchedN) / r.batched.Seconds()
}

// operatorRun builds a backlog of n comment events in a memory ledger, then measures both
// executions on it. baselineN limits how many events the baseline applies (its rate is per
// event, so a prefix measures it; 0 means all).
func operatorRun(tb testing.TB, dsn string, n, baselineN int) opResult {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(ctx, opSchema); err != nil {
		tb.Fatal(err)
	}
	cfg, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true,
		StatusInterval: 100 * time.Millisecond, Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		tb.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	defer func() {
		stop()
		<-done
		_ = eng.Close()
	}()
	for !eng.Status(ctx).Streaming {
		time.Sleep(10 * time.Millisecond)
	}
	posts := max(1, n/100)
	if _, err := db.Exec(ctx, `INSERT INTO posts (id, title, body) SELECT g, 'post ' || g, 'body' FROM generate_series(1, $1) g`, posts); err != nil {
		tb.Fatal(err)
	}
	// Comments in transactions of 1,000 rows, spread over the posts.
	for done := 0; done < n; done += 1000 {
		k := min(1000, n-done)
		if _, err := db.Exec(ctx, `INSERT INTO comments (post_id, body) SELECT 1 + (g * 7919) % $2::int, 'c' FROM generate_series($1::int, $1::int + $3::int - 1) g`, done, posts, k); err != nil {
			tb.Fatal(err)
		}
	}
	total := posts + n
	led := eng.Ledger()
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for led.State().Head < event.Position(total) {
		if err := led.Wait(waitCtx, led.State().Head); err != nil {
			tb.Fatalf("backlog: ledger has %d of %d events: %v", led.State().Head, total, err)
		}
	}
	if baselineN == 0 || baselineN > total {
		baselineN = total
	}
	res := opResult{events: total}
	res.baseline, res.baselineN = timeOperator(tb, db, eng, countsOperator("counts_baseline"), 1, baselineN)
	res.batched, res.batchedN = timeOperator(tb, db, eng, countsOperator("counts_batched"), operator.BatchSizeDefault, total)

	// Both derived tables must be right (the baseline one for the posts it reached).
	var diff int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM (SELECT id, comments_count FROM counts_batched EXCEPT
		SELECT p.id, (SELECT count(*) FROM comments c WHERE c.post_id = p.id)::int FROM posts p) d`).Scan(&diff); err != nil || diff != 0 {
		tb.Fatalf("batched derived table differs from a recomputation in %d rows (%v)", diff, err)
	}
	return res
}

// timeOperator runs one operator until it has committed through the position of the
// limit-th event, and returns how long that took.
func timeOperator(tb testing.TB, db *pgxpool.Pool, eng *walflow.Engine, op operator.SQL, batch, limit int) (time.Duration, int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := operator.New(operator.Config{DB: db, Ledger: eng.Ledger(), Operators: []operator.Operator{op}, BatchSize: batch,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		tb.Fatal(err)
	}
	if err := operator.Migrate(ctx, db); err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.Run(ctx) }()
	target := event.Position(limit)
	for r.CommittedThrough("comments") < target {
		select {
		case <-r.Changed():
		case err := <-done:
			tb.Fatalf("operator %s stopped: %v", op.Target, err)
		case <-time.After(time.Minute):
			tb.Fatalf("operator %s made no progress for a minute", op.Target)
		}
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	return elapsed, limit
}

func TestOperatorBenchSmoke(t *testing.T) {
	t.Parallel()
	res := operatorRun(t, pgtest.NewDatabase(t), 2000, 0)
	base, batch := res.rates()
	t.Logf("smoke: baseline %.0f events/s, batched %.0f events/s (%d events; no timing is asserted)", base, batch, res.events)
}

// BenchmarkOperators measures batched operator execution against one transaction per
// event on a backlog of 200,000 comment events. It runs on its own cluster with fsync and
// synchronous_commit on, as in production, since per-transaction cost is what it compares.
func BenchmarkOperators(b *testing.B) {
	ctx := context.Background()
	c, err := pgtest.Start(ctx, &pgtest.Options{Settings: map[string]string{"fsync": "on", "synchronous_commit": "on", "max_wal_size": "4GB"}})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Stop(context.Background())
	if err := c.CreateDatabase(ctx, "opbench"); err != nil {
		b.Fatal(err)
	}
	var res opResult
	for b.Loop() {
		res = operatorRun(b, c.DSN("opbench"), 200_000, 20_000)
	}
	base, batch := res.rates()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(base, "baseline_events/s")
	b.ReportMetric(batch, "batched_events/s")
	b.ReportMetric(batch/base, "ratio")
	b.Logf("| %d comment events | one transaction per event: %.0f events/s (first %d events) | batched (%d): %.0f events/s | %.1f× |",
		res.events, base, res.baselineN, operator.BatchSizeDefault, batch, batch/base)
	if batch/base < 5 {
		b.Errorf("batched execution is %.1f× the one-transaction-per-event baseline; the bar is 5×", batch/base)
	}
}
