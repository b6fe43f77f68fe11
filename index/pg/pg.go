package pg

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/internal/pgschema"
)

// SchemaDefault is the default [Options].Schema.
const SchemaDefault = "walflow"

// ErrFenced is the error of a [Store.Write] or [Store.Reset] of an indexer that another
// Store wrote since this one last read or wrote it: another runner holds the indexer now,
// or held it meanwhile. Nothing was written. The runner restarts from the stored state
// ([Store.State] reads it and lets this Store write again).
var ErrFenced = errors.New("index/pg: another runner wrote the index since this store last read it; nothing was written: restart the indexer from the stored state (State reads it again)")

// DB runs queries and starts transactions, as *pgxpool.Pool does. It must be safe for
// concurrent use: the store runs the calls of different goroutines at the same time.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Options configures a [Store]; nil means the defaults.
type Options struct {
	// Schema is the schema of the tables, created when missing. Default "walflow".
	Schema string
}

// Store is an [index.Store] in PostgreSQL. Create it with [Open]; it is safe for concurrent
// use. Each Store fences its writes of an indexer on the generation it last saw: see the
// package doc.
type Store struct {
	db      DB
	schema  string
	state   string // quoted schema.index_state
	entries string // quoted schema.index_entries
	seq     string // quoted schema.index_generation

	// The statements, built once by buildSQL.
	sqlState, sqlGeneration, sqlPositions, sqlEntries, sqlEntriesSince string
	sqlWriteAny, sqlWriteFrom, sqlWriteNew                             string
	sqlResetAny, sqlResetFrom, sqlResetNew                             string
	sqlDelete                                                          string

	// mu guards seen.
	mu   sync.Mutex
	seen map[string]*seenGen

	// afterStateRead, when set (by tests), runs between State's query and its update of
	// seen.
	afterStateRead func()
}

// seenGen is what a Store last saw of an indexer.
type seenGen struct {
	gen    int64  // 0: the indexer had no row
	writes uint64 // writes and resets of this Store that committed, to order State's reads
}

var _ index.FenceChecker = (*Store)(nil)

