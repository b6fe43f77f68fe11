package pebble

import (
	"context"
	"slices"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// TestDir runs the process tests of ledgertest: SIGKILL at random moments, a million-event
// transaction in bounded memory, a directory in use. After each crash recovery the Pebble
// database must hold exactly the recovered events and their index entries.
func TestDir(t *testing.T) {
	ledgertest.RunDir(t, ledgertest.Dir{
		Open: func(ctx context.Context, dir string, small bool) (ledger.Ledger, error) {
			opts := &Options{Indexer: ledgertest.Indexer}
			if small {
				opts.ChunkBytes = 4096
			}
			return Open(ctx, dir, opts)
		},
		// Under the race detector the streaming Pebble ledger peaked at 210 to 420 MiB
		// (memtables queue behind slowed flushes and the shadow memory multiplies them);
		// holding the transaction adds about 280 MiB more.
		RaceMaxRSS: 640 << 20,
		OnDisk: func(t *testing.T, dir string, st ledger.State, keys map[string][]event.Position) {
			r := rawScan(t, dir)
			if r.head != st.Head || event.Position(len(r.events)) != st.Head || r.indexPast() != 0 {
				t.Fatalf("on disk after recovery: head %d, %d events, %d index entries past the head", r.head, len(r.events), r.indexPast())
			}
			for k, ps := range r.index {
				if !slices.Equal(ps, keys[k]) {
					t.Fatalf("index %s on disk holds %v, want %v", k, ps, keys[k])
				}
			}
			if len(r.index) != len(keys) {
				t.Fatalf("%d keys on disk, want %d", len(r.index), len(keys))
			}
		},
	})
}
