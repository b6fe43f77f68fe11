package index_test

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/indextest"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	ledgermem "github.com/walflow/walflow/ledger/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait of the tests.
const testTimeout = 10 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newLedger returns an empty memory ledger, closed when the test ends.
func newLedger(t *testing.T) *ledgermem.Ledger { return newLedgerTB(t) }

func newLedgerTB(tb testing.TB) *ledgermem.Ledger {
	l := ledgermem.New(nil)
	tb.Cleanup(func() { l.Close() })
	return l
}

// row builds a record of text columns from name/value pairs; a value "NULL" is NULL.
func row(kv ...string) event.Record {
	r := make(event.Record, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		v := event.Text(25, kv[i+1])
		if kv[i+1] == "NULL" {
			v = event.Null(25)
		}
		r = append(r, event.Field{Name: kv[i], Value: v})
	}
	return r
}

func insert(table string, r event.Record) *event.Event {
	return &event.Event{Name: table, Type: event.Insert, NewRecord: r, Source: event.Source{Table: table}}
}

func update(table string, old, new event.Record) *event.Event {
	return &event.Event{Name: table, Type: event.Update, OldRecord: old, NewRecord: new, Source: event.Source{Table: table}}
}

func del(table string, old event.Record) *event.Event {
	return &event.Event{Name: table, Type: event.Delete, OldRecord: old, Source: event.Source{Table: table}}
}

// write appends events in one transaction and syncs; it returns their positions.
func write(t *testing.T, l ledger.Ledger, evs ...*event.Event) []event.Position {
	t.Helper()
	lsn := l.State().LastCommitLSN + 10
	for i, e := range evs {
		e.LSN, e.Ordinal = lsn, uint32(i)
	}
	ps := ledgertest.WriteTx(t, l, lsn, evs...)
	if err := l.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return ps
}

// writeUsers appends n inserts into posts, the i-th (from 0) with user_id i%users, one
// transaction of up to 10 events at a time.
func writeUsers(t *testing.T, l ledger.Ledger, n, users int) {
	t.Helper()
	var evs []*event.Event
	for i := range n {
		evs = append(evs, insert("posts", row("id", strconv.Itoa(i), "user_id", strconv.Itoa(i%users))))
		if len(evs) == 10 || i == n-1 {
			write(t, l, evs...)
			evs = evs[:0]
		}
	}
}

// counted wraps an indexer's Func to count its calls.
func counted(ix index.Indexer, calls *atomic.Int64) index.Indexer {
	f := ix.Func
	ix.Func = func(e *event.Event, dst []string) []string {
		calls.Add(1)
		return f(e, dst)
	}
	return ix
}

// run runs r until the test ends, and fails the test when Run fails.
func run(t *testing.T, r *index.Runner) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var stopped bool
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// waitAll waits until every indexer of r has indexed the ledger's head.
func waitAll(t *testing.T, r *index.Runner, l ledger.Ledger, names ...string) {
	t.Helper()
	ctx := testContext(t)
	head := l.State().Head
	for _, n := range names {
		if err := r.Wait(ctx, n, head); err != nil {
			t.Fatalf("Wait(%s, %d): %v", n, head, err)
		}
	}
}

func dump(t *testing.T, s index.Store, name string) []index.Entry {
	t.Helper()
	return indextest.Dump(t, s, name)
}

func positionsOf(evs []event.Event) []event.Position {
	out := make([]event.Position, len(evs))
	for i := range evs {
		out[i] = evs[i].Position
	}
	return out
}
