// Package jetstream is a [ledger.Ledger] on a NATS JetStream stream, shared by every node
// of a walflow cluster.
//
// # Positions
//
// An event's position is its stream sequence, so positions are gap-free from 1 and the
// same on every node: a reader that resumes on another node resumes exactly. Each event is
// one message on the events subject; its payload is the event's binary encoding.
//
// # Transactions
//
// The writer spools the open transaction's events locally (in memory up to
// [Options].SpoolMemory bytes, then in a temporary file in [Options].SpoolDir), so
// [Ledger.AbortTx] leaves no trace in the stream and a transaction far larger than memory
// is never held in it. [Ledger.CommitTx] publishes the transaction's events in JetStream
// atomic batches (the stream allows them: Open sets AllowAtomicPublish, on a stream it
// creates or one that exists; it needs nats-server 2.12 or newer), the last event with the
// header Walflow-End carrying the transaction's first sequence and its end LSN. A batch
// holds up to [Options].BatchMessages events (1000, the servers' default limit), of one
// transaction or of several; JetStream stores a batch whole or not at all, as one Raft
// proposal. [Ledger.Sync] commits the open batch, waits until JetStream acknowledged every
// batch (at the stream's replication: a quorum of an R3 stream), records the bookkeeping
// when needed (see State), and only then makes the transactions visible to the writer's
// own readers.
//
// Readers on every node expose only events through the last message carrying Walflow-End,
// so no reader sees part of a transaction, however many batches it spans. A writer that
// dies between two batches of a transaction leaves its first messages in the stream as an
// unterminated tail. The next writer ([Ledger.Lead]) finds that tail, and when the source
// replays the same transaction from the slot, it checks each replayed event against the
// message already at its position (the Walflow-Id header, "<commit LSN>/<index in the
// transaction>") and publishes only the rest: positions come out identical and nothing is
// stored twice, however long ago the tail was written.
//
// # Fencing
//
// A batch's first message carries Nats-Expected-Last-Sequence set to its position minus
// one, so a batch lands exactly at the positions the writer gave it or not at all, and the
// writer commits a batch only once JetStream acknowledged the one before it: once one
// batch of a deposed writer is refused, it commits no later one, which could otherwise
// match the stream's last sequence by chance after the new writer's appends. A deposed
// leader's batch fails with "wrong last sequence" once the new leader has appended
// anything, and its next write of the state bucket fails because [Ledger.Lead] moved the
// entry's revision: both errors match [ErrFenced] and [ledger.ErrWriteFailed], which the
// source treats as fatal. The writer does not use Nats-Msg-Id and JetStream's duplicate
// window: the expected last sequence already refuses a batch published twice.
//
// # State
//
// Head, LastCommitLSN and LastEndLSN follow from the stream (the last Walflow-End
// message); the writer also records them, with AckedLSN and Origin, in a key-value bucket
// (Options.StateBucket) at every SetAcked and SetOrigin, and at a Sync when an empty
// transaction came last or the last record is five seconds old, so a new leader recovers
// them from NATS alone (the bucket, then the end markers after its head). Tail is the stream's first sequence minus one: [Ledger.Truncate]
// purges the stream up to a sequence, which keeps later sequences.
//
// # Index
//
// Every Ledger, leader or not, runs one goroutine that follows the stream with an ordered
// consumer, decodes each event, and keeps the channel index (each key's positions) and a
// cache of the most recent events (Options.CacheEvents). Reads outside the cache fetch
// messages from the stream.
//
// With [Options].IndexDir the channel index is a Pebble database in that directory: the
// follower writes the entries of many messages at a time with a checkpoint (the last
// sequence covered, the last transaction end, the stream's name and creation time,
// Options.IndexerVersion), and keeps only the entries since in memory. [Open] catches
// the index up from its checkpoint, and rebuilds it from the stream, logging why, when
// the directory holds none, Pebble cannot open it (its files are then deleted), the
// stream was deleted and created again or holds another message at the checkpoint,
// retention removed messages after the checkpoint, or IndexerVersion changed. Truncated
// entries are ignored by reads at once and deleted from the directory by the follower. Without IndexDir the index is kept in
// memory (8 bytes per key per event plus the key strings) and rebuilt from the stream at
// every Open. Either way [Open] returns once the index has caught up with the stream, and
// an event's entries become visible with its transaction's end marker.
package jetstream
