package memory_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	ledgertest.Run(t, func(t *testing.T, indexer ledger.Indexer) ledger.Ledger {
		return memory.New(&memory.Options{Indexer: indexer})
	})
}
