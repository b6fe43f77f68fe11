// Package walflow turns PostgreSQL's write-ahead log into an ordered, durable stream of
// change events for Go applications.
//
// # Concepts
//
// An [Engine] follows one database through a logical replication slot (source/pgwal),
// appends every committed change to a durable ledger (ledger/disk by default) at gap-free
// positions in commit order, and lets Go code subscribe to channels of those events from any
// position ([Engine.Subscribe]). Channels name what a subscriber wants: a table (comments),
// one row (comments/7), or the rows of a scope (posts/42/comments); see package channel.
//
// # Guarantees
//
// Every committed change of the configured tables reaches the ledger once, in commit order.
// The slot is acknowledged only after the ledger made the change durable, so a crash loses
// nothing and PostgreSQL's replays are recognised and skipped. A subscription delivers its
// channels' events in ledger order; subscribing again from [Subscription.Position] continues
// with no gap and no duplicate.
//
// The ledger keeps events for [Config.Retention] (7 days by default), but never removes one
// an operator has not committed or process status has not scanned. A subscription that asks
// for removed events ends with an error wrapping ledger.ErrTruncated instead of skipping
// them: its subscriber must reload its state and subscribe again from the head.
//
// # Shutdown
//
// [Engine.Run] blocks until its context ends, then syncs what it appended, acknowledges it
// to the slot and returns. [Engine.Close] releases the ledger afterwards.
package walflow
