package operator_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
)

// TestRunnersOfOneInstanceApplyOnce runs two runners of one instance on one ledger at
// once, as two nodes of a cluster do for a moment when the operators' lock changes hands:
// every event is applied once, by one or the other, since a batch commits only while the
// stored checkpoint is before its first event.
func TestRunnersOfOneInstanceApplyOnce(t *testing.T) {
	t.Parallel()
	e := newInstanceEnv(t)
	ctx := t.Context()
	if _, err := e.db.Exec(ctx, `CREATE TABLE applied (position bigint PRIMARY KEY, n int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	tally := operator.Func{Name: "tally", Entities: []string{"comments"}, Targets: []string{"applied"},
		Handle: func(ctx context.Context, tx pgx.Tx, ev *event.Event) error {
			_, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1, 1) ON CONFLICT (position) DO UPDATE SET n = applied.n + 1`, int64(ev.Position))
			return err
		}}
	led := e.ledger("s", 1)
	var runners []*operator.Runner
	for range 2 {
		r, err := operator.New(operator.Config{DB: e.db, Instance: "s", Ledger: led, Operators: []operator.Operator{tally},
			BatchSize: 3, ControlInterval: 20 * time.Millisecond, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("runner: %v", err)
			}
		})
		runners = append(runners, r)
	}
	const n = 200
	for id := 1; id <= n; id++ {
		e.insert(led, id)
	}
	waitFor(t, func() bool {
		return runners[0].CommittedThrough("comments") == n && runners[1].CommittedThrough("comments") == n
	})
	if got := e.int(`SELECT count(*) FROM applied`); got != n {
		t.Fatalf("%d events applied, want %d", got, n)
	}
	if twice := e.int(`SELECT count(*) FROM applied WHERE n > 1`); twice != 0 {
		t.Fatalf("%d events applied more than once by two runners of one instance", twice)
	}
	for i, r := range runners {
		if s := statusOf(t, r, "tally"); s.Halted {
			t.Fatalf("runner %d halted the operator: %s", i, s.Error)
		}
	}
}
