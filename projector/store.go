package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgschema"
)

// Checkpoint is a projector's stored position.
type Checkpoint struct {
	// Position is the resume position: every event at or before it is applied (or, in
	// sequence mode, skipped as rolled back), and the projector reads again after it.
	Position event.Position `json:"position"`
	// Seen is how far the projector had read: at least Position. In sequence mode the
	// events between Position and Seen whose number is below Sequence are applied already,
	// and the others were held in the reorder buffer. Without Sequence it only records
	// progress.
	Seen event.Position `json:"seen"`
	// Sequence maps each table (or table/stream) to the next number it expects. Sequence
	// mode only.
	Sequence map[string]int64 `json:"sequence,omitempty"`
	// Halted reports that the projector stopped on a failure and stays stopped until it is
	// restarted or reset.
	Halted bool `json:"halted"`
	// Error is the failure that halted the projector.
	Error string `json:"error,omitempty"`
	// FailedPosition is the ledger position of the event the projector halted on.
	FailedPosition event.Position `json:"failed_position,omitempty"`
	// Version counts the saves; a save names the version it read, so that a concurrent
	// change (a reset, a second process) is detected instead of overwritten.
	Version int64 `json:"version"`
	// Ledger names the ledger whose positions Position counts: the PostgreSQL system,
	// database and slot it follows. Empty until known, and after a reset. A runner refuses
	// a checkpoint of another ledger, whose positions mean other events.
	Ledger string `json:"ledger,omitempty"`
}

// PositionStore keeps projectors' checkpoints. Its methods are safe for concurrent use.
type PositionStore interface {
	// Load returns the projector's checkpoint, registering it at position 0 (with Version
	// 0) when it has none.
	Load(ctx context.Context, name string) (Checkpoint, error)
	// Save stores cp when the stored checkpoint's version is still cp.Version, and stores
	// it with cp.Version+1; otherwise it stores nothing and returns an error wrapping
	// [ErrConflict].
	Save(ctx context.Context, name string, cp Checkpoint) error
	// Reset stores a zero checkpoint (position 0, not halted) with a new version, whatever
	// was stored.
	Reset(ctx context.Context, name string) error
}

// PositionReader is a [PositionStore] that reads stored positions without taking the
// projectors over, as Load may (it registers a projector, and a [SavepointStore] restores
// its state). A Runner with a [Locker] reads with it, every LockInterval, the positions of
// the projectors that stand by while another process runs them, so that Status reports,
// and a walflow engine's retention keeps, the position that process stored rather than 0.
// [PostgresStore], [MemoryStore] and [SavepointStore] are PositionReaders.
type PositionReader interface {
	// StoredPositions returns the stored position of each of names that has one; a name
	// without a stored checkpoint is missing from the map.
	StoredPositions(ctx context.Context, names []string) (map[string]event.Position, error)
}

// Flusher is a [PositionStore] that holds progress it has not written yet, such as a
// [SavepointStore] between savepoints. Runner.Run flushes its store once every projector has
// stopped, before it returns, so that a clean stop loses no progress; a crash still does,
// which is why a store must never need a flush for correctness, only to save replay.
type Flusher interface {
	Flush(ctx context.Context) error
}

// TxPositionStore is a PositionStore that can also save a checkpoint in the caller's
// PostgreSQL transaction, which HandleTx projectors need for exactly-once effects.
type TxPositionStore interface {
	PositionStore
	// SaveTx is Save in tx: the checkpoint commits or rolls back with tx.
	SaveTx(ctx context.Context, tx pgx.Tx, name string, cp Checkpoint) error
}

// PostgresStore keeps checkpoints in the walflow.projectors table of a PostgreSQL database.
type PostgresStore struct{ db *pgxpool.Pool }

// NewPostgresStore returns a store on db. It does not touch the database: call
// [PostgresStore.Migrate] (Runner.Run does) before the other methods.
func NewPostgresStore(db *pgxpool.Pool) *PostgresStore { return &PostgresStore{db: db} }

