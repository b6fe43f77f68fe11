package pebble

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

// TestConformanceTinyChunks runs the suite with chunks of a few events, so that open
// transactions reach the disk.
func TestConformanceTinyChunks(t *testing.T) {
	ledgertest.Run(t, func(t *testing.T, indexer ledger.Indexer) ledger.Ledger {
		return mustOpen(t, t.TempDir(), &Options{Indexer: indexer, ChunkBytes: 1024})
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
