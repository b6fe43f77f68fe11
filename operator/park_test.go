package operator_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/retry"
)

// poisonSchema makes writes of tally's row post_id = poison.id fail while poison has a row.
const poisonSchema = `
	CREATE TABLE tally (post_id int PRIMARY KEY, n int NOT NULL);
	CREATE TABLE poison (id int PRIMARY KEY);
	CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF EXISTS (SELECT 1 FROM poison WHERE id = NEW.post_id) THEN
			RAISE EXCEPTION 'tally row % is poisoned', NEW.post_id;
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON tally FOR EACH ROW EXECUTE FUNCTION refuse_poison();`

// tallyOperator counts the comment events of each post: it is not idempotent, so a lost or
// repeated event shows in n.
var tallyOperator = operator.SQL{
	Name:      "tally",
	Target:    "tally",
	Entities:  []string{"comments"},
	Query:     `INSERT INTO tally (post_id, n) VALUES ($1::int, 1) ON CONFLICT (post_id) DO UPDATE SET n = tally.n + 1`,
	ID:        map[string]string{"comments": "post_id"},
	OnFailure: operator.Park,
}

// tallyWant is the tally every comment event (one per comment insert and update here)
// gives, per post.
const tallyWant = `SELECT post_id, count(*) FROM comments GROUP BY post_id ORDER BY 1`

func TestParkKeepsOtherRowsGoing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(poisonSchema)
	e.exec(`INSERT INTO poison VALUES (2)`)
	rep := &recorder{halted: make(chan event.Position, 1)}
	r := e.run(operator.Config{Operators: []operator.Operator{tallyOperator}, SleepFunc: (&fakeSleep{}).sleep, Reporter: rep,
		Retry: retry.Policy{MaxRetries: 2}, BatchSize: 7})
	// Posts 1..3, four comments each, interleaved, in several transactions.
	for range 4 {
		e.exec(`INSERT INTO comments (post_id) SELECT g FROM generate_series(1, 3) g`)
	}
	e.exec(`INSERT INTO comments (post_id) VALUES (1), (3)`)
	waitFor(t, func() bool { return e.query(`SELECT post_id, n FROM tally ORDER BY 1`) == "1 5\n3 5" })
	rows := waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 1 && p[0].Count == 4 })
	if rows[0].ID != "2" || !strings.Contains(rows[0].FirstError, "tally row 2 is poisoned") || len(rows[0].Positions) != 4 {
		t.Fatalf("parked %+v", rows[0])
	}
	if rep.halts.Load() != 0 {
		t.Fatal("a parking operator halted")
	}
	if info := r.Operators()[0]; info.ParkedEvents != 4 || info.ParkedIDs != 1 {
		t.Fatalf("Operators() = %+v, want 4 parked events of 1 id", info)
	}
	// Process status learns which events are parked.
	if got := r.ParkedPositions(); fmt.Sprint(got) != fmt.Sprint(rows[0].Positions) {
		t.Fatalf("ParkedPositions() = %v, want %v", got, rows[0].Positions)
	}

	// A retry that fails again keeps them all, with the new error, and applies nothing.
	e.exec(`DELETE FROM poison`)
	e.exec(`INSERT INTO poison VALUES (2)`)
	err := r.Retry(t.Context(), "tally", "2")
	if err == nil || !strings.Contains(err.Error(), "poisoned") {
		t.Fatalf("retry while poisoned: %v", err)
	}
	if p, _ := r.Parked(t.Context(), "tally"); len(p) != 1 || p[0].Count != 4 || !strings.Contains(p[0].FirstError, "retry row 2") {
		t.Fatalf("after a failed retry: %+v", p)
	}

	// The cause is fixed: a retry requested from another process applies each event once.
	e.exec(`DELETE FROM poison`)
	e.exec(`INSERT INTO comments (post_id) VALUES (2)`) // parked behind the others
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 1 && p[0].Count == 5 })
	if n, err := operator.RequestRetry(t.Context(), e.db, "", "tally", ""); err != nil || n != 5 {
		t.Fatalf("RequestRetry = %d, %v", n, err)
	}
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 0 })
	e.settle(r, "comments")
	if got, want := e.query(`SELECT post_id, n FROM tally ORDER BY 1`), e.query(tallyWant); got != want {
		t.Fatalf("tally after retry:\n%s\nwant\n%s", got, want)
	}
	if info := r.Operators()[0]; info.ParkedEvents != 0 || info.ParkedIDs != 0 || len(r.ParkedPositions()) != 0 {
		t.Fatalf("Operators() = %+v, ParkedPositions() = %v after the retry", info, r.ParkedPositions())
	}
	// Later events of the row apply at once again.
	e.exec(`INSERT INTO comments (post_id) VALUES (2)`)
	waitFor(t, func() bool { return e.query(`SELECT n FROM tally WHERE post_id = 2`) == "6" })
}

