// Package pgwal reads PostgreSQL's write-ahead log through logical replication (the
// pgoutput plugin) and turns it into [event.Event] values, in commit order, appended to a
// [Sink] (normally a ledger.Ledger).
//
// # Guarantees
//
//   - Every committed change of the published tables is appended once, in commit order.
//     Transactions PostgreSQL replays after a crash (from the slot's confirmed position) are
//     recognised by their commit LSN and skipped.
//   - The slot is acknowledged only up to what the sink has made durable. When the stream is
//     idle, or busy only with tables outside the publication, progress is confirmed from the
//     server's keepalives, so the slot never pins WAL.
//   - A slot that was dropped and recreated, invalidated (max_slot_wal_keep_size), or a
//     database restored or promoted, stops the source with an error that says what happened
//     and how to resync; it never resumes silently past a gap.
//   - Unchanged TOASTed columns are filled from the old row when it is known and otherwise
//     marked unchanged, never reported as NULL.
//
// # Running
//
// [New] validates a [Config]; [Source.Run] connects, checks the database (wal_level, the
// role's REPLICATION attribute, primary keys, replica identity, the slot), creates the
// publication and slot when missing, streams until its context ends, and reconnects with
// backoff when PostgreSQL restarts.
//
// With [Config].Standby, several sources (one per node of a cluster) contend for one slot
// over a shared sink: PostgreSQL lets one of them stream, the others retry every second and
// take over when it dies (see [Standby]).
package pgwal
