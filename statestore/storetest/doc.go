// Package storetest is the conformance suite of [statestore.Storage] backends. A backend's
// tests call [Run] with a function opening a fresh, empty storage, and durable backends
// also call [RunReopen] with a function that reopens the same storage, as a restarted
// process would:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) statestore.Storage { return newStore(t) })
//	}
//
// Every subtest calls t.Parallel; run the suite with -race.
package storetest
