package disk

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	ledgertest.Run(t, func(t *testing.T, indexer ledger.Indexer) ledger.Ledger {
		return mustOpen(t, t.TempDir(), &Options{Indexer: indexer})
	})
}

// TestConformanceTinySegments runs the suite with segments of a few events and chunks
// smaller than that, so that transactions span segments and reach the disk while open.
func TestConformanceTinySegments(t *testing.T) {
	ledgertest.Run(t, func(t *testing.T, indexer ledger.Indexer) ledger.Ledger {
		return mustOpen(t, t.TempDir(), &Options{Indexer: indexer, SegmentBytes: 2048, ChunkBytes: 700})
	})
}

func mustOpen(t testing.TB, dir string, opts *Options) *Ledger {
	t.Helper()
	l, err := Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}
