// Package pgstore is a [processstatus.Store] that keeps the process status in PostgreSQL.
//
// # Tables
//
// The status lives in two tables of a schema (walflow by default), created when missing:
//
//	walflow.process_status (entity text PRIMARY KEY, processed_micros bigint, updated_at timestamptz)
//	walflow.process_status_position (singleton boolean PRIMARY KEY, position bigint, updated_at timestamptz)
//
// process_status has one row per entity with its processed timestamp, in microseconds since
// the Unix epoch; process_status_position has the one ledger position through which every
// event is processed.
//
// # Batching
//
// Save and SavePosition only record the latest values in memory; [Store.Flush] writes them,
// all in one transaction, so each entity is written at most once per flush, and a position
// is never stored without the timestamps saved before it. [Store.Run] flushes every
// FlushInterval and once more when its context ends; [processstatus.Tracker.Run] also
// flushes when it stops. A crash loses at most the last interval, which the tracker derives
// again from the ledger after the restart, since the lost position goes with it.
package pgstore
