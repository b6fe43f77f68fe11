package operator_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/retry"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

const blogSchema = `
	CREATE TABLE posts (id serial PRIMARY KEY, title text, body text,
		inserted_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
	CREATE TABLE comments (id serial PRIMARY KEY, post_id int, body text, rating int,
		inserted_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
	CREATE TABLE post_with_comments_counts (id int PRIMARY KEY, title text, body text,
		inserted_at timestamptz, updated_at timestamptz, comments_count int);
	CREATE TABLE post_stats (id int PRIMARY KEY, comments_count int, is_popular bool);
	ALTER TABLE posts REPLICA IDENTITY FULL;
	ALTER TABLE comments REPLICA IDENTITY FULL;
	ALTER TABLE post_with_comments_counts REPLICA IDENTITY FULL;`

// seedOperator is post_with_comments_counts with an unguarded MERGE: every event rewrites
// its derived row, changed or not.
var seedOperator = operator.SQL{
	Target:   "post_with_comments_counts",
	Entities: []string{"comments", "posts"},
	Query: `
      MERGE INTO post_with_comments_counts dest
      USING (
          SELECT
              p.id AS id,
              p.title AS title,
              p.body AS body,
              p.inserted_at AS inserted_at,
              p.updated_at AS updated_at,
              (SELECT COUNT(c.id) FROM comments c WHERE c.post_id = p.id) AS comments_count
          FROM posts p
          WHERE p.id = $1
      ) src ON src.id = dest.id
      WHEN NOT MATCHED THEN
        INSERT (id, title, body, inserted_at, updated_at, comments_count)
        VALUES (src.id, src.title, src.body, src.inserted_at, src.updated_at, src.comments_count)
      WHEN MATCHED THEN
        UPDATE SET
            title = src.title,
            body = src.body,
            inserted_at = src.inserted_at,
            updated_at = src.updated_at,
            comments_count = src.comments_count;`,
	ID:         map[string]string{"comments": "post_id", "posts": "id"},
	DeleteWith: []string{"posts"},
}

// env is an engine following a fresh blog database, with a pool on it.
type env struct {
	t   *testing.T
	eng *walflow.Engine
	db  *pgxpool.Pool
}

// newEnv starts the engine; each tweak may change its configuration first.
func newEnv(t *testing.T, tweaks ...func(*walflow.Config)) *env {
	t.Helper()
	return startEnv(t, "", tweaks...)
}

