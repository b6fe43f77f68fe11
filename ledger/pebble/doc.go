// Package pebble is a [ledger.Ledger] stored in a Pebble (LSM tree) database: embedded and
// crash-safe. It reads and writes the ledgers of walflow versions whose default backend it
// was; ledger/disk (segment files) is the default. Select it with ledger.backend: pebble,
// or convert it with walflow ledger migrate (disk.Migrate).
//
// # Layout
//
// Every record is one Pebble key:
//
//	'e' + position (8 bytes, big-endian)                  → the event, event.AppendBinary
//	'k' + index key + 0x00 + position (8 bytes, big-endian) → empty
//	'm' + name                                            → metadata
//
// The metadata key "mstate" holds the durable head and tail, the last transaction's commit
// and end LSNs, the acknowledged LSN and the origin. A ledger never truncated writes it in
// version 1, which walflow versions without retention read; a truncated one in version 2,
// which they refuse to open rather than misread.
//
// # Writes
//
// A transaction is streamed: Append adds each event and its index entries to a Pebble
// batch, and once the batch holds [Options.ChunkBytes] it is written without fsync and a
// new one begins, so a transaction of a million rows is never held in memory. CommitTx
// only moves the new head and LSNs to a pending state. Sync writes the metadata with the
// last batch and fsyncs it, then publishes the new state to readers and wakes Wait.
// Because Pebble applies batches in order, a durable head means every event up to it is
// durable too.
//
// Readers never look past the published head, so the events of an open or unsynced
// transaction stay invisible although some of them are already on disk. After a crash,
// [Open] deletes the events past the durable head, with their index entries, before it
// returns, and the next transaction reuses their positions.
//
// Close does not Sync: committed transactions not yet synced are dropped, as by a crash.
//
// # Truncate
//
// [Ledger.Truncate] runs beside the writer. Each of its batches deletes a stretch of events
// with one range deletion, deletes their index entries (found by giving the events to the
// Indexer again; a key with many entries in the stretch gets a range deletion too), and
// records the new tail in "mstate". It publishes the tail before the batch commits, so a
// reader, which checks the tail after opening its iterator, either sees the removed events
// or fails with [ledger.ErrTruncated], never a gap. Once 64 MiB of events were removed, it
// compacts the removed range so that the disk space returns at once; the index's deletions
// are left to Pebble's own compactions.
package pebble
