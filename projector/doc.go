// Package projector runs projectors: named, ordered consumers of the ledger that build read
// models, each with a stored position.
//
// # Concepts
//
// A [Projector] has a name, a filter (Entities, Keys, Events) and a handler: Handle, which
// receives each event, or HandleTx, which receives each event with the PostgreSQL
// transaction that also commits the projector's new position. A [Runner] runs a set of
// projectors on a ledger. On start each projector loads its position from a
// [PositionStore] (by default the walflow.projectors table, created when missing),
// rehydrates by reading the ledger from there, and then follows it live, in one loop: there
// is no seam between history and live events where one could be missed or handed over
// twice. [Runner.Status] tells, for each projector, its position, its lag behind the
// ledger's head, and whether it is rehydrating, live or halted.
//
// # Guarantees
//
// Events reach a handler in ledger order, which is commit order. With HandleTx the
// handler's writes and the position commit in one transaction, so each event's effect
// happens exactly once, across crashes too. With Handle the position is saved after each
// batch (Config.BatchSize events), so after a crash the events of the last unsaved batch
// are handed over again: at-least-once; make such a handler idempotent.
//
// A failing event is retried alone with a [retry.Policy] (500ms, ×2, at most 10s, 5
// retries by default); the events before it are committed. When the retries run out the
// projector halts: its error is stored and shown by Status, then reported to
// Config.Reporter (the engine's ErrorReporter); the other projectors go on, and it stays
// halted, across restarts too, until [Runner.Restart] (resume at the failed event) or
// [Runner.Reset] (replay everything, for a rebuilt read model).
//
// # Dependencies
//
// A projector whose handler reads another's read model lists it in DependsOn. It then
// never receives an event before the projectors it depends on have applied it, and it goes
// live only after they are live. The Runner refuses unknown names and cycles. A halted
// dependency holds its dependents back.
//
// # Replicas
//
// Several processes may run the same projectors over the same ledger. With a
// [Locker] (the default PostgreSQL store is one) each projector runs in one process at a
// time: the runner takes its PostgreSQL advisory lock before loading its position, and a
// projector whose lock another process holds shows [Standby] in Status until that process
// stops or dies (its connection ends and PostgreSQL frees the lock); a standby takes over
// within Config.LockInterval and resumes from the stored position. A dependent projector
// is only taken with the projectors it depends on, so a chain never splits across
// processes. When the lock session is lost the runner stops its projectors at once and
// stands by until it takes their locks again.
//
// A stored position counts the events of one ledger, so a checkpoint records which ledger
// (the PostgreSQL system, database and slot it follows). A runner refuses, by halting the
// projector with an error wrapping [ErrForeignLedger] and without touching the store, a
// checkpoint of another ledger (another engine with the same projector names and database)
// or one past its ledger's head (a ledger deleted and started again); a reset replays the
// runner's ledger. On a ledger several processes read at their own pace (the shared stream
// of a walflow cluster: [Config].SharedLedger), a position past this process's view of it
// means the view lags: the projector waits for it instead.
//
// # No missed or out-of-order events
//
// A projector never misses an event nor sees one out of order, so there is no error for
// either (no MissedEventError) and nothing compares an event's id with the last one
// processed. Projectors do not read ids: they read the ledger, whose positions are gap-free
// and in commit order. An event at position p is committed and durable before any
// event at p+1, a projector always resumes from its stored position, and nothing reaches
// the ledger until its transaction commits, so a projector can neither miss an event nor
// see one out of order. A rolled-back transaction never reaches the ledger at all. For
// the normal case there is nothing to detect and no delay to wait out.
//
// # Application sequences
//
// Some applications give their events a number of their own, such as an events table
// (id bigserial, stream_identifier, type, payload) whose readers expect ids 1, 2, 3, ...
// with no hole. A serial is allocated when the row is inserted, not when the transaction
// commits: a transaction that took id 10 may commit after the one that took id 11, or roll
// back and leave 10 unused forever. The ledger then holds 11 before 10, or 11 without 10.
// When a projector must apply such events in number order, give it a [SequenceConfig].
// Events are then ordered by the number in Sequence.Column, per table or, with
// StreamColumn, per stream. An event whose number is not the next one waits in a bounded
// reorder buffer until the missing number arrives, or until Sequence.Grace shows its
// transaction rolled back: the missing numbers are then skipped, with a warning. Grace
// counts in commit time as the ledger is read (so a projector rehydrating history decides
// at once, from the history) and in wall time once the projector has read the whole ledger.
// A full buffer halts the projector with an error wrapping [ErrBufferFull]; a number that
// arrives after it was skipped halts it with an error wrapping [ErrLate] (or is dropped,
// with SkipLate). Neither crashes, drops silently, or applies an event twice: the stored
// checkpoint records the next number of each sequence with the position, so events held in
// the buffer at a crash are read again and those applied are not.
//
// # Stateful projectors
//
// A projector whose read model fits in memory need not write it anywhere on each event.
// Register it with a [SavepointStore] ([SavepointStore.Stateful]) and give it a
// [StateHandlerFunc]: it applies each event to a [State], a map from entity id to bytes, and
// the store saves the whole state with the position it matches as a savepoint of a
// statestore.Storage (PostgreSQL, the embedded disk store, or memory) every
// SavepointConfig.Every events or Interval. On start it loads the latest savepoint and
// replays only the events after it; a clean stop saves a final savepoint (the store is a
// [Flusher]), so the next start replays nothing. A savepoint is never taken in the middle
// of an event or of a batch the position does not cover: the state and the position always
// agree.
//
// # Shutdown
//
// Run returns when its context ends, once every projector has finished the event it was
// handling and saved its position, and the store was flushed when it is a [Flusher].
// Cancelling the context interrupts a handler's context
// too: a HandleTx transaction then rolls back, and its events are applied again at the
// next start.
//
// # Retention
//
// [Status].Position is the stored position, which a restart resumes after. A projector
// saves it with each batch, and at most every second while it only passes events it does
// not apply, so it follows the head. The engine's retention (projectors given in
// walflow.Config.Projectors) never removes events past it; a Runner you run yourself is
// unknown to retention. A projector whose position falls before the ledger's tail halts
// with an error wrapping ledger.ErrTruncated (one that never read an event starts at the
// tail).
package projector
