// Package retry decides what walflow does when a consumer of the ledger (an operator, a
// projector, an index) fails on an event: wait and try the event again, wait for the
// database to come back, or halt the consumer and tell a person.
//
// # Pieces
//
//   - [Policy] is the backoff: how long to wait before each retry, and how many retries
//     follow the first failure before the consumer halts. The zero Policy is the default:
//     500 ms, ×2 per retry, at most 10 s, 5 retries.
//   - [IsTransient] tells a database that cannot be reached (a network error, a connection
//     exception, a server shutting down) from a failure of the event itself. Transient
//     failures are waited out with the policy's backoff without spending the event's
//     retries.
//   - [IsPermanent] tells a failure that retrying cannot heal: PostgreSQL's class 42
//     (syntax error or access rule violation) and class 22 (data exception), or an error
//     that says so with a Permanent method. Such a failure halts at once.
//   - [Loop] retries one failing event by these rules and reports each retry and the halt
//     to a [Reporter].
//   - [Reporter] receives retries and halts, named by [Consumer] (kind and name), so that
//     one reporter (the engine's ErrorReporter) serves operators, projectors and indexes.
//     [LogReporter] logs them.
//
// # Guarantees
//
// A [Loop] never skips the event: it returns only when the event succeeded, when the
// consumer halted on it, or when its context ended. A halt is recorded by the consumer
// ([Loop.HaltFunc]) before the [Reporter] sees it, so that whoever reacts to the report
// finds the halt recorded. Transient failures never halt a consumer: it waits, however
// long the database stays away.
package retry