// startEnv is newEnv with seed, when not empty, run after the blog schema and before the
// engine starts.
func startEnv(t *testing.T, seed string, tweaks ...func(*walflow.Config)) *env {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	ctx := t.Context()
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := db.Exec(ctx, blogSchema); err != nil {
		t.Fatal(err)
	}
	if seed != "" {
		if _, err := db.Exec(ctx, seed); err != nil {
			t.Fatal(err)
		}
	}
	cfg, _ := pgx.ParseConfig(dsn)
	engCfg := walflow.Config{
		DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true, StatusInterval: 100 * time.Millisecond,
		Tables: []channel.Table{{Name: "posts"}, {Name: "comments"}, {Name: "post_with_comments_counts"}},
		Logger: testLogger(t),
	}
	for _, tw := range tweaks {
		tw(&engCfg)
	}
	eng, err := walflow.Open(ctx, engCfg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine: %v", err)
		}
		_ = eng.Close()
	})
	// Changes made before the slot exists are not in its stream: wait for it.
	deadline := time.Now().Add(30 * time.Second)
	for !eng.Status(ctx).Streaming {
		if time.Now().After(deadline) {
			t.Fatal("engine did not start streaming within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &env{t: t, eng: eng, db: db}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// newRunner returns a runner of cfg on the engine's ledger and the database, checking
// its control table every 50ms, logging to the test unless cfg has a logger.
func (e *env) newRunner(cfg operator.Config) *operator.Runner {
	e.t.Helper()
	cfg.DB, cfg.Ledger = e.db, e.eng.Ledger()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(e.t)
	}
	cfg.ControlInterval = 50 * time.Millisecond
	r, err := operator.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// run starts a runner until the test ends.
func (e *env) run(cfg operator.Config) *operator.Runner {
	e.t.Helper()
	r := e.newRunner(cfg)
	if err := operator.Migrate(e.t.Context(), e.db); err != nil {
		e.t.Fatal(err)
	}
	runUntilEnd(e.t, r)
	return r
}

// startRunner runs r until stop is called. stop returns what Run returned, the same on
// every call.
func startRunner(r *operator.Runner) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	return func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
}

// runUntilEnd runs r until the test ends, and fails the test if Run returns an error.
func runUntilEnd(t *testing.T, r *operator.Runner) {
	stop := startRunner(r)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("runner: %v", err)
		}
	})
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(e.t.Context(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// settle waits until the ledger holds every change committed so far and every listed
// entity's operators have committed through the ledger's head.
func (e *env) settle(r *operator.Runner, entities ...string) {
	e.t.Helper()
	ctx := e.t.Context()
	var s string
	if err := e.db.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	target, _ := event.ParseLSN(s)
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := e.eng.Ledger().State()
		ok := max(st.LastEndLSN, st.AckedLSN) >= target
		for _, ent := range entities {
			ok = ok && r.CommittedThrough(ent) >= st.Head
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("not settled within 60s: ledger %+v, target %s", st, target)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) query(sql string) string {
	e.t.Helper()
	rows, err := e.db.Query(e.t.Context(), sql)
	if err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	var lines []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			e.t.Fatal(err)
		}
		lines = append(lines, fmt.Sprint(vals...))
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

const recompute = `SELECT p.id, p.title, p.body, (SELECT count(*) FROM comments c WHERE c.post_id = p.id)::int FROM posts p ORDER BY p.id`
const derived = `SELECT id, title, body, comments_count FROM post_with_comments_counts ORDER BY id`

func TestSeedBlogExample(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run(operator.Config{Operators: []operator.Operator{seedOperator}})
	steps := []struct{ name, sql string }{
		{"posts", `INSERT INTO posts (title, body) VALUES ('first', 'a'), ('second', 'b'), ('third', 'c')`},
		{"comments", `INSERT INTO comments (post_id, body) SELECT 1 + g % 3, 'c' || g FROM generate_series(1, 20) g`},
		{"edit a post", `UPDATE posts SET title = 'first!' WHERE id = 1`},
		{"edit comments", `UPDATE comments SET body = 'edited' WHERE id % 4 = 0`},
		{"move comments to another post", `UPDATE comments SET post_id = 3 WHERE post_id = 1`},
		{"delete comments", `DELETE FROM comments WHERE id % 5 = 0`},
		{"delete a post", `DELETE FROM comments WHERE post_id = 2; DELETE FROM posts WHERE id = 2`},
		{"orphan comment and a new post in one transaction", `BEGIN; INSERT INTO posts (title) VALUES ('fourth'); INSERT INTO comments (post_id, body) VALUES (4, 'x'), (NULL, 'orphan'); COMMIT`},
	}
	for _, s := range steps {
		e.exec(s.sql)
		e.settle(r, "posts", "comments")
		if got, want := e.query(derived), e.query(recompute); got != want {
			t.Fatalf("after %s: post_with_comments_counts differs from a recomputation\n got:\n%s\nwant:\n%s", s.name, got, want)
		}
	}
	st, err := r.Status(t.Context())
	if err != nil || len(st) != 1 || st[0].Halted || st[0].Name != "post_with_comments_counts" {
		t.Fatalf("status %+v %v", st, err)
	}
}

func TestChain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	stats := operator.SQL{
		Target:   "post_stats",
		Entities: []string{"post_with_comments_counts"},
		Query: `INSERT INTO post_stats (id, comments_count, is_popular)
			SELECT id, comments_count, comments_count >= 3 FROM post_with_comments_counts WHERE id = $1
			ON CONFLICT (id) DO UPDATE SET comments_count = EXCLUDED.comments_count, is_popular = EXCLUDED.is_popular`,
		DeleteWith: []string{"post_with_comments_counts"},
	}
	r := e.run(operator.Config{Operators: []operator.Operator{seedOperator, stats}})
	e.exec(`INSERT INTO posts (title) VALUES ('a'), ('b')`)
	e.exec(`INSERT INTO comments (post_id) SELECT 1 FROM generate_series(1, 4)`)
	e.exec(`INSERT INTO comments (post_id) VALUES (2)`)
	e.exec(`DELETE FROM posts WHERE id = 2`)
	want := "1 4 true"
	deadline := time.Now().Add(60 * time.Second)
	for {
		e.settle(r, "posts", "comments", "post_with_comments_counts")
		if got := e.query(`SELECT id, comments_count, is_popular FROM post_stats ORDER BY id`); got == want {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("post_stats = %q, want %q", got, want)
		}
	}
}

func TestSelfFeedRefused(t *testing.T) {
	t.Parallel()
	self := operator.SQL{Target: "counts", Entities: []string{"counts", "posts"}, Query: "SELECT $1"}
	_, err := operator.New(operator.Config{DB: &pgxpool.Pool{}, Operators: []operator.Operator{self}})
	if err == nil || !strings.Contains(err.Error(), "feed itself") {
		t.Fatalf("self-feeding operator: got %v", err)
	}
	a := operator.SQL{Name: "a", Target: "x", Entities: []string{"y"}, Query: "SELECT $1"}
	b := operator.SQL{Name: "b", Target: "y", Entities: []string{"x"}, Query: "SELECT $1"}
	if _, err := operator.New(operator.Config{DB: &pgxpool.Pool{}, Operators: []operator.Operator{a, b}}); err == nil || !strings.Contains(err.Error(), "feed itself") {
		t.Fatalf("cycle through two operators: got %v", err)
	}
	for _, bad := range []operator.Operator{
		operator.SQL{Entities: []string{"a"}, Query: "SELECT $1"},
		operator.SQL{Target: "t", Query: "SELECT $1"},
		operator.SQL{Target: "t", Entities: []string{"a"}},
		operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT 1"},
		operator.SQL{Target: "t", Entities: []string{"a"}, Query: "SELECT $1", ID: map[string]string{"b": "x"}},
		operator.Func{Entities: []string{"a"}},
		operator.Func{Name: "f", Entities: []string{"a"}},
	} {
		if _, err := operator.New(operator.Config{DB: &pgxpool.Pool{}, Operators: []operator.Operator{bad}}); err == nil {
			t.Errorf("operator %+v accepted", bad)
		}
	}
}

// fakeSleep records the retry delays without waiting.
type fakeSleep struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (f *fakeSleep) sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	f.delays = append(f.delays, d)
	f.mu.Unlock()
	return ctx.Err()
}

func (f *fakeSleep) got() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.delays...)
}

