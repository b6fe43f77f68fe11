package pg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgschema"
	"github.com/walflow/walflow/statestore"
)

// SchemaDefault is the default [Config].Schema.
const SchemaDefault = "walflow"

// DB starts transactions. It must be safe for concurrent use, as *pgxpool.Pool is: the
// store runs calls of different goroutines at the same time.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Config configures a [Store]. DB is required.
type Config struct {
	// DB is the database the savepoints are kept in, usually a *pgxpool.Pool. Required.
	DB DB
	// Schema is the schema of the tables, created when missing. Default "walflow".
	Schema string
}

func (c Config) withDefaults() Config {
	c.Schema = cmp.Or(c.Schema, SchemaDefault)
	return c
}

func (c Config) validate() error {
	if c.DB == nil {
		return errors.New("statestore/pg: Config.DB is nil; pass a *pgxpool.Pool")
	}
	return pgschema.CheckSchema("statestore/pg: Config.Schema", c.Schema)
}

// Store keeps savepoints in PostgreSQL. Create it with [New]; it is safe for concurrent use.
type Store struct {
	cfg      Config
	runs     string // quoted schema.statestore_runs
	sps      string // quoted schema.statestore_savepoints
	entities pgx.Identifier

	migMu    sync.Mutex
	migrated bool
}

var (
	_ statestore.Storage = (*Store)(nil)
	_ statestore.Lister  = (*Store)(nil)
)

// New validates cfg and returns a store. It does no I/O: the tables are created by the first
// call that needs them, or by [Store.Migrate].
func New(cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Store{
		cfg:      cfg,
		runs:     pgx.Identifier{cfg.Schema, "statestore_runs"}.Sanitize(),
		sps:      pgx.Identifier{cfg.Schema, "statestore_savepoints"}.Sanitize(),
		entities: pgx.Identifier{cfg.Schema, "statestore_entities"},
	}, nil
}

// Migrate creates the schema and the tables when missing. Other methods call it the first
// time they touch the database.
func (s *Store) Migrate(ctx context.Context) error {
	s.migMu.Lock()
	defer s.migMu.Unlock()
	if s.migrated {
		return nil
	}
	schema := pgx.Identifier{s.cfg.Schema}.Sanitize()
	err := pgschema.Create(ctx, s.cfg.DB, `CREATE SCHEMA IF NOT EXISTS `+schema+`;
CREATE TABLE IF NOT EXISTS `+s.runs+` (
	run_id text PRIMARY KEY,
	next_seq bigint NOT NULL DEFAULT 1,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS `+s.sps+` (
	run_id text NOT NULL,
	seq bigint NOT NULL,
	timestamp_ms bigint NOT NULL,
	position bigint NOT NULL,
	entity_count integer NOT NULL,
	saved_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS `+s.entities.Sanitize()+` (
	run_id text NOT NULL,
	seq bigint NOT NULL,
	ord integer NOT NULL,
	entity_id text NOT NULL,
	state bytea NOT NULL,
	PRIMARY KEY (run_id, seq, ord)
)`)
	if err != nil {
		return fmt.Errorf("statestore/pg: create the state store tables in schema %s: %w", schema, err)
	}
	s.migrated = true
	return nil
}

// begin starts a call: it validates runID and ctx, and creates the tables when needed.
func (s *Store) begin(ctx context.Context, op, runID string) error {
	if err := statestore.ValidateRunID(runID); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("statestore/pg: %s of run %q: %w", op, runID, err)
	}
	return s.Migrate(ctx)
}

