// Package operator keeps derived tables up to date from the ledger: the EventStreamex
// operators, with exactly-once effects.
//
// # Concepts
//
// An operator listens to entities (tables) and, for each of their events, runs either a SQL
// query with $1 bound to the derived row's id ([SQL], for example a MERGE that recomputes
// post_with_comments_counts for one post), or a Go handler ([Func]). Each operator reads the
// ledger in order from its own checkpoint, kept in the walflow.operators table of the
// followed database, and commits its effects and its new checkpoint in one PostgreSQL
// transaction. A crash therefore never applies an event twice nor skips one.
//
// Events are applied in batches, one transaction per batch. When an event of a batch fails,
// the events before it are committed, and the failing event is retried alone with
// exponential backoff ([RetryPolicy]: 500 ms, ×2, at most 10 s, 5 retries by default). After
// the last retry the operator is halted: it stops, its error is reported and recorded, and
// the other operators go on. Nothing is skipped unless someone asks ([Runner.Skip]).
//
// Operators may listen to tables other operators write (the derived changes come back
// through the WAL). An operator that would feed itself, directly or through others, is
// refused when the [Runner] is created.
//
// # Instances and ledgers
//
// Several walflows (each with its own slot and ledger) may share a database: a checkpoint
// belongs to one instance ([Config].Instance, the engine's slot name), and [Statuses],
// [Restart], [Skip] and [Reset] name the instance they act on. A walflow.operators table made
// before instances is upgraded in place by [Migrate]; the first runner of an instance with an
// operator of a stored name adopts that checkpoint.
//
// A checkpoint counts the events of one ledger, so it records which one ([LedgerKey]) and
// the position and LSN of an event of it. A runner halts, with an error wrapping
// [ErrForeignLedger] and without applying anything, an operator whose checkpoint names
// another ledger, lies past its ledger's head, or whose recorded event has another LSN in
// its ledger: the ledger was moved aside for a resync, deleted, or is a memory ledger that
// restarted. Such an operator holds the ledger's retention and process status back until
// [Reset] starts it over on the runner's ledger and rebuilds its rows.
//
// # Backfill
//
// [Backfill] (walflow operator backfill NAME) runs an operator for every existing id of its
// entities, in resumable batches: for rows that existed before the operator, after a TRUNCATE,
// or after a skip. Its batches take the same lock as the live operator's, so running it while
// events flow still leaves the derived rows exact.
//
// # Truncate
//
// A TRUNCATE of a listened table carries no ids, so operators ignore it by default; run a
// backfill of the operator afterwards to make its derived rows exact again.
//
// # Retention
//
// The ledger's retention removes old events, but never past [Runner.Checkpoint]: the lowest
// stored checkpoint of the runner's operators, halted ones included, so none of them ever
// misses an event. An operator that was not running while the ledger was truncated may find
// its checkpoint before the ledger's tail. If it never committed an event it starts at the
// tail (backfill it for the rows older events changed); otherwise it halts with an error
// wrapping ledger.ErrTruncated, since it missed events: backfill it, then skip, which
// resumes it at the tail.
package operator
