package jetstream_test

import (
	"context"
	"testing"

	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// TestConformance runs the conformance suite with the channel index in memory and with
// it in a directory (written every few messages, see TestMain, so that reads combine
// entries on disk and in memory).
func TestConformance(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s)
	for _, c := range []struct {
		name string
		dir  func(t *testing.T) string
	}{
		{"index=memory", func(*testing.T) string { return "" }},
		{"index=dir", func(t *testing.T) string { return t.TempDir() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			ledgertest.Run(t, func(t *testing.T, indexer ledger.Indexer) ledger.Ledger {
				l := openOpts(t, jetstream.Options{Conn: nc, Stream: newStream(), Indexer: indexer, IndexDir: c.dir(t)})
				if err := l.Lead(context.Background()); err != nil {
					t.Fatalf("Lead: %v", err)
				}
				return l
			})
		})
	}
}
