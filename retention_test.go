package walflow_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/retry"
)

// startRetained runs an engine on a fresh blog database that keeps events for a nanosecond,
// applying its retention every 20ms.
func startRetained(t *testing.T, ops ...operator.Operator) *blog {
	t.Helper()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	ctx := t.Context()
	cfg, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true,
		Tables:         []channel.Table{{Name: "posts"}, {Name: "comments"}},
		Retention:      time.Nanosecond,
		Operators:      ops,
		OperatorRetry:  retry.Policy{MaxRetries: -1, Min: time.Millisecond},
		StatusInterval: 200 * time.Millisecond,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	walflow.SetRetentionInterval(eng, 20*time.Millisecond)
	runEngine(t, eng)
	return &blog{t: t, eng: eng, conn: conn, dsn: dsn}
}

// waitTail waits until the ledger's tail is want and its head at least head.
func waitTail(t *testing.T, eng *walflow.Engine, want, head event.Position) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := eng.Ledger().State()
		if st.Tail == want && st.Head >= head {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ledger %+v after 30s, want tail %d and head at least %d", st, want, head)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rounds waits for n more rounds of retention.
func rounds(t *testing.T, eng *walflow.Engine, n uint64) {
	t.Helper()
	target := walflow.RetentionRounds(eng) + n
	deadline := time.Now().Add(30 * time.Second)
	for walflow.RetentionRounds(eng) < target {
		if time.Now().After(deadline) {
			t.Fatalf("%d rounds of retention not done within 30s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRetention: events older than Retention are removed; a subscription from before the
// tail ends with ErrTruncated, one from the tail goes on; /status and /metrics show the tail.
func TestRetention(t *testing.T) {
	t.Parallel()
	b := startRetained(t)
	ctx := t.Context()
	b.exec(`INSERT INTO posts VALUES (1, 'a'), (2, 'b')`)
	b.exec(`INSERT INTO comments VALUES (1, 1, 'x')`)
	waitTail(t, b.eng, 3, 3)

	sub, err := b.eng.Subscribe(ctx, &walflow.SubscribeOpts{After: fromStart}, "comments")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("a subscription from before the tail did not end")
	}
	if err := sub.Err(); !errors.Is(err, ledger.ErrTruncated) || !strings.Contains(err.Error(), "resubscribe from the head") {
		t.Fatalf("subscription from 0 ended with %v, want an error wrapping ledger.ErrTruncated", err)
	}

	tail := b.eng.Ledger().State().Tail
	sub, err = b.eng.Subscribe(ctx, &walflow.SubscribeOpts{After: &tail}, "comments")
	if err != nil {
		t.Fatal(err)
	}
	b.exec(`INSERT INTO comments VALUES (2, 1, 'y')`)
	if got := summary(collect(t, sub, 1)); got != "comments insert 2" {
		t.Fatalf("subscription from the tail got %s", got)
	}
	waitTail(t, b.eng, 4, 4)

	if st := b.eng.Status(ctx); st.LedgerTail != 4 {
		t.Fatalf("Status().LedgerTail = %d, want 4", st.LedgerTail)
	}
	rec := httptest.NewRecorder()
	b.eng.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "walflow_ledger_tail_position 4") {
		t.Fatalf("/metrics lacks walflow_ledger_tail_position 4:\n%s", rec.Body.String())
	}
}

// TestRetentionWaitsForOperators: an operator that lags, then one that is halted, holds
// the ledger's tail before the first event it has not committed.
func TestRetentionWaitsForOperators(t *testing.T) {
	t.Parallel()
	latch := make(chan struct{})
	inOperator := make(chan struct{})
	var entered sync.Once
	picky := operator.Func{Name: "picky", Entities: []string{"comments"}, Handle: func(ctx context.Context, tx pgx.Tx, e *event.Event) error {
		switch id, _ := e.ID("id"); id.String() {
		case "1":
			entered.Do(func() { close(inOperator) })
			select {
			case <-latch:
			case <-ctx.Done():
				return ctx.Err()
			}
		case "2":
			return errors.New("cannot handle comment 2")
		}
		return nil
	}}
	b := startRetained(t, picky)
	b.exec(`INSERT INTO posts VALUES (1, 'a'), (2, 'b'), (3, 'c')`) // positions 1..3
	// The operator moves past the posts without writing its checkpoint; retention stores it.
	waitTail(t, b.eng, 3, 3)

	b.exec(`INSERT INTO comments VALUES (1, 1, 'x')`) // position 4: the operator holds it
	select {
	case <-inOperator:
	case <-time.After(30 * time.Second):
		t.Fatal("the operator never received comment 1")
	}
	b.exec(`INSERT INTO posts VALUES (4, 'd'), (5, 'e')`) // positions 5, 6
	waitTail(t, b.eng, 3, 6)
	rounds(t, b.eng, 5)
	if st := b.eng.Ledger().State(); st.Tail != 3 {
		t.Fatalf("tail %d while the operator holds position 4, want 3", st.Tail)
	}
	from := event.Position(3)
	sub, err := b.eng.Subscribe(t.Context(), &walflow.SubscribeOpts{After: &from}, "comments")
	if err != nil {
		t.Fatal(err)
	}
	if got := summary(collect(t, sub, 1)); got != "comments insert 1" {
		t.Fatalf("subscription from the tail got %s", got)
	}

	close(latch)
	waitTail(t, b.eng, 6, 6)

	b.exec(`INSERT INTO comments VALUES (2, 1, 'y')`) // position 7: halts the operator
	b.exec(`INSERT INTO posts VALUES (6, 'f')`)       // position 8
	deadline := time.Now().Add(30 * time.Second)
	for !b.eng.Status(t.Context()).Operators[0].Halted {
		if time.Now().After(deadline) {
			t.Fatal("the operator did not halt on comment 2")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitTail(t, b.eng, 6, 8)
	rounds(t, b.eng, 5)
	if st := b.eng.Ledger().State(); st.Tail != 6 {
		t.Fatalf("tail %d while the operator is halted at position 7, want 6", st.Tail)
	}
}
