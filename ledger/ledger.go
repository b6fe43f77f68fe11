// Package ledger is walflow's append-only, durable event log.
//
// # Concepts
//
// The ledger holds every event the source decoded, at gap-free positions from 1 in commit
// order. A single writer (the source) appends one transaction at a time:
// [Ledger.BeginTx], [Ledger.Append] for each event, [Ledger.CommitTx]. Committed transactions
// become durable and visible to readers together at the next [Ledger.Sync], which lets the
// source group many small transactions into one fsync. A transaction is atomic yet
// streamed: its events may reach storage before CommitTx, so a transaction of a million
// rows is never held in memory, but readers never see a partial transaction, and one a
// crash interrupted is removed when the ledger is opened again.
//
// Each event is indexed under the keys an [Indexer] gives it (walflow uses channel names:
// comments, comments/7, posts/42/comments), so that any channel can be read from any
// position with [Ledger.ReadKeys].
//
// The ledger also remembers which PostgreSQL database and slot it follows ([Origin]) and the
// highest LSN that may have been acknowledged to the slot, so the source can tell a slot that
// was dropped and recreated, or a restored database, from a normal restart.
//
// # Retention
//
// [Ledger.Truncate] removes the oldest events, so that the ledger does not grow without
// bound. Positions are never reused: [State].Tail is the last removed position, and a read
// from before it fails with an error wrapping [ErrTruncated] instead of silently skipping the
// removed events. A reader that gets it has lost events for good: it must reload its state
// from the database and subscribe again from the head.
//
// # Backends
//
// ledger/disk is the default, embedded and crash-safe (segment files); ledger/pebble reads
// and writes the Pebble format of earlier walflow versions; ledger/memory is for tests and
// throwaway runs. ledger/ledgertest is the conformance suite every backend passes.
package ledger

import (
	"context"
	"errors"
	"fmt"

	"github.com/walflow/walflow/event"
)

// Sentinel errors.
var (
	// ErrClosed is returned by calls on a closed ledger.
	ErrClosed = errors.New("ledger: closed")
	// ErrNoTx is returned by Append, CommitTx or AbortTx without an open transaction.
	ErrNoTx = errors.New("ledger: no open transaction; call BeginTx first")
	// ErrTxOpen is returned by BeginTx while a transaction is open.
	ErrTxOpen = errors.New("ledger: a transaction is already open; commit or abort it first")
	// ErrOutOfOrder is returned by BeginTx for a transaction whose commit LSN is not after
	// the last appended one: the caller must skip transactions the ledger already holds.
	ErrOutOfOrder = errors.New("ledger: transaction commit LSN is not after the last appended transaction")
	// ErrTruncated is wrapped by the error of a read from a position Truncate has removed
	// (after < State().Tail); the error is a [*TruncatedError], which names the positions.
	ErrTruncated = errors.New("ledger: events removed by retention")
	// ErrWriteFailed is matched (errors.Is) by the errors of a writer that a failed write or
	// fsync stopped (a full disk, an I/O error): it accepts no further writes, so retrying
	// cannot help until the process restarts. Wrap such errors with [WriteFailed].
	ErrWriteFailed = errors.New("ledger: write failed")
)

// WriteFailed returns err, with its text unchanged, marked so that errors.Is(err,
// ErrWriteFailed) holds.
func WriteFailed(err error) error { return writeFailedError{err} }

type writeFailedError struct{ err error }

func (e writeFailedError) Error() string        { return e.err.Error() }
func (e writeFailedError) Unwrap() error        { return e.err }
func (e writeFailedError) Is(target error) bool { return target == ErrWriteFailed }

// TruncatedError is the error of a read from a position the ledger no longer holds. It
// wraps [ErrTruncated].
type TruncatedError struct {
	// After is the position the read asked for events after.
	After event.Position
	// Tail is the ledger's tail at the time: the oldest position still available is Tail+1.
	Tail event.Position
}

func (e *TruncatedError) Error() string {
	return fmt.Sprintf("%s: events after position %d were requested, but the oldest position still available is %d; the reader has missed events for good and must reload its state and resubscribe from the head",
		ErrTruncated, e.After, e.Tail+1)
}

// Unwrap returns [ErrTruncated].
func (e *TruncatedError) Unwrap() error { return ErrTruncated }