// Migrate creates the walflow.projectors table when missing.
func (s *PostgresStore) Migrate(ctx context.Context) error {
	err := pgschema.Create(ctx, s.db, `CREATE SCHEMA IF NOT EXISTS walflow;
		CREATE TABLE IF NOT EXISTS walflow.projectors (
			name text PRIMARY KEY,
			position bigint NOT NULL DEFAULT 0,
			seen bigint NOT NULL DEFAULT 0,
			sequence jsonb,
			halted boolean NOT NULL DEFAULT false,
			error text,
			failed_position bigint,
			version bigint NOT NULL DEFAULT 0,
			updated_at timestamptz NOT NULL DEFAULT now());
		ALTER TABLE walflow.projectors ADD COLUMN IF NOT EXISTS ledger text`)
	if err != nil {
		return fmt.Errorf("projector: create the walflow.projectors table: %w%s", err, pgschema.PrivilegeHint(err))
	}
	return nil
}

// Load returns the stored checkpoint, registering the projector when it has none.
func (s *PostgresStore) Load(ctx context.Context, name string) (Checkpoint, error) {
	if _, err := s.db.Exec(ctx, `INSERT INTO walflow.projectors (name) VALUES ($1) ON CONFLICT DO NOTHING`, name); err != nil {
		return Checkpoint{}, fmt.Errorf("projector: register %s: %w", name, err)
	}
	cps, err := s.query(ctx, `WHERE name = $1`, name)
	if err != nil {
		return Checkpoint{}, err
	}
	if len(cps) != 1 {
		return Checkpoint{}, fmt.Errorf("projector: load %s: the row vanished after it was registered", name)
	}
	return cps[0].Checkpoint, nil
}

// NamedCheckpoint is a checkpoint with its projector's name.
type NamedCheckpoint struct {
	Name string `json:"name"`
	Checkpoint
}

// List returns every stored checkpoint, by name. It works from any process, with or
// without a running Runner.
func (s *PostgresStore) List(ctx context.Context) ([]NamedCheckpoint, error) {
	return s.query(ctx, `ORDER BY name`)
}

func (s *PostgresStore) query(ctx context.Context, where string, args ...any) ([]NamedCheckpoint, error) {
	rows, err := s.db.Query(ctx, `SELECT name, position, seen, sequence, halted, coalesce(error, ''), coalesce(failed_position, 0), version,
			coalesce(ledger, '') FROM walflow.projectors `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("projector: read walflow.projectors: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (NamedCheckpoint, error) {
		var c NamedCheckpoint
		var pos, seen, failed int64
		var seq []byte
		if err := r.Scan(&c.Name, &pos, &seen, &seq, &c.Halted, &c.Error, &failed, &c.Version, &c.Ledger); err != nil {
			return c, fmt.Errorf("projector: read walflow.projectors: %w", err)
		}
		c.Position, c.Seen, c.FailedPosition = event.Position(pos), event.Position(seen), event.Position(failed)
		if len(seq) > 0 {
			if err := json.Unmarshal(seq, &c.Sequence); err != nil {
				return c, fmt.Errorf("projector: %s: decode the stored sequence: %w", c.Name, err)
			}
		}
		return c, nil
	})
}

