package operator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
)

// newSeededEnv is newEnv with seed run after the blog schema and before the engine starts
// streaming, so that no event of the seeded rows reaches the ledger: only a backfill can
// bring them into derived tables.
func newSeededEnv(t *testing.T, seed string) *env {
	t.Helper()
	return startEnv(t, seed)
}

// blogSeed is 2,000 posts with 100,000 comments, a few orphan comments, and a derived row
// for a post that does not exist (its delete was never seen).
const blogSeed = `
	CREATE INDEX ON comments (post_id);
	INSERT INTO posts (title, body) SELECT 'post ' || g, 'body ' || g FROM generate_series(1, 2000) g;
	INSERT INTO comments (post_id, body) SELECT 1 + g % 2000, 'comment ' || g FROM generate_series(1, 99900) g;
	INSERT INTO comments (post_id, body) SELECT NULL, 'orphan' FROM generate_series(1, 100);
	INSERT INTO post_with_comments_counts (id, title, comments_count) VALUES (999999, 'stale', 7);`

// liveWriter changes posts and comments, one change per permit, until stop is closed.
// Permits keep it from touching every post: most derived rows must come from the backfill.
func liveWriter(t *testing.T, db *pgxpool.Pool, stop <-chan struct{}, permits <-chan struct{}) (done <-chan struct{}, count func() int) {
	ops := []string{
		`INSERT INTO comments (post_id, body) VALUES ($1, 'live')`,
		`INSERT INTO comments (post_id, body) VALUES ($1, 'live')`,
		`UPDATE comments SET post_id = $1 WHERE id IN (SELECT id FROM comments WHERE post_id = $1 % 2000 + 1 LIMIT 3)`,
		`UPDATE comments SET post_id = $1 WHERE id IN (SELECT id FROM comments WHERE post_id = $1 % 2000 + 1 LIMIT 3)`,
		`DELETE FROM comments WHERE id IN (SELECT id FROM comments WHERE post_id = $1 LIMIT 2)`,
		`DELETE FROM comments WHERE id IN (SELECT id FROM comments WHERE post_id = $1 LIMIT 2)`,
		`UPDATE posts SET title = 'edited ' || $1::text WHERE id = $1`,
		`INSERT INTO posts (title, body) SELECT 'live', $1::text`,
		`DELETE FROM posts WHERE id = $1`,
	}
	// The id is sent as text, which PostgreSQL reads as the type each statement needs.
	var n atomic.Int32
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-stop:
				return
			case <-permits:
			}
			if _, err := db.Exec(context.Background(), ops[rand.IntN(len(ops))], strconv.Itoa(1+rand.IntN(2050))); err != nil {
				t.Errorf("live write: %v", err)
				return
			}
			n.Add(1)
		}
	}()
	return ended, func() int { return int(n.Load()) }
}

