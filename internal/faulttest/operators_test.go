package faulttest

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
)

const (
	opCrashKills   = 30
	opCrashChanges = 50000
	// opCrashBatch is the child's operator batch size: smaller than the default, so that
	// the kills land among more operator transactions.
	opCrashBatch = 50
)

// opCrashSchema is the schema of the child's "blog" operator set
// (internal/testcmd/pipeline/operators.go).
const opCrashSchema = `
CREATE TABLE posts (id bigint PRIMARY KEY, title text, body text,
	inserted_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint, body text);
CREATE INDEX ON comments (post_id);
CREATE TABLE ratings (id bigint PRIMARY KEY, post_id bigint, stars int NOT NULL);
CREATE INDEX ON ratings (post_id);
ALTER TABLE posts REPLICA IDENTITY FULL;
ALTER TABLE comments REPLICA IDENTITY FULL;
ALTER TABLE ratings REPLICA IDENTITY FULL;

CREATE TABLE post_with_comments_counts (id bigint PRIMARY KEY, title text, body text,
	inserted_at timestamptz, updated_at timestamptz, comments_count int);
CREATE TABLE post_ratings (id bigint PRIMARY KEY, ratings_count bigint NOT NULL,
	stars_sum bigint NOT NULL, stars_avg numeric NOT NULL);
CREATE TABLE post_stats (id bigint PRIMARY KEY, comments_count int NOT NULL,
	ratings_count bigint NOT NULL, stars_avg numeric, is_popular bool NOT NULL);
CREATE TABLE applied (position bigint PRIMARY KEY, lsn pg_lsn NOT NULL, ordinal int NOT NULL,
	entity text NOT NULL, type text NOT NULL, row_id bigint NOT NULL, times int NOT NULL DEFAULT 1);`

// The followed tables: the sources and the two derived tables post_stats listens to.
const opCrashTablesFlag = "posts,comments,ratings,post_with_comments_counts,post_ratings"

var opCrashTables = []channel.Table{{Name: "posts"}, {Name: "comments"}, {Name: "ratings"},
	{Name: "post_with_comments_counts"}, {Name: "post_ratings"}}

// opCrashOperators are the blog set's operators and the entities each listens to.
var opCrashOperators = map[string][]string{
	"post_with_comments_counts": {"comments", "posts"},
	"post_ratings":              {"ratings"},
	"post_stats":                {"post_with_comments_counts", "post_ratings"},
	"applied":                   {"comments", "ratings"},
}

// opCrashDerived compares each derived table with its recomputation from the source tables.
var opCrashDerived = []struct{ table, got, want string }{
	{"post_with_comments_counts",
		`SELECT id, title, body, inserted_at, updated_at, comments_count FROM post_with_comments_counts`,
		`SELECT p.id, p.title, p.body, p.inserted_at, p.updated_at,
			(SELECT count(*) FROM comments c WHERE c.post_id = p.id)::int
		FROM posts p`},
	{"post_ratings",
		`SELECT id, ratings_count, stars_sum, stars_avg FROM post_ratings`,
		`SELECT post_id, count(*), sum(stars), avg(stars) FROM ratings WHERE post_id IS NOT NULL GROUP BY post_id`},
	{"post_stats",
		`SELECT id, comments_count, ratings_count, stars_avg, is_popular FROM post_stats`,
		`SELECT p.id, cc.n::int, coalesce(r.n, 0), r.avg, cc.n >= 3 OR coalesce(r.avg, 0) >= 4
		FROM posts p
		CROSS JOIN LATERAL (SELECT count(*) AS n FROM comments c WHERE c.post_id = p.id) cc
		LEFT JOIN LATERAL (SELECT count(*) AS n, avg(stars) AS avg FROM ratings r WHERE r.post_id = p.id HAVING count(*) > 0) r ON true`},
}

// relation is a writer's view of a table's live rows and the post each points to (0 for
// NULL), with every change recorded for an undo.
type relation struct {
	rows     *idSet
	parent   map[int64]int64
	children map[int64]map[int64]bool
	undo     *[]func()
}

func newRelation(undo *[]func()) *relation {
	return &relation{rows: newIDSet(), parent: map[int64]int64{}, children: map[int64]map[int64]bool{}, undo: undo}
}

func (r *relation) link(id, parent int64) {
	r.parent[id] = parent
	if r.children[parent] == nil {
		r.children[parent] = map[int64]bool{}
	}
	r.children[parent][id] = true
}

