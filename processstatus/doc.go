// Package processstatus tells whether a write has been processed by walflow, so that an
// API can answer a client who just wrote something and now reads data derived from it.
//
// # Concepts
//
// An event is processed when it is in the ledger, delivered to pubsub (subscribers read the
// ledger, so an event is published once it is visible there), and every operator listening
// to its entity has committed past it. A [Watermark] reports the last of these: for each
// entity, the ledger position up to which all its operators have committed (the ledger head
// when none listens). The [Tracker] reads the ledger in order and compares each event's
// position with its entity's watermark. It keeps, per entity (table), the processed value
// of the entity's timestamp column (updated_at by default; timestamptz, timestamp taken as
// UTC, or bigint microseconds), in microseconds since the Unix epoch, and the ledger
// position through which every event is processed.
//
// An application that writes a row returns its timestamp to the client ([HeaderValue]:
// posts/1422057007123000), or the LSN right after its commit ([CurrentLSN]: 16/B374D848).
// The client sends it back on its next request, and [Middleware] answers 425 Too Early
// with Retry-After until the write is processed, or waits for it up to a bound.
//
// # Processed and ProcessedLSN
//
// [Tracker.Processed](entity, micros) is true when an event of entity whose timestamp is at
// least micros is processed (and with it every earlier event of entity). Timestamps come
// from application and database clocks and are not an order: now() is the start time of a
// transaction, so a transaction that started first may commit last, and clocks of several
// application servers disagree. A write with timestamp T may therefore still be in flight
// while another write of the same entity with a later timestamp is already processed, and
// Processed(entity, T) is then true too early for it. Entities are also independent: a
// processed posts row says nothing of comments.
//
// [Tracker.ProcessedLSN](lsn) is stronger. Commit LSNs are PostgreSQL's total order of
// transactions, and the ledger holds events in that order, so ProcessedLSN is true only when
// every transaction that committed at or before lsn, on every table walflow follows, is in
// the ledger and processed. It needs the ledger to have seen the WAL up to lsn: a
// transaction committed at or after lsn, or the source's acknowledgement of the WAL past
// lsn. Use it when a client's next read may depend on several tables or on concurrent
// writers.
//
// Both are conservative: they may report false for a while after the fact (up to the next
// round of the tracker, or longer when an operator lags), but never true before every
// listening operator has committed (Processed within the limits of timestamps above). Watermarks are assumed to move forward only: an
// operator added or rewound later does not make processed events unprocessed again.
//
// # Parked events
//
// An operator that parks an event it keeps failing on (operator OnFailure Park) passes it,
// and goes on with the events of other derived rows. A [Watermark] that implements [Parker]
// (the operator runner does) lists the parked events: [Tracker.Processed] is false for the
// timestamp of a parked event of its entity, and true for the others the watermark passed;
// [Tracker.ProcessedLSN] stays before the first parked event, since an LSN promises that
// every transaction before it is processed. A retry that applies them makes them processed.
//
// # Memory
//
// Entities progress independently: an operator that lags or is halted holds back only its
// own entities (and ProcessedLSN). The tracker remembers each entity's unprocessed events
// up to a bound (1024); beyond it, neighbours are merged into the later one, which delays
// but never advances their report.
//
// # Stores
//
// A [Store] keeps the status across restarts: the per-entity timestamps and the position a
// restarted tracker resumes reading from, so a restart does not rescan the whole ledger.
// processstatus/memory keeps it in memory, [NoStore] keeps nothing (the tracker then reads the
// whole ledger at each start, from its tail when retention truncated it), and
// processstatus/pg keeps it in PostgreSQL, in
// walflow.process_status, writing each entity at most once per flush interval.
// processstatus/processstatustest is the conformance suite for stores.
//
// # Shutdown
//
// [Tracker.Run] returns when its context ends; it flushes a buffering store ([Flusher])
// before it returns. Queries keep answering from the last status after Run returned.
package processstatus