// Open returns a store on db, usually a *pgxpool.Pool, after creating the schema, the
// tables and the sequence when any of them is missing (see the package doc). opts may be
// nil. It fails when they are missing and the role may not create them.
func Open(ctx context.Context, db DB, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	o.Schema = cmp.Or(o.Schema, SchemaDefault)
	if db == nil {
		return nil, errors.New("index/pg: Open: db is nil; pass a *pgxpool.Pool")
	}
	if err := pgschema.CheckSchema("index/pg: Options.Schema", o.Schema); err != nil {
		return nil, err
	}
	s := &Store{
		db:      db,
		schema:  o.Schema,
		state:   pgx.Identifier{o.Schema, "index_state"}.Sanitize(),
		entries: pgx.Identifier{o.Schema, "index_entries"}.Sanitize(),
		seq:     pgx.Identifier{o.Schema, "index_generation"}.Sanitize(),
		seen:    map[string]*seenGen{},
	}
	s.buildSQL()
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) buildSQL() {
	next := `nextval('` + strings.ReplaceAll(s.seq, `'`, `''`) + `')`
	s.sqlGeneration = `SELECT generation FROM ` + s.state + ` WHERE indexer = $1`
	s.sqlState = `SELECT stored, checkpoint, since, version, generation FROM ` + s.state + ` WHERE indexer = $1`
	s.sqlPositions = `SELECT position FROM ` + s.entries + ` WHERE indexer = $1 AND value = $2 AND position > $3 ORDER BY position LIMIT $4`
	s.sqlEntries = `SELECT value, position FROM ` + s.entries + ` WHERE indexer = $1 ORDER BY value, position`
	s.sqlEntriesSince = `SELECT value, position FROM ` + s.entries + ` WHERE indexer = $1 AND position > $2 AND position <= $3 ORDER BY position, value`

	// A write is one statement: the state's row is updated first (locking it, so that
	// writes of one indexer take turns and the fence's condition is checked on the latest
	// row), and the entries are inserted only when that update happened. Its parameters:
	// $1 indexer, $2 checkpoint, $3 since, $4 version, $5 values, $6 positions, $7 the
	// generation the store saw.
	entries := `, e AS (INSERT INTO ` + s.entries + ` (indexer, value, position)
	SELECT $1, v, p FROM unnest($5::bytea[], $6::bigint[]) AS t(v, p) WHERE EXISTS (SELECT FROM u)
	ON CONFLICT DO NOTHING)
SELECT generation FROM u`
	s.sqlWriteAny = `WITH u AS (INSERT INTO ` + s.state + ` AS s (indexer, stored, checkpoint, since, version, generation)
	VALUES ($1, true, $2, $3, $4, ` + next + `)
	ON CONFLICT (indexer) DO UPDATE SET stored = true, checkpoint = $2, since = $3, version = $4, generation = ` + next + `, updated_at = now()
	RETURNING s.generation)` + entries
	s.sqlWriteFrom = `WITH u AS (UPDATE ` + s.state + ` SET stored = true, checkpoint = $2, since = $3, version = $4, generation = ` + next + `, updated_at = now()
	WHERE indexer = $1 AND generation = $7
	RETURNING generation)` + entries
	s.sqlWriteNew = `WITH u AS (INSERT INTO ` + s.state + ` (indexer, stored, checkpoint, since, version, generation)
	VALUES ($1, true, $2, $3, $4, ` + next + `)
	ON CONFLICT (indexer) DO NOTHING
	RETURNING generation)` + entries

	// A reset keeps the state's row, as not stored and with a new generation, and then
	// deletes the entries; $1 indexer, $2 the generation the store saw.
	s.sqlResetAny = `INSERT INTO ` + s.state + ` AS s (indexer, stored, checkpoint, since, version, generation)
	VALUES ($1, false, 0, 0, '', ` + next + `)
	ON CONFLICT (indexer) DO UPDATE SET stored = false, checkpoint = 0, since = 0, version = '', generation = ` + next + `, updated_at = now()
	RETURNING s.generation`
	s.sqlResetFrom = `UPDATE ` + s.state + ` SET stored = false, checkpoint = 0, since = 0, version = '', generation = ` + next + `, updated_at = now()
	WHERE indexer = $1 AND generation = $2
	RETURNING generation`
	s.sqlResetNew = `INSERT INTO ` + s.state + ` (indexer, stored, checkpoint, since, version, generation)
	VALUES ($1, false, 0, 0, '', ` + next + `)
	ON CONFLICT (indexer) DO NOTHING
	RETURNING generation`
	s.sqlDelete = `DELETE FROM ` + s.entries + ` WHERE indexer = $1`
}

