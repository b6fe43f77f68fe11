// Package statestoretest is the conformance suite of [statestore.Storage] backends. A backend's
// tests call [Run] with a function opening a fresh, empty storage, and durable backends
// also call [RunReopen] with a function that reopens the same storage, as a restarted
// process would:
//
//	func TestConformance(t *testing.T) {
//		statestoretest.Run(t, func(t *testing.T) statestore.Storage { return newStore(t) })
//	}
//
// A backend that also implements [statestore.Lister] gets its list checked after every
// DeleteOldSavepoints, so that the suite sees exactly which savepoints were kept; without
// it, only the latest savepoint can be checked. Every backend of this module implements it.
//
// Every subtest calls t.Parallel; run the suite with -race.
package statestoretest