func (r *relation) unlink(id int64) {
	p := r.parent[id]
	delete(r.children[p], id)
	if len(r.children[p]) == 0 {
		delete(r.children, p)
	}
	delete(r.parent, id)
}

func (r *relation) add(id, parent int64) {
	r.rows.add(id)
	r.link(id, parent)
	*r.undo = append(*r.undo, func() { r.unlink(id); r.rows.remove(id) })
}

func (r *relation) remove(id int64) {
	p := r.parent[id]
	r.unlink(id)
	r.rows.remove(id)
	*r.undo = append(*r.undo, func() { r.rows.add(id); r.link(id, p) })
}

func (r *relation) move(id, parent int64) {
	p := r.parent[id]
	r.unlink(id)
	r.link(id, parent)
	*r.undo = append(*r.undo, func() { r.unlink(id); r.link(id, p) })
}

// of returns the rows pointing to parent.
func (r *relation) of(parent int64) []int64 {
	return slices.Sorted(maps.Keys(r.children[parent]))
}

func (r *relation) pick(rng *rand.Rand) (int64, bool) {
	if len(r.rows.ids) == 0 {
		return 0, false
	}
	return r.rows.ids[rng.IntN(len(r.rows.ids))], true
}

// blogWriter commits random changes to posts, comments and ratings: inserts, edits,
// deletes (of a post with or without its comments and ratings), comments and ratings
// moved from post to post (or to no post, or to a post that does not exist), in
// transactions of random size, a few of them rolled back.
type blogWriter struct {
	conn  *pgx.Conn
	rng   *rand.Rand
	next  int64 // the last id handed out, for any table
	undo  []func()
	posts *relation
	comms *relation
	rates *relation

	txs, rolledBack, statements int
	kinds                       map[string]int
}

func newBlogWriter(conn *pgx.Conn, seed uint64) *blogWriter {
	w := &blogWriter{conn: conn, rng: rand.New(rand.NewPCG(seed, 1)), kinds: map[string]int{}}
	w.posts, w.comms, w.rates = newRelation(&w.undo), newRelation(&w.undo), newRelation(&w.undo)
	return w
}

// stmt is one queued statement and the rows it must change (-1: any number).
type blogStmt struct {
	kind string
	rows int64
}

// post picks the post a comment or rating points to: mostly a live one, sometimes none
// (NULL, as 0) or an id that is no live post.
func (w *blogWriter) post() int64 {
	switch r := w.rng.IntN(50); {
	case r == 0:
		return 0
	case r <= 2 || len(w.posts.rows.ids) == 0:
		return 1 + w.rng.Int64N(w.next+1)
	default:
		id, _ := w.posts.pick(w.rng)
		return id
	}
}

func nullable(id int64) any {
	if id == 0 {
		return nil
	}
	return id
}

func (w *blogWriter) text(prefix string) string {
	return fmt.Sprintf("%s %d %s", prefix, w.rng.IntN(1_000_000), strings.Repeat("x", w.rng.IntN(60)))
}

