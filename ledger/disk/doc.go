// Package disk is walflow's default [ledger.Ledger]: embedded, crash-safe, made for an
// append-only log. docs/ledger.md describes the format in full.
//
// # Layout
//
// A ledger directory holds:
//
//	ledger.meta              the bookkeeping: tail, acknowledged LSN, origin, and a lower
//	                         bound of the head (written atomically: temp file, fsync,
//	                         rename, fsync of the directory)
//	ledger.lock              the writer's exclusive lock (flock)
//	<first position>.seg     a segment: a header, then records
//	<first position>.idx     a sealed segment's index: channel key → positions, and the
//	                         sparse position → offset index
//
// Every record is framed with its length and the CRC32C of its payload. An event record
// holds the event (event.AppendBinary); a commit record closes a transaction and holds its
// last position, commit LSN and end LSN. The head of the ledger is the last commit record.
//
// # Writes
//
// Append frames each event into a buffer that is written (without fsync) once it holds
// [Options.ChunkBytes], so a transaction of a million rows is never held in memory;
// CommitTx adds the commit record; Sync writes the rest and fsyncs the active segment,
// once for every transaction committed since the last Sync (the source calls it once per
// sync_delay: that is the group commit), then publishes the new head. The channel keys of
// each event are computed while it is in memory and kept in the active segment's
// in-memory index; when the segment reaches [Options.SegmentBytes] it is fsynced and
// sealed, its index written to its .idx file, and a new segment begins.
//
// # Recovery
//
// Open scans the newest segment and stops at its last valid record: one cut short, failing
// its checksum or out of place ends the scan. What follows the last commit record (an
// interrupted transaction, or a torn write) is cut off, and the newest segment's index is
// rebuilt from its events. A damaged record in a sealed segment, or one before what the
// meta file records as synced, is an error that names the segment: it is a disk failure,
// which walflow never skips.
//
// # Readers
//
// Readers never look past the published head. [OpenReadOnly] opens the files of a ledger
// another process writes, without the lock, and reads them as they were when it opened.
package disk
