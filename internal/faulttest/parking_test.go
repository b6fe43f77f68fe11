package faulttest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
)

const (
	parkChanges = 10000
	parkPhases  = 4
	parkPosts   = 20
	// parkPoisoned is the derived row that fails until the poison table is emptied.
	parkPoisoned = 7
	// parkPoisonFor is the least time the row fails.
	parkPoisonFor = 30 * time.Second
)

// parkSchema is the schema of the child's "parking" operator set; the trigger refuses
// both derived tables' row parkPoisoned while poison holds it, and comment_log (not
// followed) counts each post's comment inserts for tally's recomputation.
const parkSchema = `
CREATE TABLE comments (id bigint PRIMARY KEY, post_id bigint, body text);
CREATE INDEX ON comments (post_id);
ALTER TABLE comments REPLICA IDENTITY FULL;
CREATE TABLE comment_log (post_id bigint);
CREATE FUNCTION log_comment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO comment_log VALUES (NEW.post_id); RETURN NEW; END $$;
CREATE TRIGGER log_comment AFTER INSERT ON comments FOR EACH ROW EXECUTE FUNCTION log_comment();
CREATE TABLE post_counts (id bigint PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE tally (id bigint PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE poison (id bigint PRIMARY KEY);
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM poison WHERE id = NEW.id) THEN
		RAISE EXCEPTION '% row % is poisoned', TG_TABLE_NAME, NEW.id;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON post_counts FOR EACH ROW EXECUTE FUNCTION refuse_poison();
CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON tally FOR EACH ROW EXECUTE FUNCTION refuse_poison();`

// parkDerived compares each derived table with its recomputation: in both queries, %[1]s
// filters the derived ids and %[2]s the source rows' post_id. A post_counts row stays, with
// 0, once its post has no comments left.
var parkDerived = []struct{ name, got, want string }{
	{"post_counts", `SELECT id, n FROM post_counts WHERE %[1]s`,
		`SELECT post_id, count(*) FROM comments WHERE post_id IS NOT NULL AND %[2]s GROUP BY post_id
		UNION ALL SELECT id, 0 FROM post_counts WHERE %[1]s AND id NOT IN (SELECT post_id FROM comments WHERE post_id IS NOT NULL)`},
	{"tally", `SELECT id, n FROM tally WHERE %[1]s`, `SELECT post_id, count(*) FROM comment_log WHERE %[2]s GROUP BY post_id`},
}