// queue adds one random change to b and applies it to the writer's view.
func (w *blogWriter) queue(b *pgx.Batch) blogStmt {
	r := w.rng.IntN(100)
	post, havePost := w.posts.pick(w.rng)
	comment, haveComment := w.comms.pick(w.rng)
	rating, haveRating := w.rates.pick(w.rng)
	switch {
	case r < 6 && havePost:
		if w.rng.IntN(3) == 0 {
			b.Queue(`UPDATE posts SET title = $2, body = $3, updated_at = now() WHERE id = $1`, post, w.text("title"), w.text("body"))
		} else {
			b.Queue(`UPDATE posts SET title = $2, updated_at = now() WHERE id = $1`, post, w.text("title"))
		}
		return blogStmt{"edit post", 1}
	case r < 9 && havePost:
		if w.rng.IntN(2) == 0 {
			b.Queue(`WITH c AS (DELETE FROM comments WHERE post_id = $1), r AS (DELETE FROM ratings WHERE post_id = $1)
				DELETE FROM posts WHERE id = $1`, post)
			for _, id := range w.comms.of(post) {
				w.comms.remove(id)
			}
			for _, id := range w.rates.of(post) {
				w.rates.remove(id)
			}
			w.posts.remove(post)
			return blogStmt{"delete post with its comments and ratings", 1}
		}
		b.Queue(`DELETE FROM posts WHERE id = $1`, post)
		w.posts.remove(post)
		return blogStmt{"delete post", 1}
	case r < 34:
		w.next++
		p := w.post()
		b.Queue(`INSERT INTO comments (id, post_id, body) VALUES ($1, $2, $3)`, w.next, nullable(p), w.text("comment"))
		w.comms.add(w.next, p)
		return blogStmt{"insert comment", 1}
	case r < 42 && haveComment:
		b.Queue(`UPDATE comments SET body = $2 WHERE id = $1`, comment, w.text("edited"))
		return blogStmt{"edit comment", 1}
	case r < 52 && haveComment:
		p := w.post()
		b.Queue(`UPDATE comments SET post_id = $2 WHERE id = $1`, comment, nullable(p))
		w.comms.move(comment, p)
		return blogStmt{"move comment", 1}
	case r < 60 && haveComment:
		b.Queue(`DELETE FROM comments WHERE id = $1`, comment)
		w.comms.remove(comment)
		return blogStmt{"delete comment", 1}
	case r < 61 && havePost:
		to := w.post()
		if to == post {
			to = 0
		}
		ids := w.comms.of(post)
		b.Queue(`UPDATE comments SET post_id = $2 WHERE post_id = $1`, post, nullable(to))
		for _, id := range ids {
			w.comms.move(id, to)
		}
		return blogStmt{"move every comment of a post", int64(len(ids))}
	case r < 63 && havePost:
		b.Queue(`UPDATE comments SET body = body || '+' WHERE post_id = $1`, post)
		return blogStmt{"edit every comment of a post", int64(len(w.comms.of(post)))}
	case r < 75:
		w.next++
		p := w.post()
		b.Queue(`INSERT INTO ratings (id, post_id, stars) VALUES ($1, $2, $3)`, w.next, nullable(p), 1+w.rng.IntN(5))
		w.rates.add(w.next, p)
		return blogStmt{"insert rating", 1}
	case r < 82 && haveRating:
		b.Queue(`UPDATE ratings SET stars = $2 WHERE id = $1`, rating, 1+w.rng.IntN(5))
		return blogStmt{"change stars", 1}
	case r < 87 && haveRating:
		p := w.post()
		b.Queue(`UPDATE ratings SET post_id = $2 WHERE id = $1`, rating, nullable(p))
		w.rates.move(rating, p)
		return blogStmt{"move rating", 1}
	case r < 92 && haveRating:
		b.Queue(`DELETE FROM ratings WHERE id = $1`, rating)
		w.rates.remove(rating)
		return blogStmt{"delete rating", 1}
	default:
		w.next++
		b.Queue(`INSERT INTO posts (id, title, body) VALUES ($1, $2, $3)`, w.next, w.text("title"), w.text("body"))
		w.posts.add(w.next, 0)
		return blogStmt{"insert post", 1}
	}
}

// run writes until the budget is used up.
func (w *blogWriter) run(ctx context.Context, b *budget) error {
	for {
		n, err := b.take(ctx, randomTxSize(w.rng))
		if err != nil || n == 0 {
			return err
		}
		rollback := w.rng.IntN(40) == 0
		if err := w.tx(ctx, n, rollback); err != nil {
			return err
		}
		if rollback {
			b.giveBack(n)
			continue
		}
		b.commit(n, 0)
	}
}

// tx commits (or rolls back) one transaction of n changes, sent in one round trip.
func (w *blogWriter) tx(ctx context.Context, n int, rollback bool) (err error) {
	w.undo = w.undo[:0]
	var batch pgx.Batch
	stmts := make([]blogStmt, n)
	for i := range stmts {
		stmts[i] = w.queue(&batch)
	}
	dbtx, err := w.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("writer: begin: %w", err)
	}
	defer func() {
		if err != nil || rollback {
			if rerr := dbtx.Rollback(context.WithoutCancel(ctx)); err == nil && rerr != nil {
				err = fmt.Errorf("writer: rollback: %w", rerr)
			}
			for i := len(w.undo) - 1; i >= 0; i-- {
				w.undo[i]()
			}
		}
	}()
	br := dbtx.SendBatch(ctx, &batch)
	for _, s := range stmts {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return fmt.Errorf("writer: %s: %w", s.kind, err)
		}
		if s.rows >= 0 && tag.RowsAffected() != s.rows {
			br.Close()
			return fmt.Errorf("writer: %s changed %d rows, want %d", s.kind, tag.RowsAffected(), s.rows)
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("writer: batch: %w", err)
	}
	if rollback {
		w.rolledBack++
		return nil
	}
	if err := dbtx.Commit(ctx); err != nil {
		return fmt.Errorf("writer: commit: %w", err)
	}
	w.txs++
	w.statements += n
	for _, s := range stmts {
		w.kinds[s.kind]++
	}
	return nil
}