// migrate creates the schema, the tables and the sequence when any of them is missing.
func (s *Store) migrate(ctx context.Context) error {
	// A role that may not create tables uses those created beforehand.
	var exist bool
	err := s.db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL`,
		s.state, s.entries, s.seq).Scan(&exist)
	if err != nil {
		return fmt.Errorf("index/pg: look for the index tables in schema %s: %w", s.schema, err)
	}
	if exist {
		return nil
	}
	schema := pgx.Identifier{s.schema}.Sanitize()
	err = pgschema.Create(ctx, s.db, `CREATE SCHEMA IF NOT EXISTS `+schema+`;
CREATE SEQUENCE IF NOT EXISTS `+s.seq+`;
CREATE TABLE IF NOT EXISTS `+s.state+` (
	indexer text PRIMARY KEY,
	stored boolean NOT NULL,
	checkpoint bigint NOT NULL,
	since bigint NOT NULL,
	version text NOT NULL,
	generation bigint NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS `+s.entries+` (
	indexer text NOT NULL,
	value bytea NOT NULL,
	position bigint NOT NULL,
	PRIMARY KEY (indexer, value, position)
);
CREATE INDEX IF NOT EXISTS index_entries_position ON `+s.entries+` (indexer, position, value)`)
	if err != nil {
		hint := ""
		if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == pgerrcode.InsufficientPrivilege {
			hint = "; the role may not create them: create them once as a role that may (Open with it), or grant this role CREATE on the database"
		}
		return fmt.Errorf("index/pg: create the index tables in schema %s: %w%s", s.schema, err, hint)
	}
	return nil
}

// begin starts a call: it checks ctx.
func (s *Store) begin(ctx context.Context) error {
	return ctx.Err()
}

func position(p event.Position) (int64, error) {
	if p > math.MaxInt64 {
		return 0, fmt.Errorf("position %d is beyond PostgreSQL's bigint; positions above %d cannot be stored", p, int64(math.MaxInt64))
	}
	return int64(p), nil
}

func scanPosition(p int64) (event.Position, error) {
	if p < 0 {
		return 0, fmt.Errorf("negative position %d in the table", p)
	}
	return event.Position(p), nil
}

// State returns the indexer's state, and makes its generation the one this Store writes
// from: see the package doc.
func (s *Store) State(ctx context.Context, indexer string) (index.State, bool, error) {
	if err := s.begin(ctx); err != nil {
		return index.State{}, false, fmt.Errorf("index/pg: read the state of %q: %w", indexer, err)
	}
	s.mu.Lock()
	var writes uint64
	if sg := s.seen[indexer]; sg != nil {
		writes = sg.writes
	}
	s.mu.Unlock()

	var (
		stored         bool
		cp, since, gen int64
		st             index.State
	)
	err := s.db.QueryRow(ctx, s.sqlState, indexer).Scan(&stored, &cp, &since, &st.Version, &gen)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		stored, gen = false, 0
	case err != nil:
		return index.State{}, false, fmt.Errorf("index/pg: read the state of %q: %w", indexer, err)
	}
	if stored {
		if st.Checkpoint, err = scanPosition(cp); err == nil {
			st.Since, err = scanPosition(since)
		}
		if err != nil {
			return index.State{}, false, fmt.Errorf("index/pg: read the state of %q: %w", indexer, err)
		}
	}

	if s.afterStateRead != nil {
		s.afterStateRead()
	}
	// A write of this Store that committed while the state was read is newer than what
	// was read: it stays the one to write from.
	s.mu.Lock()
	sg := s.seen[indexer]
	if sg == nil {
		sg = &seenGen{}
		s.seen[indexer] = sg
	}
	if sg.writes == writes {
		sg.gen = gen
	}
	s.mu.Unlock()
	if !stored {
		return index.State{}, false, nil
	}
	return st, true, nil
}

// CheckFence returns nil when this Store's next write of the indexer would pass the fence
// (no other Store wrote or reset it since this one last read or wrote it, or this Store
// has not seen it yet), and an error wrapping [ErrFenced] when it would fail. It writes
// nothing and does not move the fence (State does).
func (s *Store) CheckFence(ctx context.Context, indexer string) error {
	gen, known := s.seenOf(indexer)
	if !known {
		return nil
	}
	var cur int64
	err := s.db.QueryRow(ctx, s.sqlGeneration, indexer).Scan(&cur)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		cur = 0
	case err != nil:
		return fmt.Errorf("index/pg: check the fence of %q: %w", indexer, err)
	}
	if cur != gen {
		return fmt.Errorf("index/pg: %q: %w", indexer, ErrFenced)
	}
	return nil
}

// seenOf returns the generation this Store last saw of the indexer; known is false when it
// has seen none.
func (s *Store) seenOf(indexer string) (gen int64, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sg := s.seen[indexer]; sg != nil {
		return sg.gen, true
	}
	return 0, false
}

// saw records a write or reset of this Store that committed with generation gen.
func (s *Store) saw(indexer string, gen int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sg := s.seen[indexer]
	if sg == nil {
		sg = &seenGen{}
		s.seen[indexer] = sg
	}
	sg.gen = gen
	sg.writes++
}

// writeArgs returns a batch's statement and its arguments.
func (s *Store) writeArgs(b *index.Batch, gen int64, known bool) (string, []any, error) {
	cp, err := position(b.State.Checkpoint)
	if err != nil {
		return "", nil, err
	}
	since, err := position(b.State.Since)
	if err != nil {
		return "", nil, err
	}
	values := make([][]byte, len(b.Entries))
	ps := make([]int64, len(b.Entries))
	for i, e := range b.Entries {
		if ps[i], err = position(e.Position); err != nil {
			return "", nil, err
		}
		if strings.IndexByte(e.Value, 0) >= 0 {
			return "", nil, fmt.Errorf("the value %q at position %d contains a NUL byte; values must not", e.Value, e.Position)
		}
		values[i] = []byte(e.Value)
	}
	args := []any{b.Indexer, cp, since, b.State.Version, values, ps}
	switch {
	case !known:
		return s.sqlWriteAny, args, nil
	case gen == 0:
		return s.sqlWriteNew, args, nil
	}
	return s.sqlWriteFrom, append(args, gen), nil
}

// Write applies the batches in one transaction. Each batch's write is fenced on the
// generation this Store last saw of its indexer: when another Store wrote the indexer
// since, Write fails with [ErrFenced] and writes nothing.
func (s *Store) Write(ctx context.Context, batches ...index.Batch) error {
	if len(batches) == 0 {
		return nil
	}
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("index/pg: write: %w", err)
	}
	if len(batches) == 1 {
		// One statement: its own transaction, one round trip.
		b := &batches[0]
		gen, known := s.seenOf(b.Indexer)
		sql, args, err := s.writeArgs(b, gen, known)
		if err != nil {
			return fmt.Errorf("index/pg: write %q: %w", b.Indexer, err)
		}
		var next int64
		if err := s.db.QueryRow(ctx, sql, args...).Scan(&next); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("index/pg: write %q: %w", b.Indexer, ErrFenced)
			}
			return fmt.Errorf("index/pg: write %q through position %d: %w", b.Indexer, b.State.Checkpoint, err)
		}
		s.saw(b.Indexer, next)
		return nil
	}

	// Several batches: one transaction, a statement each, in order, so that a later
	// batch of the same indexer is fenced on the generation the earlier one wrote.
	gens := map[string]int64{}
	known := map[string]bool{}
	for i := range batches {
		name := batches[i].Indexer
		if _, ok := known[name]; !ok {
			gens[name], known[name] = s.seenOf(name)
		}
	}
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		for i := range batches {
			b := &batches[i]
			sql, args, err := s.writeArgs(b, gens[b.Indexer], known[b.Indexer])
			if err != nil {
				return fmt.Errorf("write %q: %w", b.Indexer, err)
			}
			var next int64
			if err := tx.QueryRow(ctx, sql, args...).Scan(&next); err != nil {
				if errors.Is(err, pgx.ErrNoRows) {
					return fmt.Errorf("write %q: %w", b.Indexer, ErrFenced)
				}
				return fmt.Errorf("write %q through position %d: %w", b.Indexer, b.State.Checkpoint, err)
			}
			gens[b.Indexer], known[b.Indexer] = next, true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("index/pg: write %d batches: %w", len(batches), err)
	}
	for name, gen := range gens {
		s.saw(name, gen)
	}
	return nil
}

// Positions returns up to limit positions after after under the indexer's value.
func (s *Store) Positions(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Position, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("index/pg: read positions of %q: %w", indexer, err)
	}
	if limit <= 0 {
		return nil, nil
	}
	a, err := position(after)
	if err != nil {
		return nil, nil // no position is after it
	}
	rows, err := s.db.Query(ctx, s.sqlPositions, indexer, []byte(value), a, int64(limit))
	if err != nil {
		return nil, fmt.Errorf("index/pg: read positions of %q: %w", indexer, err)
	}
	var (
		out []event.Position
		p   int64
	)
	_, err = pgx.ForEachRow(rows, []any{&p}, func() error {
		pos, err := scanPosition(p)
		out = append(out, pos)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("index/pg: read positions of %q: %w", indexer, err)
	}
	return out, nil
}

// Entries calls fn with every entry of the indexer, by value (bytewise) then position, as
// the rows arrive, in one snapshot; fn holds one of DB's connections while it runs.
func (s *Store) Entries(ctx context.Context, indexer string, fn func(index.Entry) error) error {
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("index/pg: read entries of %q: %w", indexer, err)
	}
	return s.scan(ctx, "read entries of "+indexer, fn, s.sqlEntries, indexer)
}

// EntriesSince calls fn with the indexer's entries whose position is in (after, through],
// by position then value (bytewise), as the rows arrive, in one snapshot; it stops at fn's
// first error and returns it. A follower reads with it what the indexer's runner wrote.
func (s *Store) EntriesSince(ctx context.Context, indexer string, after, through event.Position, fn func(index.Entry) error) error {
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("index/pg: read entries of %q since %d: %w", indexer, after, err)
	}
	if through <= after {
		return nil
	}
	a, err := position(after)
	if err != nil {
		return nil // nothing is after it
	}
	t := min(through, event.Position(math.MaxInt64))
	return s.scan(ctx, fmt.Sprintf("read entries of %s in (%d, %d]", indexer, after, through), fn, s.sqlEntriesSince, indexer, a, int64(t))
}

// fnError carries fn's error through pgx.ForEachRow, so that it is returned as it is.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

func (s *Store) scan(ctx context.Context, what string, fn func(index.Entry) error, sql string, args ...any) error {
	rows, err := s.db.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("index/pg: %s: %w", what, err)
	}
	var (
		v []byte
		p int64
	)
	_, err = pgx.ForEachRow(rows, []any{&v, &p}, func() error {
		pos, err := scanPosition(p)
		if err != nil {
			return err
		}
		if err := fn(index.Entry{Value: string(v), Position: pos}); err != nil {
			return fnError{err}
		}
		return nil
	})
	if fe := (fnError{}); errors.As(err, &fe) {
		return fe.err
	}
	if err != nil {
		return fmt.Errorf("index/pg: %s: %w", what, err)
	}
	return nil
}

// Reset deletes the indexer's entries and state in one transaction. It is fenced as a
// write is: when another Store wrote the indexer since this one last saw it, it fails with
// [ErrFenced] and deletes nothing. An indexer this Store has not seen is reset
// unconditionally.
func (s *Store) Reset(ctx context.Context, indexer string) error {
	if err := s.begin(ctx); err != nil {
		return fmt.Errorf("index/pg: reset %q: %w", indexer, err)
	}
	gen, known := s.seenOf(indexer)
	var next int64
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		// The state's row first: its lock makes writes of the indexer wait, and once it
		// is held the delete sees every entry committed before.
		var err error
		switch {
		case !known:
			err = tx.QueryRow(ctx, s.sqlResetAny, indexer).Scan(&next)
		case gen == 0:
			err = tx.QueryRow(ctx, s.sqlResetNew, indexer).Scan(&next)
		default:
			err = tx.QueryRow(ctx, s.sqlResetFrom, indexer, gen).Scan(&next)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrFenced
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, s.sqlDelete, indexer)
		return err
	})
	if err != nil {
		return fmt.Errorf("index/pg: reset %q: %w", indexer, err)
	}
	s.saw(indexer, next)
	return nil
}