// write runs fn in a transaction of its own, or in tx when it is not nil.
func (s *Store) write(ctx context.Context, tx pgx.Tx, op, runID string, fn func(pgx.Tx) error) error {
	var err error
	if tx != nil {
		err = fn(tx)
	} else {
		err = pgx.BeginFunc(ctx, s.cfg.DB, fn)
	}
	if err != nil {
		return fmt.Errorf("statestore/pg: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// read runs fn in a read-only REPEATABLE READ transaction, so that its statements see one
// snapshot.
func (s *Store) read(ctx context.Context, op, runID string, fn func(pgx.Tx) error) error {
	err := pgx.BeginFunc(ctx, s.cfg.DB, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
			return err
		}
		return fn(tx)
	})
	if err != nil {
		return fmt.Errorf("statestore/pg: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// lockRun locks the run's row until the transaction ends and returns its next_seq, or
// ErrNotInitialized.
func (s *Store) lockRun(ctx context.Context, tx pgx.Tx, runID string) (int64, error) {
	var next int64
	err := tx.QueryRow(ctx, `SELECT next_seq FROM `+s.runs+` WHERE run_id = $1 FOR UPDATE`, runID).Scan(&next)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, statestore.ErrNotInitialized
	}
	return next, err
}

// InitRun initializes the run; see [statestore.Storage.InitRun].
func (s *Store) InitRun(ctx context.Context, runID string) error {
	return s.initRun(ctx, nil, runID)
}

// InitRunTx is InitRun in the caller's transaction tx.
func (s *Store) InitRunTx(ctx context.Context, tx pgx.Tx, runID string) error {
	return s.initRun(ctx, tx, runID)
}

func (s *Store) initRun(ctx context.Context, tx pgx.Tx, runID string) error {
	const op = "init"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	return s.write(ctx, tx, op, runID, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+s.runs+` (run_id) VALUES ($1) ON CONFLICT (run_id) DO NOTHING`, runID)
		return err
	})
}

// IsInitialized reports whether the run is initialized; see
// [statestore.Storage.IsInitialized].
func (s *Store) IsInitialized(ctx context.Context, runID string) (bool, error) {
	const op = "check"
	if err := s.begin(ctx, op, runID); err != nil {
		return false, err
	}
	var ok bool
	err := s.read(ctx, op, runID, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM `+s.runs+` WHERE run_id = $1)`, runID).Scan(&ok)
	})
	return ok, err
}

// SaveSavepoint saves sp in one transaction; see [statestore.Storage.SaveSavepoint].
func (s *Store) SaveSavepoint(ctx context.Context, runID string, sp statestore.Savepoint) error {
	return s.saveSavepoint(ctx, nil, runID, sp)
}

// SaveSavepointTx is SaveSavepoint in the caller's transaction tx: the savepoint commits
// with tx, and the run's row stays locked until then, so other saves of the run wait.
func (s *Store) SaveSavepointTx(ctx context.Context, tx pgx.Tx, runID string, sp statestore.Savepoint) error {
	return s.saveSavepoint(ctx, tx, runID, sp)
}

func (s *Store) saveSavepoint(ctx context.Context, tx pgx.Tx, runID string, sp statestore.Savepoint) error {
	const op = "save a savepoint"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	if err := sp.Validate(); err != nil {
		return err
	}
	return s.write(ctx, tx, op, runID, func(tx pgx.Tx) error {
		seq, err := s.lockRun(ctx, tx, runID)
		if err != nil {
			return err
		}
		var latest int64
		err = tx.QueryRow(ctx, `SELECT timestamp_ms FROM `+s.sps+` WHERE run_id = $1 ORDER BY seq DESC LIMIT 1`, runID).Scan(&latest)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return err
		case sp.Timestamp < latest:
			return fmt.Errorf("timestamp %d is before the latest savepoint's %d; use %d or later: %w",
				sp.Timestamp, latest, latest, statestore.ErrOutOfOrder)
		}
		_, err = tx.Exec(ctx, `INSERT INTO `+s.sps+` (run_id, seq, timestamp_ms, position, entity_count) VALUES ($1, $2, $3, $4, $5);`,
			runID, seq, sp.Timestamp, int64(sp.Position), len(sp.Entities))
		if err != nil {
			return err
		}
		if len(sp.Entities) > 0 {
			rows := pgx.CopyFromSlice(len(sp.Entities), func(i int) ([]any, error) {
				state := sp.Entities[i].State
				if state == nil {
					state = []byte{} // NOT NULL: nil and empty are the same state
				}
				return []any{runID, seq, int32(i), sp.Entities[i].ID, state}, nil
			})
			if _, err := tx.CopyFrom(ctx, s.entities, []string{"run_id", "seq", "ord", "entity_id", "state"}, rows); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE `+s.runs+` SET next_seq = $2 WHERE run_id = $1`, runID, seq+1)
		return err
	})
}

// LatestSavepoint reads the latest savepoint in one snapshot; see
// [statestore.Storage.LatestSavepoint].
func (s *Store) LatestSavepoint(ctx context.Context, runID string) (statestore.Savepoint, error) {
	const op = "read the latest savepoint"
	if err := s.begin(ctx, op, runID); err != nil {
		return statestore.Savepoint{}, err
	}
	var sp statestore.Savepoint
	err := s.read(ctx, op, runID, func(tx pgx.Tx) error {
		var (
			seq, ts, pos *int64
			count        *int32
		)
		err := tx.QueryRow(ctx, `SELECT s.seq, s.timestamp_ms, s.position, s.entity_count FROM `+s.runs+` r
LEFT JOIN LATERAL (SELECT seq, timestamp_ms, position, entity_count FROM `+s.sps+` WHERE run_id = r.run_id ORDER BY seq DESC LIMIT 1) s ON true
WHERE r.run_id = $1`, runID).Scan(&seq, &ts, &pos, &count)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return statestore.ErrNotInitialized
		case err != nil:
			return err
		case seq == nil:
			return statestore.ErrNoSavepoint
		case *pos < 0:
			return fmt.Errorf("negative position %d in savepoint %d", *pos, *seq)
		}
		sp = statestore.Savepoint{Timestamp: *ts, Position: event.Position(*pos)}
		if *count == 0 {
			return nil
		}
		rows, err := tx.Query(ctx, `SELECT entity_id, state FROM `+s.entities.Sanitize()+` WHERE run_id = $1 AND seq = $2 ORDER BY ord`, runID, *seq)
		if err != nil {
			return err
		}
		sp.Entities = make([]statestore.Entity, 0, *count)
		var e statestore.Entity
		_, err = pgx.ForEachRow(rows, []any{&e.ID, &e.State}, func() error {
			sp.Entities = append(sp.Entities, e)
			e.State = nil // scanning into a non-nil slice would reuse it
			return nil
		})
		if err != nil {
			return err
		}
		if len(sp.Entities) != int(*count) {
			return fmt.Errorf("savepoint %d has %d entities, its entity_count says %d", *seq, len(sp.Entities), *count)
		}
		return nil
	})
	if err != nil {
		return statestore.Savepoint{}, err
	}
	return sp, nil
}

