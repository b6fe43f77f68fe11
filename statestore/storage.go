package statestore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/walflow/walflow/event"
)

// Storage keeps the savepoints of runs. The seven methods are the state store operations:
// initialize a run, ask whether it is initialized, save a savepoint, read the latest
// savepoint or only its timestamp, delete the old savepoints, delete the run.
//
// Every method validates runID with [ValidateRunID] and returns that error unchanged, takes
// a context that bounds the call (a cancelled context makes it fail with an error wrapping
// ctx.Err()), and is safe for concurrent use. The backends of this module also implement
// [Lister].
type Storage interface {
	// InitRun initializes the storage of a run, so that savepoints can be saved for it. It
	// does nothing when the run is already initialized: its savepoints are kept.
	InitRun(ctx context.Context, runID string) error

	// IsInitialized reports whether the run is initialized, that is whether InitRun was
	// called and DeleteRun was not called since.
	IsInitialized(ctx context.Context, runID string) (bool, error)

	// SaveSavepoint saves sp as the latest savepoint of the run, atomically and durably:
	// readers see all of it or none of it. It returns an error wrapping [ErrNotInitialized]
	// when the run is not initialized, [ErrInvalidSavepoint] when sp fails
	// [Savepoint.Validate], and [ErrOutOfOrder] when sp.Timestamp is before the latest
	// savepoint's timestamp (an equal timestamp is fine). It keeps no reference to sp's
	// slices.
	SaveSavepoint(ctx context.Context, runID string, sp Savepoint) error

	// LatestSavepoint returns the savepoint saved last. It returns an error wrapping
	// [ErrNoSavepoint] when the run has none, and [ErrNotInitialized] when the run is not
	// initialized. The entities come in the order they were saved in, and the returned
	// slices belong to the caller.
	LatestSavepoint(ctx context.Context, runID string) (Savepoint, error)

	// LatestTimestamp returns the timestamp of the savepoint saved last, in milliseconds
	// since the Unix epoch, without reading its entities. It fails as LatestSavepoint does.
	LatestTimestamp(ctx context.Context, runID string) (int64, error)

	// DeleteOldSavepoints deletes the savepoints of the run except the keep most recent,
	// in the order they were saved (of savepoints with equal timestamps, the ones saved
	// first go first). keep 0 deletes every savepoint, leaving the run initialized with
	// none; a keep at or above the number of savepoints deletes nothing; a negative keep is
	// an error and deletes nothing. It returns an error wrapping [ErrNotInitialized] when the
	// run is not initialized.
	DeleteOldSavepoints(ctx context.Context, runID string, keep int) error

	// DeleteRun deletes the run and all its savepoints, atomically. Afterwards the run is
	// not initialized; InitRun starts it again with no savepoints. Deleting a run that is
	// not initialized does nothing and returns nil.
	DeleteRun(ctx context.Context, runID string) error
}

// Lister is implemented by every backend in this module, beside [Storage]: it lists a run's
// savepoints without their entities, for tools that show what is stored and for the
// conformance suite, which checks with it exactly which savepoints DeleteOldSavepoints kept.
type Lister interface {
	// ListSavepoints returns the run's savepoints, oldest first (in the order they were
	// saved). It returns an empty list when the run has none, and an error wrapping
	// [ErrNotInitialized] when the run is not initialized.
	ListSavepoints(ctx context.Context, runID string) ([]SavepointInfo, error)
}

// SavepointInfo describes a savepoint without its entities.
type SavepointInfo struct {
	// Timestamp is the savepoint's timestamp, in milliseconds since the Unix epoch.
	Timestamp int64
	// Position is the ledger position saved with it.
	Position event.Position
	// Entities is how many entities it has.
	Entities int
}

// Savepoint is the state of a run at one moment.
type Savepoint struct {
	// Timestamp is when the savepoint was taken, in milliseconds since the Unix epoch
	// (time.Time.UnixMilli). It must not be before the timestamp of the run's latest
	// savepoint.
	Timestamp int64
	// Position is the ledger position the state reflects: every event up to and including
	// Position has been applied, so a consumer restarting from the savepoint reads the
	// ledger after Position. It is 0 for a state built from no event. It is at most
	// math.MaxInt64, which a ledger never reaches, so that every backend can store it.
	//
	// The savepoint carries this typed position rather than an opaque metadata field
	// because it is the one thing every consumer needs to restart, it must commit with the
	// state it describes, and as a column it can be read by tools (pg stores it as
	// bigint). Anything else a consumer needs beside its state, such as the version of its
	// state encoding, goes in an entity with an id of its own.
	Position event.Position
	// Entities is the state, one entry per entity, in the order the consumer chooses.
	// Entity ids must be distinct. It may be empty.
	Entities []Entity
}