// recorder is a retry.Reporter that counts.
type recorder struct {
	retries, halts atomic.Int32
	halted         chan event.Position
}

func (r *recorder) Retry(_ context.Context, c retry.Consumer, _ *event.Event, _ int, _ time.Duration, _ error) {
	if c.Kind != retry.Operator {
		panic("an operator reported a retry as a " + c.Kind.String())
	}
	r.retries.Add(1)
}

func (r *recorder) Halted(_ context.Context, c retry.Consumer, e *event.Event, _ error) {
	if c.Kind != retry.Operator {
		panic("an operator reported a halt as a " + c.Kind.String())
	}
	r.halts.Add(1)
	r.halted <- e.Position
}

func TestFailurePolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(`CREATE TABLE effects (op text, comment_id int, PRIMARY KEY (op, comment_id))`)
	var flakyFailures atomic.Int32
	var brokenFixed atomic.Bool
	write := func(op string) operator.HandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
			id, _ := ev.ID("id")
			_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, $2)`, op, id.String())
			return err
		}
	}
	flaky := operator.Func{Name: "flaky", Entities: []string{"comments"}, Events: []event.Type{event.Insert},
		Handle: func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
			if id, _ := ev.ID("id"); id.String() == "3" && flakyFailures.Add(1) <= 3 {
				return errors.New("flaky failure")
			}
			return write("flaky")(ctx, tx, ev)
		}}
	broken := operator.Func{Name: "broken", Entities: []string{"comments"}, Events: []event.Type{event.Insert},
		Handle: func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
			if id, _ := ev.ID("id"); id.String() == "2" && !brokenFixed.Load() {
				return errors.New("broken forever")
			}
			return write("broken")(ctx, tx, ev)
		}}
	steady := operator.Func{Name: "steady", Entities: []string{"comments"}, Events: []event.Type{event.Insert}, Handle: write("steady")}

	sleeps := &fakeSleep{}
	rep := &recorder{halted: make(chan event.Position, 4)}
	r := e.run(operator.Config{Operators: []operator.Operator{flaky, broken, steady}, SleepFunc: sleeps.sleep, Reporter: rep, BatchSize: 10})
	e.exec(`INSERT INTO comments (post_id) SELECT 1 FROM generate_series(1, 5)`) // ids 1..5, one transaction

	var haltedAt event.Position
	select {
	case haltedAt = <-rep.halted:
	case <-time.After(60 * time.Second):
		t.Fatal("broken operator never halted")
	}
	e.settle(r, "posts") // the ledger has everything; steady and flaky finish on their own
	waitFor(t, func() bool { return e.query(`SELECT count(*) FROM effects WHERE op = 'flaky'`) == "5" })
	// A halted operator must not stop the others: steady applies all 5 (waited for, as its
	// goroutine need not have finished before flaky's).
	waitFor(t, func() bool { return e.query(`SELECT count(*) FROM effects WHERE op = 'steady'`) == "5" })
	// The batch was split: event 1 committed before the failing event 2.
	if got := e.query(`SELECT comment_id FROM effects WHERE op = 'broken' ORDER BY 1`); got != "1" {
		t.Fatalf("broken applied %q before halting, want only comment 1", got)
	}
	// Delays: flaky's three retries and broken's five, each series 500ms ×2 capped at 10s.
	var half, one, two, four, eight int
	for _, d := range sleeps.got() {
		switch d {
		case 500 * time.Millisecond:
			half++
		case time.Second:
			one++
		case 2 * time.Second:
			two++
		case 4 * time.Second:
			four++
		case 8 * time.Second:
			eight++
		default:
			t.Fatalf("unexpected retry delay %v", d)
		}
	}
	if half != 2 || one != 2 || two != 2 || four != 1 || eight != 1 {
		t.Fatalf("retry delays %v: want flaky 500ms,1s,2s and broken 500ms,1s,2s,4s,8s", sleeps.got())
	}
	st := statusOf(t, r, "broken")
	if !st.Halted || st.FailedPosition != haltedAt || !strings.Contains(st.Error, "broken forever") {
		t.Fatalf("broken status %+v", st)
	}

	// Restart resumes at the failing event.
	brokenFixed.Store(true)
	if err := r.Restart(t.Context(), "broken"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return e.query(`SELECT count(*) FROM effects WHERE op = 'broken'`) == "5" })
	if st := statusOf(t, r, "broken"); st.Halted {
		t.Fatalf("still halted after restart: %+v", st)
	}
}

func TestSkip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(`CREATE TABLE effects (comment_id int PRIMARY KEY)`)
	picky := operator.Func{Name: "picky", Entities: []string{"comments"}, Events: []event.Type{event.Insert},
		Handle: func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
			id, _ := ev.ID("id")
			if id.String() == "2" {
				return errors.New("cannot handle comment 2")
			}
			_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1)`, id.String())
			return err
		}}
	rep := &recorder{halted: make(chan event.Position, 1)}
	logs := &syncbuf.Buffer{}
	r := e.run(operator.Config{Operators: []operator.Operator{picky}, SleepFunc: (&fakeSleep{}).sleep, Reporter: rep,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Retry:  retry.Policy{MaxRetries: 1}})
	if _, err := r.Skip(t.Context(), "picky"); !errors.Is(err, operator.ErrNotHalted) {
		t.Fatalf("skip of a running operator: got %v", err)
	}
	e.exec(`INSERT INTO comments (post_id) SELECT 1 FROM generate_series(1, 3)`)
	at := <-rep.halted
	pos, err := r.Skip(t.Context(), "picky")
	if err != nil || pos != at {
		t.Fatalf("Skip = %d, %v; want %d", pos, err, at)
	}
	waitFor(t, func() bool { return e.query(`SELECT comment_id FROM effects ORDER BY 1`) == "1\n3" })
	// The skipped event is logged in full.
	if l := logs.String(); !strings.Contains(l, "operator skipped one event") || !strings.Contains(l, fmt.Sprintf(`\"position\":%d`, pos)) {
		t.Fatalf("skip not logged with its event:\n%s", l)
	}
	if rep.retries.Load() != 1 {
		t.Fatalf("%d retries, want 1", rep.retries.Load())
	}
	if _, err := r.Skip(t.Context(), "nope"); !errors.Is(err, operator.ErrUnknown) {
		t.Fatalf("unknown operator: %v", err)
	}
}

func statusOf(t *testing.T, r *operator.Runner, name string) operator.Status {
	t.Helper()
	all, err := r.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no status for %s", name)
	return operator.Status{}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 60s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