// testParkingUnderKills runs two parking operators (a recomputed count and a one-by-one
// tally) in the child while a writer commits 10,000 comment changes and one derived row
// fails throughout; the child is SIGKILLed twice. Between phases, every other row equals
// its recomputation; the failing row's events are parked, not applied, and no operator
// halts. Once the cause is fixed and a retry requested, every row equals its
// recomputation: no parked event was lost or applied twice.
func testParkingUnderKills(t *testing.T, bin string) {
	dsn := pgtest.NewDatabase(t)
	slot := dbName(t, dsn)
	conn := connect(t, dsn)
	exec1(t, conn, parkSchema)
	exec1(t, conn, `INSERT INTO poison VALUES ($1)`, parkPoisoned)
	poisoned := time.Now()
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ledgerDir := t.TempDir()
	p := newPipeline(t, bin, dsn, ledgerDir, slot, "comments")
	p.args = append(p.args, "-operators", "parking", "-operator-batch-size", "50", "-operator-retry-min", "5ms")
	names := []string{"post_counts", "tally"}
	noHalt := func(c *child) {
		for name, r := range c.Operators() {
			if r.Halted {
				t.Fatalf("operator %s halted in pipeline run %d at position %d", name, c.n, r.Position)
			}
		}
	}

	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	wconn := connect(t, dsn)
	var nextID, written atomic.Int64
	// write commits n changes, ten per transaction: inserts, moves to another post, deletes.
	write := func(ctx context.Context, n int) error {
		for done := 0; done < n; {
			b := &pgx.Batch{}
			size := min(10, n-done)
			for range size {
				post := 1 + rng.Int64N(parkPosts)
				switch r := rng.IntN(10); {
				case r < 7 || nextID.Load() < 10:
					b.Queue(`INSERT INTO comments VALUES ($1, $2, 'c')`, nextID.Add(1), post)
				case r < 9:
					b.Queue(`UPDATE comments SET post_id = $2 WHERE id = $1`, 1+rng.Int64N(nextID.Load()), post)
				default:
					b.Queue(`DELETE FROM comments WHERE id = $1`, 1+rng.Int64N(nextID.Load()))
				}
			}
			done += size
			tx, err := wconn.Begin(ctx)
			if err != nil {
				return err
			}
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				_ = tx.Rollback(ctx)
				return err
			}
			if err := tx.Commit(ctx); err != nil {
				return err
			}
			written.Add(int64(size))
		}
		return nil
	}
	check := func(when string, all bool) {
		t.Helper()
		filter := fmt.Sprintf("id <> %d", parkPoisoned)
		if all {
			filter = "true"
		}
		for _, d := range parkDerived {
			got := fmt.Sprintf(d.got, filter, strings.ReplaceAll(filter, "id", "post_id"))
			want := fmt.Sprintf(d.want, filter, strings.ReplaceAll(filter, "id", "post_id"))
			extra, missing := exceptRows(t, conn, got, want), exceptRows(t, conn, want, got)
			if len(extra) > 0 || len(missing) > 0 {
				t.Fatalf("%s: %s differs from its recomputation: rows not in it %v, rows missing %v", when, d.name, extra, missing)
			}
		}
	}
	parked := func(name string) []operator.ParkedRow {
		t.Helper()
		rows, err := operator.Parked(t.Context(), pool, slot, name)
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}

	ctx := t.Context()
	perPhase := parkChanges / parkPhases
	kills := 0
	c := p.start()
	p.waitReady(c, 60*time.Second)
	for phase := range parkPhases {
		if phase == 1 || phase == 2 {
			// Kill the child in the middle of the phase's writes, and write on while it is
			// down.
			if err := write(ctx, perPhase/2); err != nil {
				t.Fatalf("writer: %v", err)
			}
			noHalt(c)
			p.kill(c)
			kills++
			waitSlotIdle(t, conn, slot)
			if err := write(ctx, perPhase/4); err != nil {
				t.Fatalf("writer: %v", err)
			}
			c = p.start()
			p.waitReady(c, 60*time.Second)
			if err := write(ctx, perPhase-perPhase/2-perPhase/4); err != nil {
				t.Fatalf("writer: %v", err)
			}
		} else if err := write(ctx, perPhase); err != nil {
			t.Fatalf("writer: %v", err)
		}
		waitOperatorsQuiet(t, p, c, conn, names, noHalt)
		check(fmt.Sprintf("after phase %d (%d changes, %d kills)", phase+1, written.Load(), kills), false)
		for _, name := range names {
			rows := parked(name)
			if len(rows) != 1 || rows[0].ID != fmt.Sprint(parkPoisoned) || !strings.Contains(rows[0].FirstError, "is poisoned") {
				t.Fatalf("after phase %d: %s's parked rows are %+v, want row %d alone", phase+1, name, rows, parkPoisoned)
			}
		}
	}
	// The row keeps failing for parkPoisonFor at least, while changes flow and every other
	// row is checked again.
	for round := 1; time.Since(poisoned) < parkPoisonFor; round++ {
		if err := write(ctx, 100); err != nil {
			t.Fatalf("writer: %v", err)
		}
		waitOperatorsQuiet(t, p, c, conn, names, noHalt)
		check(fmt.Sprintf("in extra round %d (%d changes)", round, written.Load()), false)
	}
	// The poisoned row lags: its events wait, parked.
	var stale bool
	if err := conn.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM tally WHERE id = $1 AND n = (SELECT count(*) FROM comment_log WHERE post_id = $1))`, parkPoisoned).Scan(&stale); err != nil || !stale {
		t.Fatalf("tally row %d is up to date although its events are parked (%v)", parkPoisoned, err)
	}

	// Fix the cause and retry: the running child applies the parked events once each.
	t.Logf("row %d failed for %s while %d changes were written and the child was killed %d times", parkPoisoned, time.Since(poisoned).Round(time.Millisecond), written.Load(), kills)
	exec1(t, conn, `DELETE FROM poison`)
	for _, name := range names {
		if _, err := operator.RequestRetry(ctx, pool, slot, name, ""); err != nil {
			t.Fatal(err)
		}
	}
	poll(t, time.Minute, "the parked events to be retried", func() (bool, string, error) {
		a, b := parked("post_counts"), parked("tally")
		return len(a)+len(b) == 0, fmt.Sprintf("parked: %+v %+v", a, b), nil
	})
	waitOperatorsQuiet(t, p, c, conn, names, noHalt)
	check("after the retry", true)
	p.stop(c)
}