// Time returns the savepoint's timestamp as a time.Time.
func (sp Savepoint) Time() time.Time { return time.UnixMilli(sp.Timestamp) }

// Entity is the saved state of one entity of a run.
type Entity struct {
	// ID names the entity within the savepoint. It must be valid UTF-8 without NUL bytes
	// (so that it fits PostgreSQL's text type); it may be empty.
	ID string
	// State is the entity's state, encoded as the consumer chooses; backends store it as
	// given, without looking inside. Nil and empty are the same: both read back as empty.
	State []byte
}

// Errors of every backend. Callers branch on them with errors.Is: backends wrap them with
// the run and operation.
var (
	// ErrNotInitialized: the run is not initialized (or was deleted). Call InitRun first.
	ErrNotInitialized = errors.New("statestore: run not initialized (call InitRun first)")
	// ErrNoSavepoint: the run is initialized but has no savepoint (none saved yet, or all
	// deleted). A consumer starts from the beginning.
	ErrNoSavepoint = errors.New("statestore: no savepoint")
	// ErrOutOfOrder: a savepoint's timestamp is before the latest savepoint's.
	ErrOutOfOrder = errors.New("statestore: savepoint out of order")
	// ErrInvalidRunID: a run id fails ValidateRunID.
	ErrInvalidRunID = errors.New("statestore: invalid run id")
	// ErrInvalidSavepoint: a savepoint fails Savepoint.Validate.
	ErrInvalidSavepoint = errors.New("statestore: invalid savepoint")
)

// MaxRunIDBytes is the longest valid run id, in bytes.
const MaxRunIDBytes = 255

// ValidateRunID returns nil when id is a valid run id: 1 to [MaxRunIDBytes] bytes of valid
// UTF-8 without control characters (such as NUL, tab or newline). Otherwise it returns an
// error wrapping [ErrInvalidRunID] that says what is wrong.
func ValidateRunID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: the run id is empty; name the run, e.g. \"orders-projector\"", ErrInvalidRunID)
	}
	if len(id) > MaxRunIDBytes {
		return fmt.Errorf("%w: %.40q... is %d bytes; use at most %d", ErrInvalidRunID, id, len(id), MaxRunIDBytes)
	}
	for i, r := range id {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(id[i:]); size == 1 {
				return fmt.Errorf("%w: %q is not valid UTF-8 (at byte %d); use a UTF-8 string", ErrInvalidRunID, id, i)
			}
		}
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %q has the control character %U at byte %d; use printable characters", ErrInvalidRunID, id, r, i)
		}
	}
	return nil
}

// EntityIDProblem says what makes id unfit for an entity id ("which is not valid UTF-8;
// ...", "which has a NUL byte at N; ..."), or returns "" when it is fine. The empty id is
// fine here.
func EntityIDProblem(id string) string {
	if !utf8.ValidString(id) {
		return "which is not valid UTF-8; encode entity ids as UTF-8 text"
	}
	if j := strings.IndexByte(id, 0); j >= 0 {
		return fmt.Sprintf("which has a NUL byte at %d; leave NUL out of entity ids", j)
	}
	return ""
}

// Validate returns nil when sp can be saved: its Position is at most math.MaxInt64 and its
// entity ids are distinct, valid UTF-8 and free of NUL bytes. Otherwise it returns an error
// wrapping [ErrInvalidSavepoint] that names the first bad entity.
func (sp Savepoint) Validate() error {
	if sp.Position > math.MaxInt64 {
		return fmt.Errorf("%w: position %d is above math.MaxInt64; a ledger position never gets there, pass the position of the last event applied", ErrInvalidSavepoint, sp.Position)
	}
	seen := make(map[string]int, len(sp.Entities))
	for i, e := range sp.Entities {
		if problem := EntityIDProblem(e.ID); problem != "" {
			return fmt.Errorf("%w: entity %d has the id %q, %s", ErrInvalidSavepoint, i, e.ID, problem)
		}
		if first, dup := seen[e.ID]; dup {
			return fmt.Errorf("%w: entities %d and %d have the same id %q; give each entity one entry", ErrInvalidSavepoint, first, i, e.ID)
		}
		seen[e.ID] = i
	}
	return nil
}