// StoredPositions reads the stored positions of names in one query, registering none.
func (s *PostgresStore) StoredPositions(ctx context.Context, names []string) (map[string]event.Position, error) {
	rows, err := s.db.Query(ctx, `SELECT name, position FROM walflow.projectors WHERE name = ANY($1)`, names)
	if err != nil {
		return nil, fmt.Errorf("projector: read the stored positions: %w", err)
	}
	out := make(map[string]event.Position, len(names))
	var name string
	var pos int64
	if _, err := pgx.ForEachRow(rows, []any{&name, &pos}, func() error {
		out[name] = event.Position(pos)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("projector: read the stored positions: %w", err)
	}
	return out, nil
}

// Save stores cp if the stored version is cp.Version.
func (s *PostgresStore) Save(ctx context.Context, name string, cp Checkpoint) error {
	return s.save(ctx, s.db, name, cp)
}

// SaveTx stores cp in tx if the stored version is cp.Version.
func (s *PostgresStore) SaveTx(ctx context.Context, tx pgx.Tx, name string, cp Checkpoint) error {
	return s.save(ctx, tx, name, cp)
}

type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func (s *PostgresStore) save(ctx context.Context, db execer, name string, cp Checkpoint) error {
	var seq []byte
	if cp.Sequence != nil {
		var err error
		if seq, err = json.Marshal(cp.Sequence); err != nil {
			return fmt.Errorf("projector: encode the sequence of %s: %w", name, err)
		}
	}
	var errText *string
	var failed *int64
	if cp.Halted {
		errText, failed = &cp.Error, new(int64(cp.FailedPosition))
	}
	tag, err := db.Exec(ctx, `UPDATE walflow.projectors SET position = $3, seen = $4, sequence = $5, halted = $6, error = $7,
			failed_position = $8, ledger = nullif($9, ''), version = version + 1, updated_at = now()
		WHERE name = $1 AND version = $2`,
		name, cp.Version, int64(cp.Position), int64(cp.Seen), seq, cp.Halted, errText, failed, cp.Ledger)
	if err != nil {
		return fmt.Errorf("projector: save the position of %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s was reset, or runs in another process too", ErrConflict, name)
	}
	return nil
}

// Reset stores a zero checkpoint for name. Its read model must be cleared by its owner: the
// projector replays the whole ledger.
func (s *PostgresStore) Reset(ctx context.Context, name string) error {
	_, err := s.db.Exec(ctx, `INSERT INTO walflow.projectors AS p (name, version) VALUES ($1, 1)
		ON CONFLICT (name) DO UPDATE SET position = 0, seen = 0, sequence = NULL, halted = false, error = NULL,
			failed_position = NULL, ledger = NULL, version = p.version + 1, updated_at = now()`, name)
	if err != nil {
		return fmt.Errorf("projector: reset %s: %w", name, err)
	}
	return nil
}

// MemoryStore keeps checkpoints in memory: for tests and throwaway runs.
type MemoryStore struct {
	mu  sync.Mutex
	cps map[string]Checkpoint
}

// NewMemoryStore returns an empty store.
func NewMemoryStore() *MemoryStore { return &MemoryStore{cps: map[string]Checkpoint{}} }

// Load returns the checkpoint of name.
func (m *MemoryStore) Load(_ context.Context, name string) (Checkpoint, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := m.cps[name]
	cp.Sequence = maps.Clone(cp.Sequence)
	return cp, nil
}

// Save stores cp if the stored version is cp.Version.
func (m *MemoryStore) Save(_ context.Context, name string, cp Checkpoint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cps[name].Version != cp.Version {
		return fmt.Errorf("%w: %s was reset, or runs elsewhere too", ErrConflict, name)
	}
	cp.Version++
	cp.Sequence = maps.Clone(cp.Sequence)
	if !cp.Halted {
		cp.Error, cp.FailedPosition = "", 0
	}
	m.cps[name] = cp
	return nil
}

// StoredPositions returns the positions of the names the store has.
func (m *MemoryStore) StoredPositions(_ context.Context, names []string) (map[string]event.Position, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]event.Position, len(names))
	for _, n := range names {
		if cp, ok := m.cps[n]; ok {
			out[n] = cp.Position
		}
	}
	return out, nil
}

// Reset stores a zero checkpoint for name.
func (m *MemoryStore) Reset(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cps[name] = Checkpoint{Version: m.cps[name].Version + 1}
	return nil
}

// Names returns the names of the stored checkpoints, sorted.
func (m *MemoryStore) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.cps))
}

var _ TxPositionStore = (*PostgresStore)(nil)
var _ PositionStore = (*MemoryStore)(nil)
var _ PositionReader = (*PostgresStore)(nil)
var _ PositionReader = (*MemoryStore)(nil)

// isConflict reports whether err is a store's version conflict.
func isConflict(err error) bool { return errors.Is(err, ErrConflict) }
