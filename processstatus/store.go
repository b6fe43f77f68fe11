package processstatus

import (
	"context"

	"github.com/walflow/walflow/event"
)

// Store keeps the process status across restarts: per entity, the processed timestamp, and
// the ledger position through which every event is processed, where a restarted [Tracker]
// resumes reading. Backends: [NoStore], processstatus/memory and processstatus/pg
// (PostgreSQL); processstatus/processstatustest is the conformance suite.
//
// The tracker calls Save and SavePosition from its Run goroutine only, and always saves an
// entity's timestamp before a position that covers the event it came from. A store must
// keep that order across a crash: it may lose the latest calls, but never keep a position
// while losing a Save made before it. (A lost Save is re-derived from the ledger on restart,
// because the position it precedes is lost too.) Load and Reset may be called from any
// goroutine.
type Store interface {
	// Save records that entity is processed through micros (microseconds since the Unix
	// epoch), replacing its previous value. The tracker only ever raises an entity's value.
	Save(ctx context.Context, entity string, micros int64) error
	// SavePosition records the ledger position through which every event is processed.
	SavePosition(ctx context.Context, pos event.Position) error
	// Load returns what was saved; an empty Snapshot when nothing was.
	Load(ctx context.Context) (Snapshot, error)
	// Reset removes every entity and the position.
	Reset(ctx context.Context) error
}

// Flusher is implemented by stores that buffer saves, such as pg's. [Tracker.Run] calls
// Flush before it returns, so a graceful stop persists the latest status.
type Flusher interface {
	// Flush writes the buffered saves.
	Flush(ctx context.Context) error
}

// Snapshot is a saved process status.
type Snapshot struct {
	// Entities maps an entity (table) name to its processed timestamp, in microseconds
	// since the Unix epoch.
	Entities map[string]int64
	// Position is the ledger position through which every event is processed; 0 when none
	// was saved.
	Position event.Position
}

// NoStore is a [Store] that keeps nothing: every Load returns an empty [Snapshot]. A tracker
// using it knows only what it observes while it runs: after a restart it reads the ledger
// again from the start (or from the first event the ledger still retains), and until it has
// caught up, writes made before the restart read as not processed. Nothing is ever reported
// processed early, but clients may see 425 for longer after a restart, and a long ledger is
// read in full at each start. Use it for tests and development, or when the ledger is short.
type NoStore struct{}

var _ Store = NoStore{}

// Save does nothing.
func (NoStore) Save(context.Context, string, int64) error { return nil }

// SavePosition does nothing.
func (NoStore) SavePosition(context.Context, event.Position) error { return nil }

// Load returns an empty snapshot.
func (NoStore) Load(context.Context) (Snapshot, error) {
	return Snapshot{Entities: map[string]int64{}}, nil
}

// Reset does nothing.
func (NoStore) Reset(context.Context) error { return nil }
