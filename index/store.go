package index

import (
	"context"

	"github.com/walflow/walflow/event"
)

// State is an indexer's stored bookkeeping, written atomically with its entries.
type State struct {
	// Checkpoint is the last ledger position the indexer has indexed: the entries of every
	// event at or before it are stored.
	Checkpoint event.Position
	// Since is the ledger's tail when the indexer started from scratch, or when retention
	// removed events it had not indexed yet: its entries for the events at or before it
	// are incomplete, and the ledger no longer holds those events. 0 when the index covers
	// the whole history.
	Since event.Position
	// Version is the [Indexer.Version] the entries were made with.
	Version string
}

// Entry is one index entry: an event's position under one of its values.
type Entry struct {
	Value    string
	Position event.Position
}

// Batch is one atomic write of an indexer: new entries and the state that covers them.
type Batch struct {
	// Indexer is the indexer's name.
	Indexer string
	// Entries are added to the indexer's entries; an entry already stored is kept once.
	Entries []Entry
	// State replaces the indexer's state.
	State State
}

// Store keeps the entries and state of indexers. index/memory and index/disk implement it,
// and index/indextest is the conformance suite they pass. Its methods are safe for
// concurrent use; each indexer is written by one goroutine at a time.
//
// Deleting an indexer's data (Reset, or removing a disk store's directory while nothing
// runs) is always safe: the [Runner] finds no state and rebuilds it from the ledger.
type Store interface {
	// State returns the indexer's state; ok is false when the store holds nothing for it
	// (never indexed, or its data was deleted).
	State(ctx context.Context, indexer string) (st State, ok bool, err error)
	// Write applies the batches atomically: after a crash the store holds all of them or
	// none. Entry values contain no NUL byte.
	Write(ctx context.Context, batches ...Batch) error
	// Positions returns up to limit positions after after under the indexer's value, in
	// ascending order.
	Positions(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Position, error)
	// Entries calls fn with every entry of the indexer, in order of value (bytewise) then
	// position, and stops at fn's first error, which it returns.
	Entries(ctx context.Context, indexer string, fn func(Entry) error) error
	// Reset deletes the indexer's entries and state.
	Reset(ctx context.Context, indexer string) error
}

// SharedStore is a [Store] that several processes share, one writing each indexer while
// the others follow it (see [Runner.Follow]): it also lists the entries a stretch of
// positions got, which is how a follower learns what the writer indexed.
type SharedStore interface {
	Store
	// EntriesSince calls fn with every entry of the indexer whose position is after after
	// and at or before through, in order of position then value (bytewise), and stops at
	// fn's first error, which it returns.
	EntriesSince(ctx context.Context, indexer string, after, through event.Position, fn func(Entry) error) error
}

// FenceChecker is a [SharedStore] that fences each process's writes of an indexer on what
// it last saw of it (as index/pg does), and checks that fence without writing. A
// [Runner.Run] on one checks it every Config.FollowInterval while an indexer is live, so
// that it stops when another process reset the indexer (walflow index rebuild) or took it
// over, even while no event comes.
type FenceChecker interface {
	SharedStore
	// CheckFence returns nil when the indexer's next write would pass the fence, and the
	// error the write would fail with when another process wrote or reset the indexer
	// since this one last read or wrote it. Other errors (the store is unreachable) are
	// returned as they are.
	CheckFence(ctx context.Context, indexer string) error
}
