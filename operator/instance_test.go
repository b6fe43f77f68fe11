package operator_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/operator"
)

// instanceEnv is a database with a comments table and an operator deriving seen(id, n) from
// it, and memory ledgers the test writes itself (the rows and their events together).
type instanceEnv struct {
	t  *testing.T
	db *pgxpool.Pool
}

func newInstanceEnv(t *testing.T) *instanceEnv {
	t.Helper()
	db, err := pgxpool.New(t.Context(), pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := db.Exec(t.Context(), `CREATE TABLE comments (id int PRIMARY KEY);
		CREATE TABLE seen (id int PRIMARY KEY, n int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return &instanceEnv{t: t, db: db}
}

// seenOp recomputes seen.n, the number of comments with the id, for the event's id.
var seenOp = operator.SQL{Name: "seen", Target: "seen", Entities: []string{"comments"},
	Query: `INSERT INTO seen SELECT $1::int, (SELECT count(*) FROM comments WHERE id = $1::int)
		ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n`}

// seenMismatches counts the rows of seen that differ from a recomputation from comments,
// both ways: every id in comments or in seen must have its count.
const seenMismatches = `WITH ids AS (SELECT id FROM comments UNION SELECT id FROM seen),
	want AS (SELECT ids.id, (SELECT count(*) FROM comments c WHERE c.id = ids.id)::int AS n FROM ids)
	SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT id, n FROM seen) a) +
		(SELECT count(*) FROM (SELECT id, n FROM seen EXCEPT SELECT * FROM want) b)`

func (e *instanceEnv) int(sql string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow(e.t.Context(), sql, args...).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// testLedger is a memory ledger following slot, whose transactions start at LSN lsn.
type testLedger struct {
	*memory.Ledger
	lsn event.LSN
}

func (e *instanceEnv) ledger(slot string, lsn event.LSN) *testLedger {
	e.t.Helper()
	led := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	e.t.Cleanup(func() { led.Close() })
	if err := led.SetOrigin(e.t.Context(), ledger.Origin{SystemID: "7311", Timeline: 1, Database: "app", Slot: slot}); err != nil {
		e.t.Fatal(err)
	}
	return &testLedger{Ledger: led, lsn: lsn}
}

// insert inserts the comments and appends their events to led, one transaction each.
func (e *instanceEnv) insert(led *testLedger, ids ...int) {
	e.t.Helper()
	for _, id := range ids {
		if _, err := e.db.Exec(e.t.Context(), `INSERT INTO comments VALUES ($1)`, id); err != nil {
			e.t.Fatal(err)
		}
		e.mirror(led, id)
	}
}

// mirror appends to led the events insert appends for ids, without inserting the rows: a
// second view of a ledger that insert writes, made with the same slot and first LSN.
func (e *instanceEnv) mirror(led *testLedger, ids ...int) {
	e.t.Helper()
	for _, id := range ids {
		ledgertest.WriteTx(e.t, led, led.lsn, ledgertest.Event(led.lsn, 0, "comments", id))
		led.lsn++
		if err := led.Sync(e.t.Context()); err != nil {
			e.t.Fatal(err)
		}
	}
}

// run runs a runner of instance on led until stop is called or the test ends.
func (e *instanceEnv) run(instance string, led *testLedger) (r *operator.Runner, stop func()) {
	e.t.Helper()
	return e.runWith(operator.Config{Instance: instance, Ledger: led, Operators: []operator.Operator{seenOp}})
}

// runWith runs a runner of cfg on the database, with a 20ms ControlInterval and the test's
// logger unless cfg has one, until stop is called or the test ends.
func (e *instanceEnv) runWith(cfg operator.Config) (r *operator.Runner, stop func()) {
	e.t.Helper()
	cfg.DB, cfg.ControlInterval = e.db, 20*time.Millisecond
	if cfg.Logger == nil {
		cfg.Logger = testLogger(e.t)
	}
	r, err := operator.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	stopRun := startRunner(r)
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		if err := stopRun(); err != nil {
			e.t.Errorf("runner: %v", err)
		}
	}
	e.t.Cleanup(stop)
	return r, stop
}

// A checkpoint counts the events of one ledger. A runner on another ledger (the ledger
// moved aside for a resync and started again, or another slot's) halts the operator with
// ErrForeignLedger instead of skipping the new ledger's events up to the old position, and
// Reset rebuilds its rows and starts it over on the runner's ledger.
func TestForeignLedgerAndReset(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		slot string // of the second ledger
		ids  []int  // inserted into the second ledger before the runner starts
		want string
	}{
		{"a new ledger that passed the old position", "s", []int{10, 11, 12, 13, 14}, "the event at position 3 has LSN 100/2 in this ledger, but LSN 0/3 in the ledger its checkpoint"},
		{"a new ledger behind the old position", "s", []int{10}, "is past the ledger's head 1, so the ledger was replaced"},
		{"another slot's ledger", "other", []int{10, 11, 12, 13, 14}, "counts the events of ledger 7311/app/s, and this walflow reads ledger 7311/app/other"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newInstanceEnv(t)
			ctx := t.Context()
			old := e.ledger("s", 1)
			e.insert(old, 1, 2, 3)
			r, stop := e.run("s", old)
			waitFor(t, func() bool { return r.CommittedThrough("comments") == 3 && e.int(`SELECT count(*) FROM seen`) == 3 })
			stop()
			if got := e.int(`SELECT count(*) FROM walflow.operators WHERE instance = 's' AND name = 'seen' AND position = 3 AND ledger = '7311/app/s' AND mark_position = 3`); got != 1 {
				t.Fatal("the checkpoint does not record its ledger and event")
			}

			// While nothing follows: comment 2 goes, comment 4 comes. The new ledger holds
			// only what happens after it starts.
			if _, err := e.db.Exec(ctx, `DELETE FROM comments WHERE id = 2; INSERT INTO comments VALUES (4)`); err != nil {
				t.Fatal(err)
			}
			led := e.ledger(tt.slot, 0x100_0000_0000)
			e.insert(led, tt.ids...)
			r, _ = e.run("s", led)
			waitFor(t, func() bool { return statusOf(t, r, "seen").Halted })
			st := statusOf(t, r, "seen")
			if !strings.Contains(st.Error, tt.want) || !strings.Contains(st.Error, operator.ErrForeignLedger.Error()) ||
				!strings.Contains(st.Error, "walflow operator reset seen") || st.Position != 3 || st.FailedPosition != 0 {
				t.Fatalf("status on the new ledger = %+v, want a halt containing %q with the way out", st, tt.want)
			}
			if n := e.int(`SELECT count(*) FROM seen WHERE id >= 10`); n != 0 {
				t.Fatalf("the operator applied %d events of the new ledger from the old checkpoint", n)
			}
			if r.CommittedThrough("comments") != 0 {
				t.Fatalf("CommittedThrough = %d for an operator with nothing of this ledger applied", r.CommittedThrough("comments"))
			}
			if _, err := r.Skip(ctx, "seen"); !errors.Is(err, operator.ErrForeignLedger) {
				t.Fatalf("Skip of an operator halted on another ledger: %v, want ErrForeignLedger", err)
			}
			// Restarting without a reset halts it again.
			if err := r.Restart(ctx, "seen"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { s := statusOf(t, r, "seen"); return s.Halted && strings.Contains(s.Error, tt.want) })

			if err := r.Reset(ctx, "seen", &operator.BackfillOpts{BatchSize: 2}); err != nil {
				t.Fatal(err)
			}
			head := led.State().Head
			waitFor(t, func() bool { return r.CommittedThrough("comments") == head })
			e.insert(led, 20)
			waitFor(t, func() bool { return r.CommittedThrough("comments") == head+1 })
			if n := e.int(seenMismatches); n != 0 {
				t.Fatalf("after the reset, %d rows of seen differ from a recomputation", n)
			}
			if n := e.int(`SELECT n FROM seen WHERE id = 2`); n != 0 {
				t.Fatalf("seen for the comment deleted while nothing followed is %d, want 0", n)
			}
			st = statusOf(t, r, "seen")
			if st.Halted || st.Position != head+1 || st.Ledger != "7311/app/"+tt.slot {
				t.Fatalf("status after the reset = %+v, want running at %d on ledger 7311/app/%s", st, head+1, tt.slot)
			}
		})
	}
}

// Runners of two instances keep their own checkpoints in one database, even for operators
// of the same name: neither reads, moves nor halts the other's.
func TestInstancesShareDatabase(t *testing.T) {
	t.Parallel()
	e := newInstanceEnv(t)
	ctx := t.Context()
	a, b := e.ledger("a", 1), e.ledger("b", 0x100_0000_0000)
	e.insert(a, 1, 2, 3, 4, 5, 6)
	e.insert(b, 7)
	ra, _ := e.run("a", a)
	rb, _ := e.run("b", b)
	waitFor(t, func() bool { return ra.CommittedThrough("comments") == 6 && rb.CommittedThrough("comments") == 1 })
	e.insert(b, 8)
	e.insert(a, 9)
	waitFor(t, func() bool { return ra.CommittedThrough("comments") == 7 && rb.CommittedThrough("comments") == 2 })
	for _, c := range []struct {
		r        *operator.Runner
		instance string
		pos      event.Position
	}{{ra, "a", 7}, {rb, "b", 2}} {
		st := statusOf(t, c.r, "seen")
		if st.Halted || st.Position != c.pos || st.Instance != c.instance || st.Ledger != "7311/app/"+c.instance {
			t.Errorf("instance %s: status %+v, want running at %d", c.instance, st, c.pos)
		}
		all, err := operator.Statuses(ctx, e.db, c.instance)
		if err != nil || len(all) != 1 || all[0].Position != c.pos {
			t.Errorf("Statuses(%s) = %+v, %v", c.instance, all, err)
		}
	}
	insts, err := operator.Instances(ctx, e.db)
	if err != nil || len(insts) != 2 || insts[0] != (operator.InstanceCount{Instance: "a", Operators: 1}) || insts[1] != (operator.InstanceCount{Instance: "b", Operators: 1}) {
		t.Errorf("Instances = %+v, %v", insts, err)
	}
	if n := e.int(seenMismatches); n != 0 {
		t.Errorf("%d rows of seen differ from a recomputation", n)
	}
}

// A walflow.operators table made before instances is upgraded in place: its rows get the
// instance "" and the first runner of an instance with an operator of that name adopts its
// checkpoint, which it resumes after.
func TestUpgradeAdoptsCheckpoints(t *testing.T) {
	t.Parallel()
	e := newInstanceEnv(t)
	ctx := t.Context()
	if _, err := e.db.Exec(ctx, `CREATE SCHEMA walflow;
		CREATE TABLE walflow.operators (name text PRIMARY KEY, position bigint NOT NULL DEFAULT 0, halted boolean NOT NULL DEFAULT false,
			error text, failed_position bigint, updated_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO walflow.operators (name, position) VALUES ('seen', 2), ('gone', 9)`); err != nil {
		t.Fatal(err)
	}
	led := e.ledger("s", 1)
	e.insert(led, 1, 2, 3)
	r, _ := e.run("s", led)
	waitFor(t, func() bool { return r.CommittedThrough("comments") == 3 })
	// Resumed after the adopted checkpoint 2: only comment 3 was applied.
	if n := e.int(`SELECT count(*) FROM seen`); n != 1 {
		t.Fatalf("seen has %d rows, want only comment 3's: the adopted checkpoint was 2", n)
	}
	if st := statusOf(t, r, "seen"); st.Instance != "s" || st.Position != 3 {
		t.Fatalf("status after the upgrade = %+v", st)
	}
	legacy, err := operator.Statuses(ctx, e.db, "")
	if err != nil || len(legacy) != 1 || legacy[0].Name != "gone" || legacy[0].Position != 9 {
		t.Fatalf("checkpoints left without an instance: %+v, %v; want gone's, which no instance has", legacy, err)
	}
}

// An operator whose entities saw no event moves its checkpoint with Checkpoint only; that
// checkpoint is marked with an event of the ledger too, so a new ledger that passed its
// position still halts it instead of skipping the new ledger's events of its entities.
func TestForeignLedgerIdleOperator(t *testing.T) {
	t.Parallel()
	e := newInstanceEnv(t)
	ctx := t.Context()
	old := e.ledger("s", 1)
	for i := range 4 {
		ledgertest.WriteTx(t, old, old.lsn, ledgertest.Event(old.lsn, 0, "posts", i+1))
		old.lsn++
	}
	if err := old.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	r, stop := e.run("s", old)
	waitFor(t, func() bool { return r.CommittedThrough("comments") == 4 })
	if p, err := r.Checkpoint(ctx); err != nil || p != 4 {
		t.Fatalf("Checkpoint = %d, %v; want 4", p, err)
	}
	stop()

	led := e.ledger("s", 0x100_0000_0000)
	e.insert(led, 10, 11, 12, 13, 14, 15)
	r, _ = e.run("s", led)
	waitFor(t, func() bool { return statusOf(t, r, "seen").Halted })
	if st := statusOf(t, r, "seen"); !strings.Contains(st.Error, "the event at position 4 has LSN 100/3 in this ledger, but LSN 0/4") {
		t.Fatalf("status on the new ledger = %+v", st)
	}
	if n := e.int(`SELECT count(*) FROM seen`); n != 0 {
		t.Fatalf("the operator applied %d events of the new ledger from the old checkpoint", n)
	}
}

// On a shared ledger (Config.SharedLedger: the stream of a cluster, which each node reads at
// its own pace), a checkpoint past this runner's view of the ledger means the view lags,
// not that the ledger was replaced: the runner waits for the view, longer than
// ledger.CatchUpWait if need be, logging that it waits, and neither halts the operator
// nor stores a halt. Once the view catches up, the operator resumes after the checkpoint
// and applies each later event once.
func TestSharedLedgerViewLags(t *testing.T) {
	t.Parallel()
	e := newInstanceEnv(t)
	if _, err := e.db.Exec(t.Context(), `CREATE TABLE applied (position bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	// tally records every event it applies: a second application shows as a second row.
	tally := operator.Func{Name: "tally", Entities: []string{"comments"}, Targets: []string{"applied"},
		Handle: func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
			_, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1)`, int64(ev.Position))
			return err
		}}
	ops := []operator.Operator{seenOp, tally}
	front := e.ledger("s", 1) // the view of the node that ran the operators
	view := e.ledger("s", 1)  // this node's view of the same stream, which lags
	e.insert(front, 1, 2, 3)
	e.mirror(view, 1)
	r, stop := e.runWith(operator.Config{Instance: "s", Ledger: front, Operators: ops, SharedLedger: true})
	waitFor(t, func() bool { return r.CommittedThrough("comments") == 3 })
	stop()

	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, _ = e.runWith(operator.Config{Instance: "s", Ledger: view, Operators: ops, SharedLedger: true, Logger: log})
	waitFor(t, r.Loaded)
	// Longer than a runner waits for an unshared ledger before it halts the operators.
	for end := time.Now().Add(ledger.CatchUpWait + 2*time.Second); time.Now().Before(end); {
		if n := e.int(`SELECT count(*) FROM walflow.operators WHERE instance = 's' AND (halted OR position <> 3)`); n != 0 {
			t.Fatalf("%d operators' checkpoints were halted or moved while this view of the ledger lagged", n)
		}
		for _, name := range []string{"seen", "tally"} {
			if st := statusOf(t, r, name); st.Halted {
				t.Fatalf("operator %s halted while this view of the ledger lagged: %+v", name, st)
			}
		}
		if got := r.CommittedThrough("comments"); got != 3 {
			t.Fatalf("CommittedThrough = %d while waiting, want the stored checkpoint 3", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The first log of the wait is due LagLogEvery after it began: poll, as a loaded
	// machine may run the runner's round late.
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), "waits for this node's view of the shared ledger") && strings.Contains(logs.String(), "checkpoint=3 head=1")
	})

	e.insert(front, 4)
	e.mirror(view, 2, 3, 4)
	waitFor(t, func() bool { return r.CommittedThrough("comments") == 4 })
	if n, distinct := e.int(`SELECT count(*) FROM applied`), e.int(`SELECT count(DISTINCT position) FROM applied`); n != 4 || distinct != 4 {
		t.Fatalf("applied holds %d rows for %d positions, want each of the 4 events once", n, distinct)
	}
	if n := e.int(seenMismatches); n != 0 {
		t.Fatalf("%d rows of seen differ from a recomputation", n)
	}
	if n := e.int(`SELECT count(*) FROM walflow.operators WHERE instance = 's' AND (halted OR position <> 4)`); n != 0 {
		t.Fatalf("%d operators' checkpoints are halted or not at 4 after the view caught up", n)
	}
}
