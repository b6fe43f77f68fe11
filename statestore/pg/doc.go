// Package pg is a [statestore.Storage] that keeps savepoints in PostgreSQL.
//
// # Tables
//
// Three tables of a schema (walflow by default) hold the savepoints; [Store.Migrate], or
// the first call that needs them, creates them when missing:
//
//	walflow.statestore_runs        (run_id text PRIMARY KEY, next_seq bigint, created_at timestamptz)
//	walflow.statestore_savepoints  (run_id text, seq bigint, timestamp_ms bigint, position bigint,
//	                                entity_count integer, saved_at timestamptz, PRIMARY KEY (run_id, seq))
//	walflow.statestore_entities    (run_id text, seq bigint, ord integer, entity_id text, state bytea,
//	                                PRIMARY KEY (run_id, seq, ord))
//
// A row in statestore_runs says the run is initialized; each savepoint takes the run's
// next_seq, so a run's savepoints sort by seq in the order they were saved, and its latest
// is the one with the highest seq. Entities keep their order in ord. There are no foreign
// keys: every write locks the run's row first, and deletes what belongs to it explicitly.
// A state is a bytea, so it can be up to 1 GB; large states are stored out of line
// (TOAST) by PostgreSQL.
//
// # Transactions
//
// Each write is one transaction: a savepoint's header and entities (sent with COPY) and
// the run's next_seq commit together, so a reader sees all of a savepoint or none of it.
// Writes take the run's row lock (SELECT ... FOR UPDATE), so the writes of one run are
// serialized and those of different runs run in parallel. Reads of several statements run
// in one REPEATABLE READ snapshot.
//
// The writes come in pairs: SaveSavepoint and SaveSavepointTx, and so on. The Tx variant
// runs in the caller's transaction, so that a projector commits its savepoint together
// with its own writes; it holds the run's row lock until that transaction ends.
package pg
