package projector_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/projector"
)

// newLedger gives the bundle a fresh memory ledger following slot, as another engine's.
func (b *bundle) newLedger(slot string) {
	b.t.Helper()
	led := memory.New(&memory.Options{Indexer: func(e *event.Event, dst []string) []string { return append(dst, e.Name) }})
	b.t.Cleanup(func() { _ = led.Close() })
	if err := led.SetOrigin(b.t.Context(), ledger.Origin{SystemID: "7311", Timeline: 1, Database: "app", Slot: slot}); err != nil {
		b.t.Fatal(err)
	}
	b.led, b.lsn = led, 0
}

// A projector's stored position counts the events of one ledger: a runner on another
// ledger (another engine using the same projector names and database, or a ledger deleted
// and started again) halts it instead of resuming at a position that means other events,
// without changing what is stored; a reset replays the new ledger.
func TestForeignLedger(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, slot string
		events     int
		want       string
	}{
		{"another engine's ledger", "other", 300, "counts the events of 7311/app/first, and this runner reads 7311/app/other"},
		{"the ledger started again", "first", 50, "past the ledger's head 50"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.newLedger("first")
			b.add("accounts", 100)
			var calls atomic.Int64
			cfg := projector.Config{Projectors: []projector.Projector{{Name: "p", Handle: func(context.Context, event.Event) error {
				calls.Add(1)
				return nil
			}}}}
			r := b.run(cfg)
			if err := r.WaitLive(t.Context(), "p"); err != nil {
				t.Fatal(err)
			}
			r.stop()
			if got := b.int(`SELECT count(*) FROM walflow.projectors WHERE name = 'p' AND ledger = '7311/app/first' AND position = 100`); got != 1 {
				t.Fatal("the stored checkpoint does not name its ledger")
			}

			b.newLedger(tt.slot)
			b.add("accounts", tt.events)
			calls.Store(0)
			r2 := b.run(cfg)
			until(t, r2.Runner, "the projector to halt", func() bool { return status(r2.Runner, "p").Phase == projector.Halted })
			s := status(r2.Runner, "p")
			if !strings.Contains(s.Error, tt.want) || !strings.Contains(s.Error, projector.ErrForeignLedger.Error()) {
				t.Fatalf("halt error %q, want one containing %q", s.Error, tt.want)
			}
			if n := calls.Load(); n != 0 {
				t.Fatalf("the handler was called %d times on the foreign ledger", n)
			}
			if got := b.int(`SELECT count(*) FROM walflow.projectors WHERE name = 'p' AND NOT halted AND position = 100`); got != 1 {
				t.Fatal("the halt on a foreign ledger changed the stored checkpoint")
			}
			if err := r2.Reset(t.Context(), "p"); err != nil {
				t.Fatal(err)
			}
			if err := r2.WaitLive(t.Context(), "p"); err != nil {
				t.Fatal(err)
			}
			if n := calls.Load(); n != int64(tt.events) {
				t.Fatalf("after the reset the projector applied %d events, want the new ledger's %d", n, tt.events)
			}
			r2.stop()
			if got := b.int(`SELECT count(*) FROM walflow.projectors WHERE name = 'p' AND ledger = '7311/app/' || $1 AND position = $2`, tt.slot, tt.events); got != 1 {
				t.Fatal("after the reset the stored checkpoint does not name the new ledger")
			}
		})
	}
}

// copyEvents appends to dst the events of src after position after, each transaction
// as one, as a second view of src's stream that catches up.
func copyEvents(t *testing.T, src, dst *memory.Ledger, after event.Position) {
	t.Helper()
	ctx := t.Context()
	evs, err := src.Read(ctx, after, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(evs); {
		lsn := evs[i].LSN
		if err := dst.BeginTx(ctx, event.TxMeta{CommitLSN: lsn, CommitTime: evs[i].Timestamp}); err != nil {
			t.Fatal(err)
		}
		for ; i < len(evs) && evs[i].LSN == lsn; i++ {
			e := evs[i]
			if err := dst.Append(ctx, &e); err != nil {
				t.Fatal(err)
			}
		}
		if err := dst.CommitTx(ctx, lsn+1); err != nil {
			t.Fatal(err)
		}
	}
	if err := dst.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

// On a shared ledger (Config.SharedLedger: the stream of a cluster, which each node reads at
// its own pace), a stored position past this runner's view of the ledger means the view
// lags, not that the ledger was replaced: the projector waits for the view, longer than
// ledger.CatchUpWait if need be, logging that it waits, without halting; once the view
// catches up it resumes after the stored position and applies each later event once.
func TestSharedLedgerViewLags(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.newLedger("first")
	front := b.led // the view of the process that ran the projector
	b.add("accounts", 100)
	frontLSN := b.lsn
	var first recorder
	r := b.run(projector.Config{SharedLedger: true, Projectors: []projector.Projector{{Name: "p", Handle: first.handle}}})
	until(t, r.Runner, "the projector to store position 100", func() bool {
		s := status(r.Runner, "p")
		return s.Phase == projector.Live && s.Position == 100
	})
	r.stop()

	b.newLedger("first")
	view := b.led // this process's view of the same stream, which lags: it holds nothing yet
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelWarn}))
	var rec recorder
	r = b.run(projector.Config{SharedLedger: true, Logger: log, Projectors: []projector.Projector{{Name: "p", Handle: rec.handle}}})
	until(t, r.Runner, "the projector to load its stored position and wait", func() bool {
		s := status(r.Runner, "p")
		return s.Position == 100 && s.Phase == projector.Rehydrating
	})
	// Longer than a runner waits for an unshared ledger before it halts the projector.
	for end := time.Now().Add(ledger.CatchUpWait + 2*time.Second); time.Now().Before(end); {
		if s := status(r.Runner, "p"); s.Phase != projector.Rehydrating || s.Position != 100 {
			t.Fatalf("status while this view of the ledger lagged: %+v, want it waiting at the stored position 100", s)
		}
		if got := b.int(`SELECT count(*) FROM walflow.projectors WHERE name = 'p' AND NOT halted AND position = 100`); got != 1 {
			t.Fatal("the stored checkpoint changed while this view of the ledger lagged")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(rec.positions()); n != 0 {
		t.Fatalf("the projector applied %d events while this view of the ledger lagged", n)
	}
	// The first log of the wait is due LagLogEvery after it began: poll, as a loaded
	// machine may run the runner's round late.
	until(t, r.Runner, "the log of the wait for the shared ledger's view", func() bool {
		return strings.Contains(logs.String(), "waits for this node's view of the shared ledger") && strings.Contains(logs.String(), "position=100 head=0")
	})

	b.led, b.lsn = front, frontLSN
	b.add("accounts", 20)
	copyEvents(t, front, view, 0)
	until(t, r.Runner, "the projector to apply the new events", func() bool {
		s := status(r.Runner, "p")
		return s.Phase == projector.Live && s.Position == 120
	})
	checkRun(t, rec.positions(), 100, 120)
}
