// Package operator keeps derived tables up to date from the ledger, with exactly-once
// effects.
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
// exponential backoff ([retry.Policy]: 500 ms, ×2, at most 10 s, 5 retries by default). After
// the last retry the operator is halted: it stops, its error is recorded and reported (to
// [Config.Reporter]), and the other operators go on. An error that retrying cannot heal
// ([retry.IsPermanent]: a statement PostgreSQL rejects with SQLSTATE class 42, such as a
// syntax error or a missing table or column, or class 22, a data exception; an event
// without its id column) halts the operator at once, and the error shows the statement and
// where in it PostgreSQL found the fault.
// A halted operator stays halted across restarts of the process, which logs it as it
// starts. Nothing is skipped unless someone asks ([Runner.Skip]).
//
// Operators may listen to tables other operators write (the derived changes come back
// through the WAL). An operator that would feed itself, directly or through others, is
// refused when the [Runner] is created.
//
// When a [Runner] starts, it prepares every SQL operator's query and delete statement, and
// a select of each entity's id column, in the followed database: a statement that does not
// parse or names a missing table or column fails [Runner.Run] with the operator's name and
// the statement, before any event.
//
// # Ids and schema changes
//
// An SQL operator finds the derived row an event affects in the event's id column
// ([SQL].ID). A NULL there means no derived row (a comment without a post): the event runs
// nothing. A missing column is an error that halts the operator at once
// ([*IDColumnError]), never a skip:
//
//   - An insert's or update's new record carries every column of its table, so a missing id
//     column means the table no longer has it: it was renamed or dropped (ALTER TABLE
//     comments RENAME COLUMN post_id TO parent_id). Map the entity to the new column, fix
//     the query, restart walflow with that configuration, then restart the operator: it
//     resumes at the first event without the column, since it applied every one before.
//   - A delete's old record carries only the table's replica identity: with the default
//     identity, the primary key. An operator whose id column is another one (comments
//     mapped to post_id) cannot know which derived row a delete affects, so it halts and
//     says to set REPLICA IDENTITY FULL, skip the delete and backfill the operator. Set
//     REPLICA IDENTITY FULL on every entity whose id column is not its primary key.
//   - An update's old record is absent, or holds the key only, without REPLICA IDENTITY
//     FULL; the operator then recomputes the new record's id alone, so a row moved to
//     another parent leaves the old parent's derived row stale.
//
// # Writing the query
//
// The query runs for every event of its entities, so it should write only when the derived
// row changes: a MERGE whose WHEN MATCHED carries an IS DISTINCT FROM guard over the
// derived columns skips the no-op updates, which otherwise each make a row version, WAL
// and, for a followed derived table, an event (without it, 100,000 comment inserts made
// 100,007 updates, most changing nothing). Index each id column the query filters on
// (comments(post_id) for a count of a post's comments): without it every event scans the
// table (160 events/s instead of 1,000).
//
// # Instances and ledgers
//
// Two runners of one instance on one shared ledger (the nodes of a walflow cluster, for
// the moment the operators move from one to the other) apply each event once between
// them: a batch moves the checkpoint only from before its first event, in the transaction
// of its effects, so the batch of a runner that fell behind the stored checkpoint rolls
// back, and that runner resumes from the stored checkpoint. Each node reads the shared
// stream at its own pace, so a checkpoint another node committed may lie past this node's
// view of it: with [Config].SharedLedger (the engine sets it in a cluster) the runner then
// waits, as long as it takes, for its view to reach the checkpoint before it starts the
// operator, and never halts it for that. Without it, a runner waits at most
// [ledger.CatchUpWait] before calling such a checkpoint another ledger's.
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
// another ledger, lies past the head of a ledger that is not shared, or whose recorded
// event has another LSN in its ledger: the ledger was moved aside for a resync, deleted,
// or is a memory ledger that restarted. Such an operator holds the ledger's retention and process status back until
// [Reset] starts it over on the runner's ledger and rebuilds its rows.
//
// # Backfill
//
// [Backfill] (walflow operator backfill NAME) runs an operator for every existing id of its
// entities, in resumable batches: for rows that existed before the operator, after a TRUNCATE,
// or after a skip. Its batches take the same lock as the live operator's, so running it while
// events flow still leaves the derived rows exact.
//
// # Parking
//
// An operator with OnFailure [Park] does not halt on an event that fails past its retries
// (or at once, for a failure retries cannot heal): it parks the event for the derived row it
// failed on (the id its ID mapping gives; for a [Func], its ID function) and goes on. Later
// events of that row are parked behind it, in position order, without being applied; the
// events of every other row, and the event's effect on its other rows (a comment moved
// between posts recomputes both), go on. A parked event is a row of walflow.operator_parked,
// keyed by (instance, operator, derived id, position), with its error; it is written in the
// transaction that moves the checkpoint past the event, so a crash never loses nor repeats
// one. An event whose row cannot be told (an [IDColumnError]) still halts the operator.
//
// [Parked] lists a row's parked events. [Runner.Retry] (or [RequestRetry], carried out by
// the running runner within its ControlInterval: walflow operator retry) applies a row's
// parked events in position order, in one transaction that also deletes them, so each is
// applied exactly once; when one fails again, they all stay parked, the first with the new
// error. Retries read the events from the ledger, whose retention keeps them. [Discard]
// drops a row's parked events unapplied (walflow operator discard NAME --id ID), after which
// a backfill makes the row exact.
//
// Process status ([Runner.ParkedPositions], processstatus.Parker) counts a parked event as
// not processed, by its entity's timestamp; the events of other rows are processed as the
// operator passes them. An LSN after the first parked event is not processed: LSNs promise
// that every earlier transaction is.
//
// # Truncate
//
// A TRUNCATE of a listened table carries no ids, so operators ignore it by default; run a
// backfill of the operator afterwards to make its derived rows exact again.
//
// # Retention
//
// The ledger's retention removes old events, but never past [Runner.Checkpoint]: the lowest
// stored checkpoint of the runner's operators, halted ones included, and never past a
// parked event, so none of them ever misses an event. An operator that was not running while the ledger was truncated may find
// its checkpoint before the ledger's tail. If it never committed an event it starts at the
// tail (backfill it for the rows older events changed); otherwise it halts with an error
// wrapping ledger.ErrTruncated, since it missed events: backfill it, then skip, which
// resumes it at the tail.
package operator
