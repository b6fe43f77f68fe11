package projector_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/walflow/walflow/event"
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