// Origin names the PostgreSQL database and replication slot a ledger follows.
type Origin struct {
	// SystemID is the database cluster's system identifier (IDENTIFY_SYSTEM).
	SystemID string
	// Timeline is the cluster's timeline; it changes when a standby is promoted.
	Timeline int32
	// Database is the database name.
	Database string
	// Slot is the logical replication slot name.
	Slot string
}

// IsZero reports whether no origin was recorded yet.
func (o Origin) IsZero() bool { return o == Origin{} }

// State is the ledger's durable bookkeeping.
type State struct {
	// Head is the last durable, visible position; 0 when the ledger is empty.
	Head event.Position
	// Tail is the last position Truncate removed: every event at or before it is gone, and
	// reads must start at or after it. 0 when nothing was ever removed. Tail <= Head.
	Tail event.Position
	// LastCommitLSN is the commit LSN of the last durable transaction. The source skips
	// transactions PostgreSQL replays whose commit LSN is not after it.
	LastCommitLSN event.LSN
	// LastEndLSN is the end LSN of the last durable transaction.
	LastEndLSN event.LSN
	// AckedLSN is the highest LSN that may have been sent to the slot as flushed. It is
	// recorded durably before it is sent, so a slot whose confirmed position is beyond it
	// was moved by someone else (or dropped and recreated).
	AckedLSN event.LSN
	// Origin is the database and slot the ledger follows; zero until the first run records it.
	Origin Origin
}

// Indexer returns the index keys of an event, appended to dst. Keys must be non-empty and
// contain no NUL byte. It is called from the writer's goroutine and from Truncate's (to find
// the index entries of the events it removes), so it must be safe for concurrent use, and it
// must not block.
type Indexer func(e *event.Event, dst []string) []string

// Ledger is the append-only event log. The write methods (BeginTx, Append, CommitTx,
// AbortTx, Sync, SetAcked, SetOrigin) are called from one goroutine; the read methods and
// Truncate are safe for concurrent use with each other and with the writer.
type Ledger interface {
	// BeginTx opens a transaction. meta.CommitLSN must be after State().LastCommitLSN.
	BeginTx(ctx context.Context, meta event.TxMeta) error
	// Append adds an event to the open transaction and sets e.Position. The ledger keeps
	// no reference to e after Append returns.
	Append(ctx context.Context, e *event.Event) error
	// CommitTx closes the open transaction, whose commit record ends at endLSN (pgoutput
	// sends it only in the Commit message, so BeginTx's meta.EndLSN may be zero). It becomes
	// durable and visible at the next Sync, and State().LastEndLSN is then endLSN.
	CommitTx(ctx context.Context, endLSN event.LSN) error
	// AbortTx drops the open transaction's events.
	AbortTx(ctx context.Context) error
	// Sync makes every committed transaction durable, then visible to readers, and wakes
	// Wait. When it returns nil, State reflects them. An open transaction stays open and
	// invisible.
	Sync(ctx context.Context) error
	// SetAcked durably records the highest LSN that may be acknowledged to the slot.
	SetAcked(ctx context.Context, lsn event.LSN) error
	// SetOrigin durably records the database and slot the ledger follows.
	SetOrigin(ctx context.Context, o Origin) error
	// State returns the durable bookkeeping.
	State() State
	// Truncate durably removes every event at or before position through, with its index
	// entries, and makes through the new State().Tail. through is clamped to the head; a
	// through at or before the tail does nothing. The bookkeeping that recognises replayed
	// transactions (LastCommitLSN, LastEndLSN, AckedLSN) is kept, and positions are not
	// reused. A Truncate interrupted by ctx or a failure may have removed a prefix of the
	// events, with the tail moved accordingly. It may be called from any goroutine, and
	// concurrent calls are serialized.
	Truncate(ctx context.Context, through event.Position) error

	// Read returns up to limit events after position after, in order, up to the head. It
	// fails with an error wrapping ErrTruncated when after < State().Tail.
	Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error)
	// ReadKeys returns up to limit events after position after that carry any of the
	// index keys, in position order, each event once, up to the head. It fails with an
	// error wrapping ErrTruncated when after < State().Tail.
	ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error)
	// Wait blocks until the head is past after, ctx ends (its error is returned) or the
	// ledger is closed (ErrClosed).
	Wait(ctx context.Context, after event.Position) error
	// Close releases the ledger. Reads and waits in progress end with ErrClosed.
	Close() error
}
