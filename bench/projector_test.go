package bench

import (
	"context"
	"encoding/binary"
	"flag"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	ledgerdisk "github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/statestore"
	"github.com/walflow/walflow/statestore/disk"
	"github.com/walflow/walflow/statestore/statestoretest"
)

var (
	projectorEvents = flag.Int("projector.events", 1_000_000, "events in the ledger of BenchmarkProjector")
	projectorEvery  = flag.Int("projector.every", 5000, "events between two savepoints in BenchmarkProjector")
)

// BenchmarkProjector measures, on a disk ledger of -projector.events events: how fast a
// projector rehydrates (reads and applies every event from position 0) against a plain
// read of the same ledger in the same run (the ceiling), and how much a stateful
// projector replays after a crash when it restarts from its latest savepoint, against a
// full replay. Bars: rehydration >= 0.5x the plain read; a restart replays < 1% of events.
func BenchmarkProjector(b *testing.B) {
	for range b.N {
		r := runProjectorBench(b, *projectorEvents, *projectorEvery)
		b.ReportMetric(r.readRate, "read-events/s")
		b.ReportMetric(r.rehydrateRate, "rehydrate-events/s")
		b.ReportMetric(r.rehydrateRate/r.readRate, "rehydrate/read")
		b.ReportMetric(100*float64(r.replayed)/float64(r.events), "restart-replayed-%")
		b.ReportMetric(r.fullReplay.Seconds()/r.restart.Seconds(), "restart-x-faster")
		b.Logf("%d events: plain read %.0f events/s, rehydration %.0f events/s (%.2fx); after a crash the stateful projector replayed %d events (%.3f%%) in %v, a full replay takes %v",
			r.events, r.readRate, r.rehydrateRate, r.rehydrateRate/r.readRate, r.replayed, 100*float64(r.replayed)/float64(r.events), r.restart, r.fullReplay)
		if r.rehydrateRate < 0.5*r.readRate {
			b.Logf("bar missed (not asserted): rehydration is under 0.5x the plain read")
		}
		if r.replayed*100 >= r.events || r.replayed > r.bound {
			b.Errorf("a restart from a savepoint replayed %d of %d events, 1%% or more, or past the bound of a savepoint interval plus a batch (%d)", r.replayed, r.events, r.bound)
		}
	}
}

// TestProjectorBenchSmoke runs BenchmarkProjector's code on a small ledger. Its replay is
// checked against the documented bound (a savepoint interval plus a batch), which is not
// under 1% of so few events.
func TestProjectorBenchSmoke(t *testing.T) {
	r := runProjectorBench(t, 20_000, 100)
	if r.replayed < 0 || r.replayed > r.bound {
		t.Fatalf("a restart replayed %d of %d events, more than a savepoint interval plus a batch (%d)", r.replayed, r.events, r.bound)
	}
	t.Logf("replayed %d of %d events; read %.0f/s, rehydrate %.0f/s", r.replayed, r.events, r.readRate, r.rehydrateRate)
	if r.readRate <= 0 || r.rehydrateRate <= 0 {
		t.Fatalf("rates %+v", r)
	}
}

type projectorBenchResult struct {
	events                  int
	readRate, rehydrateRate float64
	replayed                int
	bound                   int // the most a restart may replay: a savepoint interval plus a batch
	restart, fullReplay     time.Duration
}

