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
// is never held in it. [Ledger.CommitTx] publishes the transaction's events asynchronously,
// the last one with the header Walflow-End carrying the transaction's first sequence and
// its end LSN; [Ledger.Sync] waits until JetStream acknowledged every message (at the
// stream's replication: a quorum of an R3 stream), records the bookkeeping when needed
// (see State), and only then makes the transactions visible to the writer's own readers.
//
// Readers on every node expose only events through the last message carrying Walflow-End,
// so no reader sees part of a transaction. A writer that dies while publishing a
// transaction leaves its first messages in the stream as an unterminated tail. The next
// writer ([Ledger.Lead]) finds that tail, and when the source replays the same
// transaction from the slot, it checks each replayed event against the message already at
// its position (Nats-Msg-Id) and publishes only the rest: positions come out identical and
// nothing is stored twice, however long ago the tail was written.
//
// # Idempotence and fencing
//
// Every message carries Nats-Msg-Id "<commit LSN>/<index in the transaction>", so
// JetStream's duplicate window drops a message published twice, and
// Nats-Expected-Last-Sequence set to its position minus one, so a message lands exactly
// at the position the writer gave it or not at all. A deposed leader's late publish fails
// with "wrong last sequence" once the new leader has appended anything, and its next write
// of the state bucket fails because [Ledger.Lead] moved the entry's revision: both errors
// match [ErrFenced] and [ledger.ErrWriteFailed], which the source treats as fatal. (The
// server checks the expected last sequence before the duplicate window, so a duplicate
// publish with that header fails rather than being acknowledged as a duplicate; the
// writer never relies on it.)
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
