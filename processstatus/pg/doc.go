// Package pg is a [processstatus.Store] that keeps the process status in PostgreSQL.
//
// # Tables
//
// The status lives in two tables of a schema (walflow by default), created when missing:
//
//	walflow.process_status (instance text, entity text, processed_micros bigint, updated_at timestamptz,
//	                        PRIMARY KEY (instance, entity))
//	walflow.process_status_position (instance text PRIMARY KEY, position bigint, updated_at timestamptz)
//
// process_status has one row per instance and entity with its processed timestamp, in
// microseconds since the Unix epoch; process_status_position has, per instance, the ledger
// position through which every event is processed.
//
// # Instances
//
// Every row belongs to one walflow instance ([Config].Instance: the engine's slot name), so
// several instances (each with its own slot and ledger) share a database without reading,
// resetting or overwriting each other's status. Tables made by an earlier walflow, keyed
// without an instance, are upgraded in place when a store first touches them: their rows
// get the instance "" and the first store of a named instance adopts them.
//
// # Batching
//
// Save and SavePosition only record the latest values in memory; [Store.Flush] writes them,
// all in one transaction, so each entity is written at most once per flush, and a position
// is never stored without the timestamps saved before it. [Store.Run] flushes every
// FlushInterval and once more when its context ends; [processstatus.Tracker.Run] also
// flushes when it stops. A crash loses at most the last interval, which the tracker derives
// again from the ledger after the restart, since the lost position goes with it.
package pg