func TestParkMovedRowAndDiscard(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(poisonSchema)
	e.exec(`INSERT INTO poison VALUES (2)`)
	r := e.run(operator.Config{Operators: []operator.Operator{tallyOperator}, SleepFunc: (&fakeSleep{}).sleep,
		Retry: retry.Policy{MaxRetries: 1}})
	e.exec(`INSERT INTO comments (id, post_id) VALUES (10, 1), (11, 2)`)
	// Moving comment 10 from post 1 to post 2 recomputes both: post 1 goes on, post 2 waits.
	e.exec(`UPDATE comments SET post_id = 2 WHERE id = 10`)
	waitFor(t, func() bool { return e.query(`SELECT post_id, n FROM tally ORDER BY 1`) == "1 2" })
	rows := waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 1 && p[0].Count == 2 })
	if rows[0].ID != "2" {
		t.Fatalf("parked %+v", rows)
	}
	if _, err := operator.Discard(t.Context(), e.db, "", "tally", ""); err == nil {
		t.Fatal("a discard without an id was accepted")
	}
	pos, err := r.Discard(t.Context(), "tally", "2")
	if err != nil || fmt.Sprint(pos) != fmt.Sprint(rows[0].Positions) {
		t.Fatalf("Discard = %v, %v; want %v", pos, err, rows[0].Positions)
	}
	e.exec(`DELETE FROM poison`)
	// The row is no longer parked: its next event applies.
	e.exec(`INSERT INTO comments (post_id) VALUES (2)`)
	waitFor(t, func() bool { return e.query(`SELECT post_id, n FROM tally ORDER BY 1`) == "1 2\n2 1" })
	if p, _ := r.Parked(t.Context(), "tally"); len(p) != 0 {
		t.Fatalf("parked after discard: %+v", p)
	}
}

func TestParkRefusesBadConfig(t *testing.T) {
	t.Parallel()
	bad := tallyOperator
	bad.OnFailure = "skip"
	if _, err := operator.New(operator.Config{DB: dummyPool(t), Operators: []operator.Operator{bad}}); err == nil || !strings.Contains(err.Error(), "operator tally: OnFailure") {
		t.Fatalf("OnFailure skip: %v", err)
	}
	f := operator.Func{Name: "f", Entities: []string{"comments"}, OnFailure: operator.Park,
		Handle: func(context.Context, pgx.Tx, *event.Event) error { return errors.New("x") }}
	if _, err := operator.New(operator.Config{DB: dummyPool(t), Operators: []operator.Operator{f}}); err == nil || !strings.Contains(err.Error(), "operator f: OnFailure is \"park\" but ID is nil") {
		t.Fatalf("Func park without ID: %v", err)
	}
}

// waitParked waits until the operator's parked rows satisfy ok, and returns them.
func waitParked(t *testing.T, r *operator.Runner, ok func([]operator.ParkedRow) bool) []operator.ParkedRow {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := r.Parked(t.Context(), "tally")
		if err != nil {
			t.Fatal(err)
		}
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("parked rows %+v never matched", p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dummyPool is a pool that never connects: New validates without the database.
func dummyPool(t *testing.T) *pgxpool.Pool {
	db, err := pgxpool.New(t.Context(), "postgres://localhost:1/none")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

func TestParkFuncAndReset(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(poisonSchema)
	e.exec(`INSERT INTO poison VALUES (2)`)
	fx := operator.Func{Name: "tally", Targets: []string{"tally"}, Entities: []string{"comments"}, Events: []event.Type{event.Insert}, OnFailure: operator.Park,
		ID: func(ev *event.Event) (string, error) {
			v, ok := ev.NewRecord.Get("post_id")
			if !ok {
				return "", errors.New("no post_id")
			}
			s, _ := v.Text()
			return s, nil
		},
		Handle: func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
			v, _ := ev.NewRecord.Get("post_id")
			s, _ := v.Text()
			_, err := tx.Exec(ctx, `INSERT INTO tally VALUES ($1::int, 1) ON CONFLICT (post_id) DO UPDATE SET n = tally.n + 1`, s)
			return err
		}}
	r := e.run(operator.Config{Operators: []operator.Operator{fx}, SleepFunc: (&fakeSleep{}).sleep, Retry: retry.Policy{MaxRetries: 1}})
	e.exec(`INSERT INTO comments (post_id) VALUES (1), (2), (1), (2), (3)`)
	waitFor(t, func() bool { return e.query(`SELECT post_id, n FROM tally ORDER BY 1`) == "1 2\n3 1" })
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 1 && p[0].ID == "2" && p[0].Count == 2 })
	e.exec(`DELETE FROM poison`)
	if err := r.Retry(t.Context(), "tally", "2"); err != nil {
		t.Fatal(err)
	}
	if got := e.query(`SELECT post_id, n FROM tally ORDER BY 1`); got != "1 2\n2 2\n3 1" {
		t.Fatalf("tally after the retry:\n%s", got)
	}

	// A reset drops parked events: their positions count the ledger it leaves.
	e.exec(`INSERT INTO poison VALUES (3)`)
	e.exec(`INSERT INTO comments (post_id) VALUES (3)`)
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 1 && p[0].ID == "3" })
	e.exec(`DELETE FROM poison`)
	e.exec(`DELETE FROM tally`)
	if err := r.Reset(t.Context(), "tally", nil); err != nil {
		t.Fatal(err)
	}
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 0 })
}

