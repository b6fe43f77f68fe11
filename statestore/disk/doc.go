// Package disk is an embedded [statestore.Storage]: the savepoints live in a Pebble
// database in a directory, as the disk ledger's events do.
//
// # Layout
//
// Every record is one Pebble key; a run id never holds a NUL byte, so the 0x00 after it
// ends it unambiguously:
//
//	'r' + run id                                        → next savepoint number (8 bytes)
//	'h' + run id + 0x00 + number (8 bytes, big-endian)  → header: format 1, timestamp,
//	                                                      position, entity count
//	'e' + run id + 0x00 + number + index (4 bytes, BE)  → entity: uvarint id length, id, state
//
// The 'r' key says the run is initialized. Each savepoint gets the next number of its run,
// so the headers of a run sort in the order the savepoints were saved, and the latest is
// the last. Numbers are never reused, even after DeleteOldSavepoints(0).
//
// # Writes
//
// Every write is one Pebble batch committed with fsync: a savepoint's header, entities and
// the run's next number; or the range deletions of DeleteOldSavepoints and DeleteRun. A
// crash leaves either all of a batch or none of it. Writes to one run are serialized by a
// lock, so that the timestamp check and the numbering see the previous write; writes to
// different runs go in parallel. Reads use a Pebble snapshot, so they see whole batches.
package disk
