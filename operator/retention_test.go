package operator_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/retry"
)

// ledgerEnv is a runner's database with a memory ledger the test writes itself.
type ledgerEnv struct {
	t   *testing.T
	db  *pgxpool.Pool
	led *memory.Ledger
	lsn event.LSN
}

func newLedgerEnv(t *testing.T) *ledgerEnv {
	t.Helper()
	db, err := pgxpool.New(t.Context(), pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := db.Exec(t.Context(), `CREATE TABLE effects (op text, comment_id int, PRIMARY KEY (op, comment_id))`); err != nil {
		t.Fatal(err)
	}
	if err := operator.Migrate(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	led := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	t.Cleanup(func() { led.Close() })
	return &ledgerEnv{t: t, db: db, led: led, lsn: 1}
}

// write appends one transaction of events of table with the given ids and syncs it.
func (e *ledgerEnv) write(table string, ids ...int) {
	e.t.Helper()
	var es []*event.Event
	for i, id := range ids {
		es = append(es, ledgertest.Event(e.lsn, uint32(i), table, id))
	}
	ledgertest.WriteTx(e.t, e.led, e.lsn, es...)
	e.lsn++
	if err := e.led.Sync(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
}

// run starts a runner of ops on the ledger until the test ends.
func (e *ledgerEnv) run(rep retry.Reporter, ops ...operator.Operator) *operator.Runner {
	e.t.Helper()
	r, err := operator.New(operator.Config{DB: e.db, Ledger: e.led, Operators: ops, Reporter: rep,
		SleepFunc: (&fakeSleep{}).sleep, Retry: retry.Policy{MaxRetries: 1},
		ControlInterval: 50 * time.Millisecond, Logger: testLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	runUntilEnd(e.t, r)
	return r
}

// effects returns the comment ids op applied, in order.
func (e *ledgerEnv) effects(op string) string {
	e.t.Helper()
	var ids string
	err := e.db.QueryRow(e.t.Context(), `SELECT coalesce(string_agg(comment_id::text, ' ' ORDER BY comment_id), '') FROM effects WHERE op = $1`, op).Scan(&ids)
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// recordComments records each comment it is given, and fails on comment 99.
func recordComments(name string) operator.Func {
	return operator.Func{Name: name, Entities: []string{"comments"}, Handle: func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
		id, _ := ev.ID("id")
		if id.String() == "99" {
			return errors.New("cannot handle comment 99")
		}
		_, err := tx.Exec(ctx, `INSERT INTO effects VALUES ($1, $2)`, name, id.String())
		return err
	}}
}

// TestCheckpointSavesIdleProgress: an operator whose entity sees no events moves on in
// memory only; Checkpoint stores that progress and reports the lowest checkpoint, which a
// halted operator holds back.
func TestCheckpointSavesIdleProgress(t *testing.T) {
	t.Parallel()
	e := newLedgerEnv(t)
	ctx := t.Context()
	rep := &recorder{halted: make(chan event.Position, 1)}
	e.write("posts", 1, 2, 3, 4, 5) // positions 1..5, none listened to
	r := e.run(rep, recordComments("idle"))
	waitFor(t, func() bool { return r.CommittedThrough("comments") == 5 })
	if st := statusOf(t, r, "idle"); st.Position != 0 {
		t.Fatalf("stored checkpoint %d before Checkpoint, want 0 (idle progress is not written)", st.Position)
	}
	if p, err := r.Checkpoint(ctx); err != nil || p != 5 {
		t.Fatalf("Checkpoint = %d, %v; want 5", p, err)
	}
	if st := statusOf(t, r, "idle"); st.Position != 5 {
		t.Fatalf("stored checkpoint %d after Checkpoint, want 5", st.Position)
	}

	e.write("comments", 1)  // position 6
	e.write("comments", 99) // position 7: halts the operator
	if at := <-rep.halted; at != 7 {
		t.Fatalf("halted at %d, want 7", at)
	}
	e.write("posts", 6, 7) // positions 8, 9
	// The halt committed comment 1 first; the runner then reads the stored checkpoint back.
	waitFor(t, func() bool {
		p, err := r.Checkpoint(ctx)
		if err != nil || p > 6 {
			t.Fatalf("Checkpoint with a halted operator = %d, %v; want at most 6", p, err)
		}
		return p == 6
	})
	if st := statusOf(t, r, "idle"); st.Position != 6 || !st.Halted {
		t.Fatalf("status of the halted operator = %+v, want halted at checkpoint 6", st)
	}
}

// TestCheckpointBeforeTail: an operator that never committed starts at the ledger's tail;
// one whose checkpoint the retention passed halts at the tail, and resumes there once
// skipped.
func TestCheckpointBeforeTail(t *testing.T) {
	t.Parallel()
	e := newLedgerEnv(t)
	ctx := t.Context()
	e.write("comments", 1, 2) // positions 1, 2
	e.write("posts", 1)       // position 3
	e.write("comments", 3, 4) // positions 4, 5
	e.write("comments", 5)    // position 6
	e.write("comments", 6, 7) // positions 7, 8
	e.write("comments", 8, 9) // positions 9, 10
	if err := e.led.Truncate(ctx, 8); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Exec(ctx, `INSERT INTO walflow.operators (name, position) VALUES ('late', 3)`); err != nil {
		t.Fatal(err)
	}
	rep := &recorder{halted: make(chan event.Position, 1)}
	r := e.run(rep, recordComments("fresh"), recordComments("late"))
	if at := <-rep.halted; at != 8 {
		t.Fatalf("late halted at %d, want the tail 8", at)
	}
	st := statusOf(t, r, "late")
	if !st.Halted || st.FailedPosition != 8 || st.Position != 3 ||
		!strings.Contains(st.Error, ledger.ErrTruncated.Error()) || !strings.Contains(st.Error, "backfill") {
		t.Fatalf("status of late = %+v", st)
	}
	waitFor(t, func() bool { return r.CommittedThrough("comments") >= 3 && e.effects("fresh") == "8 9" })

	if pos, err := r.Skip(ctx, "late"); err != nil || pos != 8 {
		t.Fatalf("Skip = %d, %v; want 8", pos, err)
	}
	waitFor(t, func() bool { return e.effects("late") == "8 9" })
	e.write("comments", 10)
	waitFor(t, func() bool { return e.effects("late") == "8 9 10" && e.effects("fresh") == "8 9 10" })
	// The rows are visible a moment before an operator publishes the position it committed
	// with them, so the checkpoint reaches 11 shortly after, never past it.
	var p event.Position
	waitFor(t, func() bool {
		var err error
		if p, err = r.Checkpoint(ctx); err != nil || p > 11 {
			t.Fatalf("Checkpoint = %d, %v; want 11", p, err)
		}
		return p == 11
	})
}
