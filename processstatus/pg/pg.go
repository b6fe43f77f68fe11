package pg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgschema"
	"github.com/walflow/walflow/processstatus"
)

// Defaults of [Config].
const (
	// SchemaDefault is the default Config.Schema.
	SchemaDefault = "walflow"
	// FlushIntervalDefault is the default Config.FlushInterval.
	FlushIntervalDefault = time.Second
)

// finalFlushTimeout bounds the flush Run makes after its context ended.
const finalFlushTimeout = 10 * time.Second

// DB starts transactions: *pgxpool.Pool and *pgx.Conn satisfy it. The store serializes its
// own use of it, so a *pgx.Conn may be given as long as nothing else uses it meanwhile.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Config configures a [Store]. DB is required.
type Config struct {
	// DB is the database the status is kept in. Required.
	DB DB
	// Schema is the schema of the tables, created when missing. Default "walflow".
	Schema string
	// Instance names the walflow instance whose status the store keeps: the engine sets it
	// to its replication slot's name. Stores of different instances keep separate rows in
	// the same tables, so any number of instances share a database. Default "".
	Instance string
	// FlushInterval is how often Run writes the saved values. Default 1s.
	FlushInterval time.Duration
	// Logger receives flush failures that Run retries. Default: warnings and errors as text
	// on stderr.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.Schema = cmp.Or(c.Schema, SchemaDefault)
	c.FlushInterval = cmp.Or(c.FlushInterval, FlushIntervalDefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return c
}

func (c Config) validate() error {
	if c.DB == nil {
		return errors.New("processstatus/pg: Config.DB is nil; pass a *pgxpool.Pool or a *pgx.Conn")
	}
	if c.FlushInterval < 0 {
		return fmt.Errorf("processstatus/pg: Config.FlushInterval is %s; use a positive duration, or 0 for the default %s", c.FlushInterval, FlushIntervalDefault)
	}
	return pgschema.CheckSchema("processstatus/pg: Config.Schema", c.Schema)
}

// Store keeps the process status in PostgreSQL. Create it with [New]; it is safe for
// concurrent use.
type Store struct {
	cfg         Config
	log         *slog.Logger
	statusTable string // quoted schema.process_status
	posTable    string // quoted schema.process_status_position

	// mu guards the buffered values.
	mu       sync.Mutex
	dirty    map[string]int64
	pos      event.Position
	posDirty bool

	// dbMu serializes the use of the database, so that a flush and a Reset never
	// interleave and a *pgx.Conn is used by one call at a time.
	dbMu     sync.Mutex
	migrated bool
}

var (
	_ processstatus.Store   = (*Store)(nil)
	_ processstatus.Flusher = (*Store)(nil)
)

// New validates cfg and returns a store. It does no I/O: the tables are created by the first
// call that needs them, or by [Store.Migrate].
func New(cfg Config) (*Store, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Store{
		cfg:         cfg,
		log:         cfg.Logger.With(slog.String("component", "processstatus.pg")),
		statusTable: pgx.Identifier{cfg.Schema, "process_status"}.Sanitize(),
		posTable:    pgx.Identifier{cfg.Schema, "process_status_position"}.Sanitize(),
		dirty:       map[string]int64{},
	}, nil
}

// Migrate creates the schema and the tables when missing. Other methods call it the first
// time they touch the database.
func (s *Store) Migrate(ctx context.Context) error {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	return s.migrate(ctx)
}

// migrate creates the tables once; s.dbMu must be held.
func (s *Store) migrate(ctx context.Context) error {
	if s.migrated {
		return nil
	}
	schema := pgx.Identifier{s.cfg.Schema}.Sanitize()
	// Tables made by a walflow from before instances have no instance column: their rows
	// get the instance "" and the first store of a named instance adopts them.
	err := pgschema.Create(ctx, s.cfg.DB, `CREATE SCHEMA IF NOT EXISTS `+schema+`;
CREATE TABLE IF NOT EXISTS `+s.statusTable+` (
	instance text NOT NULL DEFAULT '',
	entity text NOT NULL,
	processed_micros bigint NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (instance, entity)
);
CREATE TABLE IF NOT EXISTS `+s.posTable+` (
	instance text PRIMARY KEY,
	position bigint NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);
DO $$
DECLARE pk name;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '`+s.statusTable+`'::regclass AND attname = 'instance' AND NOT attisdropped) THEN
		ALTER TABLE `+s.statusTable+` ADD COLUMN instance text NOT NULL DEFAULT '';
		SELECT conname INTO pk FROM pg_constraint WHERE conrelid = '`+s.statusTable+`'::regclass AND contype = 'p';
		IF pk IS NOT NULL THEN
			EXECUTE format('ALTER TABLE `+s.statusTable+` DROP CONSTRAINT %I', pk);
		END IF;
		ALTER TABLE `+s.statusTable+` ADD PRIMARY KEY (instance, entity);
	END IF;
	IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '`+s.posTable+`'::regclass AND attname = 'instance' AND NOT attisdropped) THEN
		ALTER TABLE `+s.posTable+` ADD COLUMN instance text NOT NULL DEFAULT '';
		ALTER TABLE `+s.posTable+` DROP COLUMN singleton;
		ALTER TABLE `+s.posTable+` ADD PRIMARY KEY (instance);
	END IF;
END $$`)
	if err != nil {
		return fmt.Errorf("processstatus/pg: create %s: %w", s.statusTable, err)
	}
	if inst := s.cfg.Instance; inst != "" {
		err := pgx.BeginFunc(ctx, s.cfg.DB, func(tx pgx.Tx) error {
			for _, t := range []string{s.statusTable, s.posTable} {
				_, err := tx.Exec(ctx, `UPDATE `+t+` SET instance = $1 WHERE instance = ''
					AND NOT EXISTS (SELECT 1 FROM `+t+` WHERE instance = $1)`, inst)
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("processstatus/pg: adopt the status kept before instances in %s: %w", s.statusTable, err)
		}
	}
	s.migrated = true
	return nil
}

// Save records entity's processed timestamp; the next flush writes it.
func (s *Store) Save(ctx context.Context, entity string, micros int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dirty[entity] = micros
	return nil
}

// SavePosition records the processed position; the next flush writes it.
func (s *Store) SavePosition(ctx context.Context, pos event.Position) error {
	if pos > math.MaxInt64 {
		return fmt.Errorf("processstatus/pg: position %d does not fit a bigint", pos)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pos, s.posDirty = pos, true
	return nil
}

// Flush writes the values saved since the last flush, in one transaction. On failure they
// stay buffered for the next flush.
func (s *Store) Flush(ctx context.Context) error {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	s.mu.Lock()
	dirty, pos, posDirty := s.dirty, s.pos, s.posDirty
	if len(dirty) == 0 && !posDirty {
		s.mu.Unlock()
		return nil
	}
	s.dirty, s.posDirty = map[string]int64{}, false
	s.mu.Unlock()

	err := s.write(ctx, dirty, pos, posDirty)
	if err != nil {
		// Put the values back, unless newer ones were saved meanwhile.
		s.mu.Lock()
		for k, v := range dirty {
			if _, newer := s.dirty[k]; !newer {
				s.dirty[k] = v
			}
		}
		if posDirty && !s.posDirty {
			s.pos, s.posDirty = pos, true
		}
		s.mu.Unlock()
		return err
	}
	return nil
}

// write stores entities and, when posDirty, pos; s.dbMu must be held.
func (s *Store) write(ctx context.Context, entities map[string]int64, pos event.Position, posDirty bool) error {
	if err := s.migrate(ctx); err != nil {
		return err
	}
	names := make([]string, 0, len(entities))
	micros := make([]int64, 0, len(entities))
	for k, v := range entities {
		names = append(names, k)
		micros = append(micros, v)
	}
	err := pgx.BeginFunc(ctx, s.cfg.DB, func(tx pgx.Tx) error {
		if len(names) > 0 {
			_, err := tx.Exec(ctx, `INSERT INTO `+s.statusTable+` (instance, entity, processed_micros, updated_at)
SELECT $3, e, m, now() FROM unnest($1::text[], $2::bigint[]) AS u(e, m)
ON CONFLICT (instance, entity) DO UPDATE SET processed_micros = excluded.processed_micros, updated_at = excluded.updated_at`,
				names, micros, s.cfg.Instance)
			if err != nil {
				return err
			}
		}
		if posDirty {
			_, err := tx.Exec(ctx, `INSERT INTO `+s.posTable+` (instance, position, updated_at) VALUES ($2, $1, now())
ON CONFLICT (instance) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at`,
				int64(pos), s.cfg.Instance)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("processstatus/pg: write the process status to %s: %w", s.statusTable, err)
	}
	return nil
}

// Load returns the stored status, with the values saved but not flushed yet on top.
func (s *Store) Load(ctx context.Context) (processstatus.Snapshot, error) {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if err := s.migrate(ctx); err != nil {
		return processstatus.Snapshot{}, err
	}
	snap := processstatus.Snapshot{Entities: map[string]int64{}}
	err := pgx.BeginFunc(ctx, s.cfg.DB, func(tx pgx.Tx) error {
		// One snapshot for both tables.
		if _, err := tx.Exec(ctx, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT entity, processed_micros FROM `+s.statusTable+` WHERE instance = $1`, s.cfg.Instance)
		if err != nil {
			return err
		}
		var (
			entity string
			micros int64
		)
		_, err = pgx.ForEachRow(rows, []any{&entity, &micros}, func() error {
			snap.Entities[entity] = micros
			return nil
		})
		if err != nil {
			return err
		}
		var pos int64
		err = tx.QueryRow(ctx, `SELECT position FROM `+s.posTable+` WHERE instance = $1`, s.cfg.Instance).Scan(&pos)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return err
		case pos < 0:
			return fmt.Errorf("negative position %d in %s", pos, s.posTable)
		default:
			snap.Position = event.Position(pos)
		}
		return nil
	})
	if err != nil {
		return processstatus.Snapshot{}, fmt.Errorf("processstatus/pg: load the process status from %s: %w", s.statusTable, err)
	}
	s.mu.Lock()
	maps.Copy(snap.Entities, s.dirty)
	if s.posDirty {
		snap.Position = s.pos
	}
	s.mu.Unlock()
	return snap, nil
}

// Reset deletes every entity and the position stored for the store's instance, and drops
// the unflushed values. Other instances' rows are left alone.
func (s *Store) Reset(ctx context.Context) error {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	s.mu.Lock()
	clear(s.dirty)
	s.pos, s.posDirty = 0, false
	s.mu.Unlock()
	if err := s.migrate(ctx); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.cfg.DB, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM `+s.statusTable+` WHERE instance = $1`, s.cfg.Instance); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM `+s.posTable+` WHERE instance = $1`, s.cfg.Instance)
		return err
	})
	if err != nil {
		return fmt.Errorf("processstatus/pg: reset %s: %w", s.statusTable, err)
	}
	return nil
}

// Run flushes every FlushInterval until ctx ends, then flushes once more and returns that
// flush's error. A failed periodic flush is logged and retried at the next interval.
func (s *Store) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			defer cancel()
			// A pooled connection may have died with a server restart; the pool drops it on
			// the error, so another attempt gets a fresh one.
			var err error
			for range 3 {
				if err = s.Flush(fctx); err == nil || fctx.Err() != nil {
					break
				}
			}
			return err
		case <-t.C:
			if err := s.Flush(ctx); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "flush the process status; retrying at the next interval",
					slog.Any("error", err))
			}
		}
	}
}