// storedCheckpoints reads walflow.operators, empty before the first run created it.
func storedCheckpoints(t *testing.T, conn *pgx.Conn) map[string]opReport {
	t.Helper()
	var exists bool
	if err := conn.QueryRow(t.Context(), `SELECT to_regclass('walflow.operators') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	out := map[string]opReport{}
	if !exists {
		return out
	}
	rows, err := conn.Query(t.Context(), `SELECT name, position, halted FROM walflow.operators`)
	if err != nil {
		t.Fatal(err)
	}
	var name string
	var pos int64
	var r opReport
	if _, err := pgx.ForEachRow(rows, []any{&name, &pos, &r.Halted}, func() error {
		r.Position = event.Position(pos)
		out[name] = r
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// testOperatorCrashConsistency runs the blog operators in the child (a comments count, a
// ratings sum and average, a table derived from both derived tables, and a per-event
// effect counter) while a writer commits 50,000 random changes, SIGKILLs the child at 30
// random moments and restarts it, and checks at the end that every derived table equals its
// recomputation from the source tables, that each comments and ratings event was applied
// exactly once, and that no operator halted.
func testOperatorCrashConsistency(t *testing.T, bin string) {
	dsn := pgtest.NewDatabase(t)
	slot := dbName(t, dsn)
	conn := connect(t, dsn)
	exec1(t, conn, opCrashSchema)
	ledgerDir := t.TempDir()
	p := newPipeline(t, bin, dsn, ledgerDir, slot, opCrashTablesFlag)
	p.args = append(p.args, "-operators", "blog", "-operator-batch-size", fmt.Sprint(opCrashBatch))
	names := slices.Sorted(maps.Keys(opCrashOperators))

	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	perRun := opCrashChanges / opCrashKills
	bud := newBudget(opCrashChanges)

	w := newBlogWriter(connect(t, dsn), seed)
	ws := startBudgetWriters(t, bud, w.run)

	// noHalt fails the test as soon as the child reports a halted operator.
	noHalt := func(c *child) {
		for name, r := range c.Operators() {
			if r.Halted {
				t.Fatalf("operator %s halted in pipeline run %d at position %d", name, c.n, r.Position)
			}
		}
	}
	var points []string
	kinds := map[string]int{}
	for i := range opCrashKills {
		if i > 0 {
			// Half of each run's share of the writes is made while the pipeline is down.
			ws.waitBacklog(t, i*perRun+perRun/2)
		}
		stored := storedCheckpoints(t, conn)
		c := p.start()
		kind := ""
		switch r := rng.IntN(8); {
		case i > 0 && r < 2:
			// During start-up: opening the ledger, starting replication, registering and
			// loading the operators.
			kind = "start-up"
			bud.raise((i + 1) * perRun)
			waitOrExit(t, p, c, time.Duration(rng.Int64N(int64(crashMaxKillDelay))))
		default:
			p.waitReady(c, 60*time.Second)
			bud.raise((i + 1) * perRun)
			from := c.State().Head
			p.waitState(c, 2*time.Minute, "the run to make progress", func(s childState) bool { return s.Head > from })
			kind = "streaming"
			if r < 5 {
				// Once an operator has moved in this run, so that the kill comes among
				// operator transactions.
				kind = "operators"
				p.waitChild(c, 2*time.Minute, "an operator to move", func() (bool, string) {
					noHalt(c)
					ops := c.Operators()
					for _, name := range names {
						if ops[name].Position > stored[name].Position {
							return true, ""
						}
					}
					return false, fmt.Sprintf("operators %v, stored checkpoints %v", ops, stored)
				})
			}
			waitOrExit(t, p, c, time.Duration(rng.Int64N(int64(crashMaxKillDelay))))
		}
		ws.checkFailed(t)
		noHalt(c)
		st, ops := c.State(), c.Operators()
		p.kill(c)
		kinds[kind]++
		lag := "-"
		if len(ops) == len(names) {
			low := st.Head
			for _, r := range ops {
				low = min(low, r.Position)
			}
			lag = fmt.Sprint(st.Head - low)
		}
		points = append(points, fmt.Sprintf("%s:%d/%s", kind, st.Head, lag))
		waitSlotIdle(t, conn, slot)
	}

	// The last run catches up with everything, then stops gracefully.
	bud.raise(opCrashChanges)
	c := p.start()
	p.waitReady(c, 60*time.Second)
	ws.waitDone(t)
	caughtUp := time.Now()
	quiet := waitOperatorsQuiet(t, p, c, conn, names, noHalt)
	p.stop(c)
	final := c.State()
	if final.Head != quiet.Head {
		t.Fatalf("the ledger grew from %d to %d after the operators were done", quiet.Head, final.Head)
	}
	t.Logf("%d kills %v; at each, kind:ledger head/how far the slowest operator was behind it: %s",
		opCrashKills, kinds, strings.Join(points, " "))
	t.Logf("writer: %d transactions (%d rolled back), %d changes: %v; operators caught up %s after the writer finished, at ledger head %d",
		w.txs, w.rolledBack, w.statements, w.kinds, time.Since(caughtUp).Round(time.Millisecond), final.Head)
	retries, halts := 0, 0
	for i := 1; i <= p.runs; i++ {
		log := p.log(i)
		retries += strings.Count(log, "operator failed; retrying")
		halts += strings.Count(log, "operator halted")
	}
	if halts > 0 {
		t.Errorf("the pipeline logs report %d operator halts", halts)
	}
	if retries > 0 {
		t.Logf("the pipeline logs report %d operator retries", retries)
	}

	verifyOperators(t, conn, ledgerDir, final.Head)
}

// waitOperatorsQuiet waits until the ledger holds every committed change and every
// operator has committed through the ledger's head, with no event coming from their own
// effects any more (derived tables feed post_stats through the WAL).
func waitOperatorsQuiet(t *testing.T, p *pipeline, c *child, conn *pgx.Conn, names []string, noHalt func(*child)) childState {
	t.Helper()
	for round := 1; ; round++ {
		target := currentLSN(t, conn)
		s := p.waitState(c, 3*time.Minute, "the ledger to catch up with "+target.String(), func(s childState) bool { return s.Acked >= target })
		p.waitChild(c, 3*time.Minute, fmt.Sprintf("the operators to commit through ledger position %d", s.Head), func() (bool, string) {
			noHalt(c)
			ops := c.Operators()
			for _, name := range names {
				if r, ok := ops[name]; !ok || r.Position < s.Head {
					return false, fmt.Sprintf("operators %v", ops)
				}
			}
			return true, ""
		})
		// Their effects committed before target; if the ledger has nothing new once it
		// has caught up with it, nothing else is coming.
		target = currentLSN(t, conn)
		s2 := p.waitState(c, 3*time.Minute, "the ledger to catch up with "+target.String(), func(s childState) bool { return s.Acked >= target })
		if s2.Head == s.Head {
			return s2
		}
		if round == 20 {
			t.Fatalf("the ledger still grows after %d rounds of waiting for the operators (head %d)", round, s2.Head)
		}
	}
}

// appliedRow is an applied row: one application of a comments or ratings event.
type appliedRow struct {
	lsn          event.LSN
	ordinal      uint32
	entity, typ  string
	rowID, times int64
}

// verifyOperators checks the operators' stored checkpoints and the effect counter against
// the ledger, and every derived table against its recomputation.
func verifyOperators(t *testing.T, conn *pgx.Conn, ledgerDir string, head event.Position) {
	t.Helper()
	last := map[string]event.Position{}
	perEntity := map[string]int{}
	want := map[event.Position]appliedRow{}
	n := scanLedger(t, ledgerDir, opCrashTables, func(e *event.Event) {
		last[e.Name] = e.Position
		perEntity[e.Name]++
		if e.Name == "comments" || e.Name == "ratings" {
			want[e.Position] = appliedRow{lsn: e.LSN, ordinal: e.Ordinal, entity: e.Name, typ: e.Type.String(), rowID: idOf(t, e, "id"), times: 1}
		}
	})
	if event.Position(n) != head {
		t.Fatalf("the ledger holds %d events, the last run reported head %d", n, head)
	}
	t.Logf("ledger: %d events: %v", n, perEntity)
	for _, table := range []string{"posts", "comments", "ratings", "post_with_comments_counts", "post_ratings"} {
		if perEntity[table] == 0 {
			t.Fatalf("the ledger has no event of %s", table)
		}
	}

	// Checkpoints: none halted, each through the last event of its entities, none past
	// the ledger's head.
	rows, err := conn.Query(t.Context(), `SELECT name, position, halted, coalesce(error, '') FROM walflow.operators ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	type stored struct {
		name   string
		pos    int64
		halted bool
		err    string
	}
	var cps []stored
	var cp stored
	if _, err := pgx.ForEachRow(rows, []any{&cp.name, &cp.pos, &cp.halted, &cp.err}, func() error {
		cps = append(cps, cp)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(cps) != len(opCrashOperators) {
		t.Fatalf("walflow.operators has %d rows, want %d: %+v", len(cps), len(opCrashOperators), cps)
	}
	var summary []string
	for _, cp := range cps {
		entities, ok := opCrashOperators[cp.name]
		if !ok {
			t.Fatalf("walflow.operators has an unknown operator %q", cp.name)
		}
		if cp.halted || cp.err != "" {
			t.Errorf("operator %s halted=%t error %q", cp.name, cp.halted, cp.err)
		}
		var need event.Position
		for _, e := range entities {
			need = max(need, last[e])
		}
		if event.Position(cp.pos) < need || event.Position(cp.pos) > head {
			t.Errorf("operator %s's checkpoint is %d; its entities' last event is at %d and the ledger's head at %d", cp.name, cp.pos, need, head)
		}
		summary = append(summary, fmt.Sprintf("%s=%d(last event %d)", cp.name, cp.pos, need))
	}
	t.Logf("checkpoints: %s", strings.Join(summary, " "))

	// The effect counter: one application of each comments and ratings event, no more, no
	// other.
	rows, err = conn.Query(t.Context(), `SELECT position, lsn::text, ordinal, entity, type, row_id, times FROM applied`)
	if err != nil {
		t.Fatal(err)
	}
	var pos, ordinal int64
	var lsn string
	var a appliedRow
	got := 0
	var problems []string
	if _, err := pgx.ForEachRow(rows, []any{&pos, &lsn, &ordinal, &a.entity, &a.typ, &a.rowID, &a.times}, func() error {
		got++
		var err error
		if a.lsn, err = event.ParseLSN(lsn); err != nil {
			return err
		}
		a.ordinal = uint32(ordinal)
		w, ok := want[event.Position(pos)]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("position %d (%+v) is no comments or ratings event of the ledger", pos, a))
		case a.times != 1:
			problems = append(problems, fmt.Sprintf("event %d (%s %s %d) applied %d times", pos, a.typ, a.entity, a.rowID, a.times))
		case a != w:
			problems = append(problems, fmt.Sprintf("position %d: applied %+v, the ledger holds %+v", pos, a, w))
		}
		delete(want, event.Position(pos))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for p, w := range want {
		problems = append(problems, fmt.Sprintf("event %d (%s %s %d) never applied", p, w.typ, w.entity, w.rowID))
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		t.Errorf("effect counter: %d problems among %d rows, e.g.:\n%s", len(problems), got, strings.Join(problems[:min(len(problems), 10)], "\n"))
	} else {
		t.Logf("effect counter: each of the %d comments and ratings events applied exactly once", got)
	}

	// Derived tables against their recomputation, both ways.
	for _, d := range opCrashDerived {
		extra := exceptRows(t, conn, d.got, d.want)
		missing := exceptRows(t, conn, d.want, d.got)
		var rowsN int
		if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM "+d.table).Scan(&rowsN); err != nil {
			t.Fatal(err)
		}
		if len(extra) > 0 || len(missing) > 0 {
			t.Errorf("%s (%d rows) differs from its recomputation: %d rows not in it, e.g. %v; %d rows missing, e.g. %v",
				d.table, rowsN, len(extra), extra[:min(len(extra), 5)], len(missing), missing[:min(len(missing), 5)])
			continue
		}
		if rowsN == 0 {
			t.Errorf("%s is empty", d.table)
		}
		t.Logf("%s equals its recomputation (%d rows)", d.table, rowsN)
	}
}

// exceptRows returns the rows of a EXCEPT ALL b, as text.
func exceptRows(t *testing.T, conn *pgx.Conn, a, b string) []string {
	t.Helper()
	q := "SELECT d::text FROM ((" + a + ") EXCEPT ALL (" + b + ")) d ORDER BY 1"
	rows, err := conn.Query(t.Context(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}
