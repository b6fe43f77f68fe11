// Package snapshot reads the rows of a channel from PostgreSQL in one REPEATABLE READ
// snapshot, with a [Token] from which a subscription delivers exactly the changes the rows
// do not contain: a page loads its state and follows it with no gap and no duplicate.
//
// # What is read
//
// A channel's rows are those of its table (an unscoped channel, comments), the one whose
// id column has the channel's id (a direct channel, comments/7), or those whose scope
// columns have the channel's ids (a scoped channel, posts/42/comments), compared as text
// as the router compares events. Each row is an [event.Record] decoded from PostgreSQL's
// text output with the column types the replication source uses, so a row is equal to the
// new_record of the event that last wrote it. Rows come in primary key order.
//
// # Pages
//
// A read returns at most Opts.Limit rows and, when there are more, a cursor (Page.Next) for
// the next page. All pages of a read come from the same snapshot: the first page's
// transaction stays open, on the process that served it, until the last page is read or
// for Config.IdleTimeout after the previous page (then the cursor is refused with
// [ErrCursorExpired] and the load starts over). Pages continue by keyset (primary key
// greater than the previous page's last), so each costs an index range scan. The token is
// issued with the first page and is the same on every page.
//
// # The token, and why it is exact
//
// PostgreSQL decides what a snapshot sees by transaction, not by WAL position: a snapshot
// (xmin, xmax, xip) sees a committed transaction x when x < xmin, or x < xmax and x is not
// in xip. The ledger is in commit-record order, and the two orders differ: a transaction
// writes its commit record, and only then leaves the process array and becomes visible, so
// a snapshot can miss a transaction whose commit record (and ledger position) comes before
// that of one it sees. No ledger position alone separates "in the rows" from "not in the
// rows"; the token therefore carries the snapshot's visibility as well, and a subscriber
// from the token delivers an event exactly when its transaction is not visible in the
// snapshot ([Token.Deliver]). Each transaction's changes are then in the rows or delivered,
// never both and never neither, provided every event of an invisible transaction is read,
// i.e. comes after Token.After. The read takes, on one connection:
//
//  1. l0 := pg_current_wal_insert_lsn(), before the transaction;
//  2. BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; the first statement takes the
//     snapshot and reads pg_current_snapshot() (64-bit xid8 values, so epochs are exact)
//     and l1 := pg_current_wal_insert_lsn() (evaluated after the snapshot was taken);
//  3. the rows, in that snapshot.
//
// Delivered events are those after Token.After with commit LSN >= l1, or whose transaction
// the snapshot does not see:
//
//   - commit LSN >= l1: a visible transaction left the process array before the snapshot,
//     after inserting its commit record, so that record is before l1. Hence an event at or
//     after l1 is never visible: it is delivered without looking at its transaction, and
//     once the ledger is past l1 the token is a plain position.
//   - commit LSN < l1: delivered if and only if the snapshot does not see its transaction.
//     Events carry PostgreSQL's 32-bit xid; it is widened to 64 bits with the epoch of the
//     snapshot's xmax ([FullXID]): PostgreSQL keeps every live transaction id within 2^31
//     of the next one, and the events compared here committed within moments of the
//     snapshot, so the nearest widening is the true one, across a wraparound too.
//
// Token.After must precede every event of an invisible transaction. Such a transaction
// either wrote its commit record at or after l0, and so comes after the last ledger
// position whose commit LSN is before l0; or it wrote it before l0, i.e. before step 1, yet
// had not left the process array when the snapshot was taken (normally microseconds; with
// synchronous replication, the standby's acknowledgement). Token.After is therefore the
// earlier of that position and the last position committed more than Config.RaceWindow
// (30s) before the snapshot. The events between it and l1 are filtered by visibility, so
// going back further costs a little reading and never a duplicate. The one case not covered is a commit that
// stays invisible for longer than RaceWindow after its commit record was written (a
// synchronous standby unreachable for that long): raise RaceWindow if that can happen.
//
// The token does not need the ledger to have reached l1 when it is issued: the rule above
// is per event and holds for events appended later, so a subscriber from the token simply
// reads on. Resuming a subscription (Last-Event-ID, after) keeps the token: the later of the
// two positions is where reading starts, and the visibility rule still applies.
//
// The token's text form is URL-safe: s1.after.l1.xmin.xmax[.xip...], decimal.
package snapshot
