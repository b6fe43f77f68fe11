// Package statestore keeps savepoints of runs: the saved state of a stateful consumer, from
// which it restarts instead of replaying all history.
//
// # Concepts
//
// A run is one stateful computation with a durable identity, such as a projector named
// "orders-by-customer". It is named by a run id (see [ValidateRunID]) and must be
// initialized with [Storage.InitRun] before savepoints are saved or read; [Storage.DeleteRun]
// removes it with all its savepoints.
//
// A savepoint is the whole state of a run at one moment: a timestamp in milliseconds since
// the Unix epoch, the ledger position the state reflects, and a list of entities, each an
// id and an opaque state (the consumer chooses the encoding). A run keeps a sequence of
// savepoints; the latest is the one saved last. Timestamps must not decrease from one
// savepoint to the next ([ErrOutOfOrder]), so the latest savepoint is also the one with the
// highest timestamp; equal timestamps are allowed and ordered by when they were saved.
// [Storage.DeleteOldSavepoints] keeps only the most recent ones.
//
// # Restarting from a savepoint
//
// A stateful consumer applies ledger events to its in-memory state and, every so often,
// saves that state with the position of the last event applied:
//
//	err := store.SaveSavepoint(ctx, "orders", statestore.Savepoint{
//		Timestamp: time.Now().UnixMilli(),
//		Position:  lastApplied,
//		Entities:  states,
//	})
//
// On start it calls [Storage.InitRun] (which does nothing when the run exists), then
// [Storage.LatestSavepoint]: it loads the entities and reads the ledger after the
// savepoint's Position. [ErrNoSavepoint] means a fresh start from the beginning of the
// ledger. Once a newer savepoint is saved, the older ones are only needed to go further
// back, and [Storage.DeleteOldSavepoints] bounds how many are kept.
//
// # Guarantees
//
// Every backend gives the same guarantees, checked by the conformance suite in
// statestore/statestoretest:
//
//   - A savepoint is saved atomically: a reader sees either the whole savepoint or none of it,
//     never some of its entities.
//   - A saved savepoint is durable when SaveSavepoint returns (except for the [Memory]
//     backend, which keeps nothing across restarts).
//   - Runs are independent: operations on one run never see or change another's data.
//   - Every method is safe for concurrent use, on the same run or different ones.
//   - Savepoints are copied in and out: SaveSavepoint keeps no reference to the caller's
//     slices, and LatestSavepoint returns slices the caller owns.
//
// # Backends
//
//   - statestore/memory: in the process, for tests and for runs that need no restart.
//   - statestore/disk: embedded, in a Pebble directory, like the disk ledger.
//   - statestore/pg: PostgreSQL tables in the walflow schema, with Tx variants of the
//     writes so a savepoint commits in the caller's transaction.
package statestore