func runProjectorBench(tb testing.TB, n, every int) projectorBenchResult {
	ctx := context.Background()
	dir := tb.TempDir()
	led, err := ledgerdisk.Open(ctx, filepath.Join(dir, "ledger"), nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer led.Close()
	writeAccounts(tb, led, n)
	head := led.State().Head
	res := projectorBenchResult{events: n}

	// The ceiling: a plain read of the whole ledger.
	start := time.Now()
	var read int
	for after := event.Position(0); after < head; {
		evs, err := led.Read(ctx, after, 1000)
		if err != nil {
			tb.Fatal(err)
		}
		read += len(evs)
		after = evs[len(evs)-1].Position
	}
	res.readRate = float64(read) / time.Since(start).Seconds()

	// Rehydration: a projector from position 0 to the head.
	var applied atomic.Int64
	start = time.Now()
	runProjectors(tb, led, projector.NewMemoryStore(), atHead(head), projector.Projector{Name: "count", Handle: func(context.Context, event.Event) error {
		applied.Add(1)
		return nil
	}})
	res.fullReplay = time.Since(start)
	res.rehydrateRate = float64(applied.Load()) / res.fullReplay.Seconds()

	// A stateful projector: run part of the way, crash (its storage takes no more writes, so
	// the clean stop's flush saves nothing), restart from the latest savepoint and count
	// what it replays.
	states, err := disk.Open(ctx, filepath.Join(dir, "states"), nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer states.Close()
	var handled atomic.Int64
	// The first run crashes while handling the event at crashAt: half a savepoint interval
	// (and a little) past a savepoint, well before the head.
	crashAt := int64(head*3/4) + int64(every/2) + 37
	crashable := statestoretest.NewCrashable(states)
	balance := func(ctx context.Context, st *projector.State, e event.Event) error {
		handled.Add(1)
		if e.Position == event.Position(crashAt) {
			crashable.Crash() // in the second run too, where crashable is not in use
		}
		acct, _ := e.NewRecord.Get("account")
		id := acct.String()
		var bal uint64
		if b, ok := st.Get(id); ok {
			bal = binary.BigEndian.Uint64(b)
		}
		st.Set(id, binary.BigEndian.AppendUint64(nil, bal+1))
		return nil
	}
	stateful := func(storage statestore.Storage, reached func([]projector.Status) bool) projector.Projector {
		ss, err := projector.NewSavepointStore(projector.SavepointConfig{
			Storage: storage, Fallback: projector.NewMemoryStore(), Every: every, Interval: -1,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			tb.Fatal(err)
		}
		p, err := ss.Stateful(projector.Projector{Name: "balances"}, balance)
		if err != nil {
			tb.Fatal(err)
		}
		runProjectors(tb, led, ss, reached, p)
		return p
	}
	// The first run crashes (its storage takes no more writes, so neither later savepoints
	// nor the clean stop's flush save anything); what it handled after that is lost with
	// the crash. The second run goes to the head. What both handled is the replay.
	stateful(crashable, func([]projector.Status) bool { return handled.Load() >= crashAt })
	handled.Store(0)
	start = time.Now()
	stateful(states, atHead(head))
	res.restart = time.Since(start)
	res.replayed = int(crashAt + handled.Load() - int64(n))
	res.bound = every + projectorBatch
	return res
}

// atHead reports whether every projector has applied through head.
func atHead(head event.Position) func([]projector.Status) bool {
	return func(sts []projector.Status) bool {
		for _, s := range sts {
			if s.Position < head {
				return false
			}
		}
		return true
	}
}

// projectorBatch is the projectors' batch size.
const projectorBatch = 1000

// runProjectors runs projectors with store until reached holds of their status, then stops
// them.
func runProjectors(tb testing.TB, led ledger.Ledger, store projector.PositionStore, reached func([]projector.Status) bool, ps ...projector.Projector) {
	r, err := projector.New(projector.Config{Ledger: led, Store: store, Projectors: ps, BatchSize: projectorBatch,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("projector Run: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Minute)
	for !reached(r.Status()) {
		if time.Now().After(deadline) {
			tb.Fatalf("projectors did not get where the benchmark waits for within 10 minutes: %+v", r.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeAccounts appends n inserts of an account_events table over 1,000 accounts, 1,000
// per transaction.
func writeAccounts(tb testing.TB, l ledger.Ledger, n int) {
	ctx := context.Background()
	cols := []event.Column{{Name: "id", OID: 20}, {Name: "account", OID: 23}, {Name: "amount", OID: 20}}
	for i := 0; i < n; {
		lsn := l.State().LastCommitLSN + 1
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn, CommitTime: time.Now()}); err != nil {
			tb.Fatal(err)
		}
		for j := 0; j < 1000 && i < n; j, i = j+1, i+1 {
			e := &event.Event{LSN: lsn, Ordinal: uint32(j), Name: "account_events", Type: event.Insert,
				Source: event.Source{Schema: "public", Table: "account_events", Columns: cols},
				NewRecord: event.Record{
					{Name: "id", Value: event.Text(20, strconv.Itoa(i+1))},
					{Name: "account", Value: event.Text(23, strconv.Itoa(i%1000))},
					{Name: "amount", Value: event.Text(20, "1")},
				}}
			if err := l.Append(ctx, e); err != nil {
				tb.Fatal(err)
			}
		}
		if err := l.CommitTx(ctx, lsn+1); err != nil {
			tb.Fatal(err)
		}
		if err := l.Sync(ctx); err != nil {
			tb.Fatal(err)
		}
	}
}
