package disk

import (
	"context"
	"slices"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// TestDir runs the process tests of ledgertest: SIGKILL at random moments, a million-event
// transaction in bounded memory, a directory in use. After each crash recovery the segment
// files must hold exactly the recovered events and a commit record at the head.
func TestDir(t *testing.T) {
	ledgertest.RunDir(t, ledgertest.Dir{
		Open: func(ctx context.Context, dir string, small bool) (ledger.Ledger, error) {
			opts := &Options{Indexer: ledgertest.Indexer}
			if small {
				opts.ChunkBytes, opts.SegmentBytes = 4096, 64<<10
			}
			return Open(ctx, dir, opts)
		},
		OnDisk: func(t *testing.T, dir string, st ledger.State, _ map[string][]event.Position) {
			r := rawScan(t, dir)
			if !slices.Equal(r.events, ledgertest.Span(1, st.Head)) || len(r.commits) == 0 || r.commits[len(r.commits)-1] != st.Head {
				t.Fatalf("on disk after recovery: %d event records (head %d), last commit records %v", len(r.events), st.Head, r.commits[max(0, len(r.commits)-3):])
			}
		},
	})
}
