// Package ledgertest is the conformance suite every [ledger.Ledger] backend passes. A
// backend runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		ledgertest.Run(t, func(t *testing.T, indexer ledger.Indexer) ledger.Ledger {
//			return memory.New(&memory.Options{Indexer: indexer})
//		})
//	}
//
// The package also exports the events and indexer the suite uses, for backends' own tests.
package ledgertest