// LatestTimestamp reads the latest savepoint's timestamp; see
// [statestore.Storage.LatestTimestamp].
func (s *Store) LatestTimestamp(ctx context.Context, runID string) (int64, error) {
	const op = "read the latest savepoint timestamp"
	if err := s.begin(ctx, op, runID); err != nil {
		return 0, err
	}
	var ts *int64
	err := s.read(ctx, op, runID, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT (SELECT timestamp_ms FROM `+s.sps+` WHERE run_id = $1 ORDER BY seq DESC LIMIT 1)
FROM `+s.runs+` WHERE run_id = $1`, runID).Scan(&ts)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return statestore.ErrNotInitialized
		case err != nil:
			return err
		case ts == nil:
			return statestore.ErrNoSavepoint
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return *ts, nil
}

// ListSavepoints lists the run's savepoints, oldest first; see [statestore.Lister].
func (s *Store) ListSavepoints(ctx context.Context, runID string) ([]statestore.SavepointInfo, error) {
	const op = "list savepoints"
	if err := s.begin(ctx, op, runID); err != nil {
		return nil, err
	}
	var infos []statestore.SavepointInfo
	err := s.read(ctx, op, runID, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM `+s.runs+` WHERE run_id = $1)`, runID).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			return statestore.ErrNotInitialized
		}
		rows, err := tx.Query(ctx, `SELECT timestamp_ms, position, entity_count FROM `+s.sps+` WHERE run_id = $1 ORDER BY seq`, runID)
		if err != nil {
			return err
		}
		infos = []statestore.SavepointInfo{}
		var (
			ts, pos int64
			count   int32
		)
		_, err = pgx.ForEachRow(rows, []any{&ts, &pos, &count}, func() error {
			if pos < 0 {
				return fmt.Errorf("negative position %d", pos)
			}
			infos = append(infos, statestore.SavepointInfo{Timestamp: ts, Position: event.Position(pos), Entities: int(count)})
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return infos, nil
}

// DeleteOldSavepoints deletes all but the keep latest savepoints in one transaction; see
// [statestore.Storage.DeleteOldSavepoints].
func (s *Store) DeleteOldSavepoints(ctx context.Context, runID string, keep int) error {
	return s.deleteOldSavepoints(ctx, nil, runID, keep)
}

// DeleteOldSavepointsTx is DeleteOldSavepoints in the caller's transaction tx.
func (s *Store) DeleteOldSavepointsTx(ctx context.Context, tx pgx.Tx, runID string, keep int) error {
	return s.deleteOldSavepoints(ctx, tx, runID, keep)
}

func (s *Store) deleteOldSavepoints(ctx context.Context, tx pgx.Tx, runID string, keep int) error {
	const op = "delete old savepoints"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	if keep < 0 {
		return fmt.Errorf("statestore/pg: %s of run %q: keep is %d; use 0 to delete every savepoint, or more to keep that many", op, runID, keep)
	}
	return s.write(ctx, tx, op, runID, func(tx pgx.Tx) error {
		if _, err := s.lockRun(ctx, tx, runID); err != nil {
			return err
		}
		// The newest savepoint to delete is the one after the keep latest.
		var cut int64
		err := tx.QueryRow(ctx, `SELECT seq FROM `+s.sps+` WHERE run_id = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1`, runID, int64(keep)).Scan(&cut)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+s.entities.Sanitize()+` WHERE run_id = $1 AND seq <= $2`, runID, cut); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM `+s.sps+` WHERE run_id = $1 AND seq <= $2`, runID, cut)
		return err
	})
}

// DeleteRun deletes the run and its savepoints in one transaction; see
// [statestore.Storage.DeleteRun].
func (s *Store) DeleteRun(ctx context.Context, runID string) error {
	return s.deleteRun(ctx, nil, runID)
}

// DeleteRunTx is DeleteRun in the caller's transaction tx.
func (s *Store) DeleteRunTx(ctx context.Context, tx pgx.Tx, runID string) error {
	return s.deleteRun(ctx, tx, runID)
}

func (s *Store) deleteRun(ctx context.Context, tx pgx.Tx, runID string) error {
	const op = "delete"
	if err := s.begin(ctx, op, runID); err != nil {
		return err
	}
	return s.write(ctx, tx, op, runID, func(tx pgx.Tx) error {
		// Deleting the run's row first locks it, as every write does.
		tag, err := tx.Exec(ctx, `DELETE FROM `+s.runs+` WHERE run_id = $1`, runID)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+s.entities.Sanitize()+` WHERE run_id = $1`, runID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM `+s.sps+` WHERE run_id = $1`, runID)
		return err
	})
}