func TestBackfillInterruptedResumedWhileLive(t *testing.T) {
	t.Parallel()
	e := newSeededEnv(t, blogSeed)
	r := e.run(operator.Config{Operators: []operator.Operator{seedOperator}})
	const name = "post_with_comments_counts"
	if got := e.query(`SELECT count(*) FROM post_with_comments_counts`); got != "1" {
		t.Fatalf("%s derived rows before the backfill, want only the stale one", got)
	}

	stop := make(chan struct{})
	permits := make(chan struct{}, 64)
	writerDone, writes := liveWriter(t, e.db, stop, permits)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-writerDone
	}()
	// After each batch, allow a few live changes, made while the next batch runs.
	interleave := func() {
		for range 4 {
			select {
			case permits <- struct{}{}:
			default:
			}
		}
	}

	// First run: interrupted at 40% of the posts, the second entity. (The posts entity
	// alone recomputes every post, so this is where a faulty resume would show.)
	ctx1, cancel1 := context.WithCancel(t.Context())
	defer cancel1()
	var first []operator.BackfillProgress
	err := r.Backfill(ctx1, name, &operator.BackfillOpts{BatchSize: 100, Progress: func(p operator.BackfillProgress) {
		first = append(first, p)
		if p.Entity == "posts" && p.Done*10 >= p.Total*4 {
			cancel1()
			return
		}
		interleave()
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted backfill returned %v, want context.Canceled", err)
	}
	if be := (*operator.BackfillError)(nil); !errors.As(err, &be) || be.Operator != name || !strings.HasPrefix(be.Err.Error(), "interrupted; run it again") {
		t.Errorf("interrupted backfill returned %v, want a BackfillError of %s", err, name)
	}
	if len(first) < 2 || first[0].Done != 0 || first[0].Total < 1990 || first[0].Entity != "comments" {
		t.Fatalf("first run reports %+v", first)
	}
	var saved, total int64
	var finished bool
	if err := e.db.QueryRow(t.Context(), `SELECT done, total, finished_at IS NOT NULL FROM walflow.backfills WHERE operator = $1 AND entity = 'posts'`, name).
		Scan(&saved, &total, &finished); err != nil {
		t.Fatal(err)
	}
	if last := first[len(first)-1]; saved != last.Done || saved < total*4/10 || saved >= total || finished {
		t.Fatalf("saved progress done=%d total=%d finished=%v after the last report %+v", saved, total, finished, last)
	}

	// Second run: resumes where the first stopped.
	var second []operator.BackfillProgress
	err = r.Backfill(t.Context(), name, &operator.BackfillOpts{BatchSize: 100, Progress: func(p operator.BackfillProgress) {
		second = append(second, p)
		interleave()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if p := second[0]; p.Entity != "comments" || !p.Finished || p.Done < 1990 {
		t.Fatalf("second run starts with %+v; want comments reported finished", p)
	}
	if p := second[1]; p.Entity != "posts" || p.Done != saved || p.Resumed != saved || p.Finished {
		t.Fatalf("second run goes on with %+v; want it to resume posts at %d", p, saved)
	}
	ends := map[string]operator.BackfillProgress{}
	for _, p := range second {
		if p.Finished {
			ends[p.Entity] = p
		}
	}
	if c, p := ends["comments"], ends["posts"]; c.Done < 1990 || p.Done < total-50 {
		t.Fatalf("finished with comments %+v and posts %+v", c, p)
	}

	// Every permit handed out is used before the writer stops (closing stop while permits
	// are pending would let select drop them at random).
	waitFor(t, func() bool { return len(permits) == 0 })
	close(stop)
	<-writerDone
	if n := writes(); n < 100 {
		t.Fatalf("only %d live changes during the backfill", n)
	}
	e.settle(r, "posts", "comments")
	if got, want := e.query(derived), e.query(recompute); got != want {
		t.Fatalf("post_with_comments_counts differs from a recomputation\n got:\n%.2000s\nwant:\n%.2000s", got, want)
	}
	if got := e.query(`SELECT entity || ' ' || (finished_at IS NOT NULL) FROM walflow.backfills ORDER BY entity`); got != "comments true\nposts true" {
		t.Fatalf("walflow.backfills: %s", got)
	}

	// A finished backfill run again starts over.
	var third []operator.BackfillProgress
	if err := operator.Backfill(t.Context(), e.db, seedOperator, &operator.BackfillOpts{Progress: func(p operator.BackfillProgress) {
		third = append(third, p)
	}}); err != nil {
		t.Fatal(err)
	}
	if third[0].Done != 0 || third[0].Resumed != 0 {
		t.Fatalf("a finished backfill run again starts with %+v, want Done 0", third[0])
	}
	if got, want := e.query(derived), e.query(recompute); got != want {
		t.Fatal("post_with_comments_counts differs from a recomputation after a second full backfill")
	}
}

// keysDB is a database without an engine: Backfill needs none.
func keysDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	db, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	_, err = db.Exec(t.Context(), `
		CREATE TYPE mood AS ENUM ('sad', 'happy');
		CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE TABLE nums (id int PRIMARY KEY, g int);
		INSERT INTO nums SELECT i, CASE WHEN i % 5 <> 0 THEN (i * 7) % 31 END FROM generate_series(1, 60) i;
		CREATE TABLE uids (id uuid PRIMARY KEY);
		INSERT INTO uids SELECT gen_random_uuid() FROM generate_series(1, 30);
		CREATE TABLE pairs (a int, b text, m mood, p posint, tags text[], note text, PRIMARY KEY (a, b));
		INSERT INTO pairs SELECT i % 4, 'k' || i, CASE WHEN i % 2 = 0 THEN 'happy' END::mood, i, ARRAY['x', i::text], NULL
			FROM generate_series(1, 23) i;
		CREATE TABLE seen (op text, id text, n int NOT NULL DEFAULT 1, at bigserial, PRIMARY KEY (op, id));`)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// seenQuery counts one more sighting of $1 for op.
func seenQuery(op string) string {
	return `INSERT INTO seen (op, id) VALUES ('` + op + `', $1) ON CONFLICT (op, id) DO UPDATE SET n = seen.n + 1, at = DEFAULT`
}

func queryString(t *testing.T, db *pgxpool.Pool, sql string) string {
	t.Helper()
	var s *string
	if err := db.QueryRow(t.Context(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if s == nil {
		return "<nil>"
	}
	return *s
}

func TestBackfillKeys(t *testing.T) {
	t.Parallel()
	db := keysDB(t)
	ctx := t.Context()

	t.Run("integer ids in numeric order", func(t *testing.T) {
		op := operator.SQL{Name: "by_g", Target: "seen", Entities: []string{"nums"}, ID: map[string]string{"nums": "g"}, Query: seenQuery("g")}
		var reports []operator.BackfillProgress
		if err := operator.Backfill(ctx, db, op, &operator.BackfillOpts{BatchSize: 4, Progress: func(p operator.BackfillProgress) { reports = append(reports, p) }}); err != nil {
			t.Fatal(err)
		}
		got := queryString(t, db, `SELECT string_agg(id || ':' || n, ',' ORDER BY at) FROM seen WHERE op = 'g'`)
		want := queryString(t, db, `SELECT string_agg(g || ':1', ',' ORDER BY g) FROM (SELECT DISTINCT g FROM nums WHERE g IS NOT NULL) d`)
		if got != want {
			t.Fatalf("ids handled (in order, with count): %s\nwant %s", got, want)
		}
		last := reports[len(reports)-1]
		if !last.Finished || last.Done != last.Total || last.Total != 30 || len(reports) != 1+8 {
			t.Fatalf("%d reports, last %+v; want 9 (start and 8 batches of at most 4), 30 ids", len(reports), last)
		}

		// Run again: it finished, so it starts over.
		reports = nil
		if err := operator.Backfill(ctx, db, &op, &operator.BackfillOpts{Progress: func(p operator.BackfillProgress) { reports = append(reports, p) }}); err != nil {
			t.Fatal(err)
		}
		if reports[0].Done != 0 || queryString(t, db, `SELECT min(n)::text FROM seen WHERE op = 'g'`) != "2" {
			t.Fatalf("second run: first report %+v, every id should have been handled twice", reports[0])
		}

		// Another backfill of the same operator is refused while one runs.
		conn, err := db.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('walflow.backfill:by_g', 0))`); err != nil {
			t.Fatal(err)
		}
		if err := operator.Backfill(ctx, db, op, nil); !errors.Is(err, operator.ErrBackfillRunning) {
			t.Fatalf("concurrent backfill: %v, want ErrBackfillRunning", err)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(hashtextextended('walflow.backfill:by_g', 0))`); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("uuid ids interrupted and resumed", func(t *testing.T) {
		op := operator.SQL{Name: "by_uuid", Target: "seen", Entities: []string{"uids"}, Query: seenQuery("u")}
		bctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := operator.Backfill(bctx, db, op, &operator.BackfillOpts{BatchSize: 7, Progress: func(p operator.BackfillProgress) {
			if p.Done >= 14 {
				cancel()
			}
		}})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("interrupted: %v", err)
		}
		var resumedAt int64 = -1
		if err := operator.Backfill(ctx, db, op, &operator.BackfillOpts{BatchSize: 7, Progress: func(p operator.BackfillProgress) {
			if resumedAt < 0 {
				resumedAt = p.Done
			}
		}}); err != nil {
			t.Fatal(err)
		}
		if resumedAt != 14 {
			t.Fatalf("resumed at %d, want 14", resumedAt)
		}
		got := queryString(t, db, `SELECT string_agg(id || ':' || n, ',' ORDER BY at) FROM seen WHERE op = 'u'`)
		want := queryString(t, db, `SELECT string_agg(id || ':1', ',' ORDER BY id) FROM uids`)
		if got != want {
			t.Fatalf("uuids handled (in order, with count): %s\nwant %s", got, want)
		}
	})

	t.Run("func sees synthesized inserts, composite key resumed", func(t *testing.T) {
		var mu sync.Mutex
		var evs []event.Event
		op := operator.Func{Name: "pairs_func", Entities: []string{"pairs"}, Handle: func(ctx context.Context, tx pgx.Tx, e *event.Event) error {
			mu.Lock()
			evs = append(evs, *e)
			mu.Unlock()
			a, _ := e.NewRecord.Get("a")
			b, _ := e.NewRecord.Get("b")
			_, err := tx.Exec(ctx, seenQuery("f"), a.String()+"/"+b.String())
			return err
		}}
		bctx, cancel := context.WithCancel(ctx)
		defer cancel()
		err := operator.Backfill(bctx, db, op, &operator.BackfillOpts{BatchSize: 5, Progress: func(p operator.BackfillProgress) {
			if p.Done >= 10 {
				cancel()
			}
		}})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("interrupted: %v", err)
		}
		if got := queryString(t, db, `SELECT last_id FROM walflow.backfills WHERE operator = 'pairs_func'`); got != `["1","k5"]` {
			t.Fatalf("saved key %s", got)
		}
		if err := operator.Backfill(ctx, db, op, &operator.BackfillOpts{BatchSize: 5}); err != nil {
			t.Fatal(err)
		}
		got := queryString(t, db, `SELECT string_agg(id || ':' || n, ',' ORDER BY at) FROM seen WHERE op = 'f'`)
		want := queryString(t, db, `SELECT string_agg(a || '/' || b || ':1', ',' ORDER BY a, b) FROM pairs`)
		if got != want {
			t.Fatalf("rows handled (in order, with count): %s\nwant %s", got, want)
		}

		mu.Lock()
		defer mu.Unlock()
		i := slices.IndexFunc(evs, func(e event.Event) bool { b, _ := e.NewRecord.Get("b"); return b.String() == "k2" })
		if i < 0 {
			t.Fatal("no event for row (2, k2)")
		}
		e := evs[i]
		var dbName string
		_ = db.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName)
		if e.Type != event.Insert || e.Position != 0 || e.Name != "pairs" || e.OldRecord != nil ||
			e.Source.DB != dbName || e.Source.Schema != "public" || e.Source.Table != "pairs" {
			t.Fatalf("event %+v", e)
		}
		var cols []string
		for _, c := range e.Source.Columns {
			cols = append(cols, c.Name+" "+c.Type+" "+strconv.Itoa(int(c.OID))+" "+strconv.FormatBool(c.Key))
		}
		wantCols := "a integer 23 true, b text 25 true, m mood 25 false, p posint 23 false, tags text[] 1009 false, note text 25 false"
		if got := strings.Join(cols, ", "); got != wantCols {
			t.Fatalf("columns %s\nwant %s", got, wantCols)
		}
		var fields []string
		for _, f := range e.NewRecord {
			fields = append(fields, f.Name+"="+f.Value.String()+"/"+f.Value.Kind().String()+"/"+strconv.Itoa(int(f.Value.OID())))
		}
		wantFields := "a=2/text/23, b=k2/text/25, m=happy/text/25, p=2/text/23, tags={x,2}/text/1009, note=NULL/null/25"
		if got := strings.Join(fields, ", "); got != wantFields {
			t.Fatalf("record %s\nwant %s", got, wantFields)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		deletesOnly := operator.Func{Name: "deletes", Entities: []string{"pairs"}, Events: []event.Type{event.Delete},
			Handle: func(context.Context, pgx.Tx, *event.Event) error { return nil }}
		if err := operator.Backfill(ctx, db, deletesOnly, nil); err == nil || !strings.Contains(err.Error(), "insert") {
			t.Fatalf("backfill of a delete-only Func: %v", err)
		}
		r, err := operator.New(operator.Config{DB: db, Operators: []operator.Operator{deletesOnly}})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Backfill(ctx, "nope", nil); !errors.Is(err, operator.ErrUnknown) {
			t.Fatalf("unknown operator: %v", err)
		}
		err = operator.Backfill(ctx, db, operator.SQL{Target: "seen", Entities: []string{"missing"}, Query: seenQuery("x")}, nil)
		if be := (*operator.BackfillError)(nil); !errors.As(err, &be) || be.Operator != "seen" || strings.Contains(be.Err.Error(), "backfill of") {
			t.Fatalf("backfill of a missing table: %v, want a BackfillError of seen", err)
		}
	})
}

func TestProgressRateETA(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	tests := []struct {
		name string
		p    operator.BackfillProgress
		rate float64
		eta  time.Duration
	}{
		{"start", operator.BackfillProgress{Total: 10, Started: t0, At: t0}, 0, -1},
		{"resumed", operator.BackfillProgress{Done: 600, Resumed: 400, Total: 1000, Started: t0, At: t0.Add(2 * time.Second)}, 100, 4 * time.Second},
		{"past the estimate", operator.BackfillProgress{Done: 1100, Total: 1000, Started: t0, At: t0.Add(time.Second)}, 1100, 0},
		{"finished", operator.BackfillProgress{Done: 5, Total: 10, Started: t0, At: t0.Add(time.Second), Finished: true}, 5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if r, eta := tt.p.Rate(), tt.p.ETA(); r != tt.rate || eta != tt.eta {
				t.Fatalf("Rate, ETA = %v, %v; want %v, %v", r, eta, tt.rate, tt.eta)
			}
		})
	}
}

// TestBackfillArrayDelimiters checks that a backfill's events split arrays as the
// replication source does: on the element type's delimiter (';' for box[], a user type's
// own), and keeps int2vector (not array syntax) as text.
func TestBackfillArrayDelimiters(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	ctx := t.Context()
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := db.Exec(ctx, `
		CREATE TYPE pipetext;
		CREATE FUNCTION pipetext_in(cstring) RETURNS pipetext AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
		CREATE FUNCTION pipetext_out(pipetext) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
		CREATE TYPE pipetext (INPUT = pipetext_in, OUTPUT = pipetext_out, INTERNALLENGTH = VARIABLE, DELIMITER = '|');
		CREATE TABLE shapes (id int PRIMARY KEY, t text[], b box[], p pipetext[], v int2vector);
		INSERT INTO shapes VALUES (1, '{semi;colon,"a,b"}', '{(1,1),(0,0);(2,2),(1,1)}', '{a,b|"c|d"|e;f}', '1 2');`); err != nil {
		t.Fatal(err)
	}
	var got string
	op := operator.Func{Name: "shapes_func", Entities: []string{"shapes"}, Handle: func(ctx context.Context, tx pgx.Tx, e *event.Event) error {
		for _, f := range e.NewRecord {
			if _, err := f.Value.Any(); err != nil {
				return fmt.Errorf("column %s: %w", f.Name, err)
			}
		}
		b, err := json.Marshal(e.NewRecord)
		got = string(b)
		return err
	}}
	if err := operator.Backfill(ctx, db, op, nil); err != nil {
		t.Fatal(err)
	}
	want := `{"id":1,"t":["semi;colon","a,b"],"b":["(1,1),(0,0)","(2,2),(1,1)"],"p":["a,b","c|d","e;f"],"v":"1 2"}`
	if got != want {
		t.Fatalf("backfilled record %s\nwant %s", got, want)
	}
}
