// Package index keeps custom indexes of the ledger: Fact's event indexers for walflow.
//
// # Concepts
//
// An [Indexer] is a name and a function that extracts zero, one or many string values from
// an event. For each value, the index keeps the ordered list of the positions of the events
// that gave it, so that one entity's events (every event whose user_id is 7) are read
// without scanning the ledger. Built-in indexers: [Field] (the value of a column, like
// Fact's EventDataIndexer), [Type] (insert, update, delete, truncate) and [Table]. The
// ledger's own channel index (table, table/id, scopes) is separate and built at append
// time; the indexes of this package are stored beside the ledger, so that they can be
// added, changed and deleted without touching it.
//
// A live indexer computes its values from each event while the writer has it in memory,
// when the writer appends through [Runner.Feed] (walflow's engine does): the values of
// durable events wait in a bounded feed, and the indexer stores them without reading the
// events back or decoding them again. Whatever the feed does not hold (history at start, a
// rebuild, an indexer that fell behind, a transaction too large to feed) is read back from
// the ledger; the stored entries are the same either way. [Status] counts both.
//
// A [Runner] runs a set of indexers over a ledger, storing their entries in a [Store]
// (index/disk, embedded, or index/memory), and answers [Runner.Read] (the events of a
// value after a position), [Runner.Subscribe] ("indexed" notifications), [Runner.Wait] and
// [Runner.Status].
//
// # Guarantees
//
// Each indexer has its own checkpoint, the last position it indexed, which the store
// writes atomically with the entries of each batch: a restart resumes after it, without
// calling Func again on indexed events and without duplicate entries. An indexer whose
// stored data is missing (never built, deleted, or reset) or whose [Indexer.Version]
// differs from the stored one is rebuilt from the beginning of the ledger; Func must be
// deterministic, so the rebuilt index equals the deleted one. When retention has removed
// the ledger's oldest events, the rebuild starts after the ledger's tail and logs a
// warning; [Status].Since tells where the index's history starts.
//
// # Safe to delete
//
// As with Fact, deleting index data is safe while the runner is stopped: the directory of
// an index/disk store, or one indexer's data with [Store.Reset]. The next Run rebuilds it.
// Deleting part of an indexer's data any other way (its entries without its state) is
// not detected.
//
// # Notifications
//
// After each batch is stored, the runner sends a [Notification] {Indexer, Position,
// Values} per event to the subscribers of the indexer, in position order, through catch-up
// and live indexing alike. Subscriptions are bounded: a subscriber whose buffer is full is
// ended with [ErrSlowSubscriber] rather than slowing indexing down.
//
// # Computing and following
//
// Several processes can share one index: each has a Runner on the same ledger and the same
// [SharedStore] (index/pg), one of them computes the indexes with [Runner.Run] at a time
// (walflow's cluster picks it with a lock), and the others run [Runner.Follow]: they serve
// Read, Wait, Status and Subscribe from the shared store, following the stored checkpoints.
// A runner switches between the two without losing or repeating a notification.
//
// # Failures
//
// An indexer whose Func panics or gives a value with a NUL byte, like a failing ledger or
// store, stops [Runner.Run] with an error naming the indexer. [Config].Reporter, when set,
// is told of it too, as the halt of a [retry.Index] consumer at the event it failed on.
//
// # Shutdown
//
// [Runner.Run] blocks until its context ends; it then stops every indexer between batches
// (a batch in flight is not stored, and is indexed again at the next start) and returns
// nil.
package index