// TestParkedKeptAfterSwitchToHalt: an operator switched back to halt that still has parked
// events keeps its rows' later events behind them.
func TestParkedKeptAfterSwitchToHalt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(poisonSchema)
	e.exec(`INSERT INTO poison VALUES (2)`)
	start := func(op operator.SQL) (*operator.Runner, func()) {
		r, err := operator.New(operator.Config{DB: e.db, Ledger: e.eng.Ledger(), Operators: []operator.Operator{op}, SleepFunc: (&fakeSleep{}).sleep,
			Retry: retry.Policy{MaxRetries: 1}, ControlInterval: 50 * time.Millisecond, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		return r, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("runner: %v", err)
			}
		}
	}
	r, stop := start(tallyOperator)
	e.exec(`INSERT INTO comments (post_id) VALUES (1), (2)`)
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 1 })
	waitFor(t, func() bool { return e.query(`SELECT post_id, n FROM tally ORDER BY 1`) == "1 1" })
	stop()

	e.exec(`DELETE FROM poison`)
	halting := tallyOperator
	halting.OnFailure = operator.Halt
	r, stop = start(halting)
	defer stop()
	e.exec(`INSERT INTO comments (post_id) VALUES (2), (1)`)
	waitFor(t, func() bool { return e.query(`SELECT post_id, n FROM tally ORDER BY 1`) == "1 2" })
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 1 && p[0].Count == 2 })
	if err := r.Retry(t.Context(), "tally", ""); err != nil {
		t.Fatal(err)
	}
	if got := e.query(`SELECT post_id, n FROM tally ORDER BY 1`); got != "1 2\n2 2" {
		t.Fatalf("tally after the retry:\n%s", got)
	}
}

// TestParkedCounts: ParkedCounts reads nothing and creates nothing before any operator
// parked, then counts the parked events and rows of each operator.
func TestParkedCounts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if got, err := operator.ParkedCounts(t.Context(), e.db, ""); err != nil || len(got) != 0 {
		t.Fatalf("ParkedCounts before walflow ran = %+v, %v; want none", got, err)
	}
	e.exec(poisonSchema)
	e.exec(`INSERT INTO poison VALUES (2), (3)`)
	r := e.run(operator.Config{Operators: []operator.Operator{tallyOperator}, SleepFunc: (&fakeSleep{}).sleep,
		Retry: retry.Policy{MaxRetries: 1}})
	e.exec(`INSERT INTO comments (id, post_id) VALUES (10, 1), (11, 2), (12, 2), (13, 3)`)
	waitParked(t, r, func(p []operator.ParkedRow) bool { return len(p) == 2 && p[0].Count+p[1].Count == 3 })
	got, err := operator.ParkedCounts(t.Context(), e.db, "")
	if err != nil || len(got) != 1 || got[0] != (operator.ParkedCount{Operator: "tally", Events: 3, IDs: 2}) {
		t.Fatalf("ParkedCounts = %+v, %v; want tally with 3 events in 2 rows", got, err)
	}
	if got, err := operator.ParkedCounts(t.Context(), e.db, "other"); err != nil || len(got) != 0 {
		t.Errorf("ParkedCounts of another instance = %+v, %v; want none", got, err)
	}
}
