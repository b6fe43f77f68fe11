package jetstream_test

import (
	"context"
	"testing"

	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
)

func TestConformance(t *testing.T) {
	s := startServer(t, "", 0)
	nc := connect(t, s)
	ledgertest.Run(t, func(t *testing.T, indexer ledger.Indexer) ledger.Ledger {
		l := open(t, nc, newStream(), indexer)
		if err := l.Lead(context.Background()); err != nil {
			t.Fatalf("Lead: %v", err)
		}
		return l
	})
}
