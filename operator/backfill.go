package operator

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgschema"
)

// BackfillBatchDefault is how many ids (or rows) a backfill handles per transaction when
// [BackfillOpts].BatchSize is 0.
const BackfillBatchDefault = 1000

// ErrBackfillRunning is returned by Backfill when another backfill of the same operator is
// running, in this process or another one.
var ErrBackfillRunning = errors.New("operator: a backfill of this operator is already running")

// BackfillOpts are the options of [Backfill]. A nil *BackfillOpts means the defaults.
type BackfillOpts struct {
	// BatchSize is how many ids (SQL operator) or rows (Func operator) are handled in one
	// transaction. Default 1000 (BackfillBatchDefault).
	BatchSize int
	// Progress is called once when the backfill starts on an entity and after each committed
	// batch, with a [BackfillProgress] to show or log as the caller likes. Default: none.
	Progress ProgressFunc
	// Restart ignores the saved progress of an interrupted backfill and starts over.
	// Default false: an interrupted backfill resumes after its last committed batch (a
	// finished one always starts over).
	Restart bool
	// Derived also runs an [SQL] operator's Query for the id of every row already in its
	// Target, after the entities, so that a derived row whose id no longer appears in any
	// entity (all its comments deleted, while nothing followed them) is recomputed too.
	// [Reset] sets it. Default false.
	Derived bool
}

// Backfill runs operator op for every row that already exists in its source entities, so
// that its derived rows become exact without waiting for those rows to change: after adding
// an operator to tables that have data, after changing its query, after a TRUNCATE, or
// after skipping an event. It needs no [Runner], so the CLI runs it in its own process while
// walflow keeps running.
//
// For an [SQL] operator it walks, entity after entity, the distinct non-NULL values of the
// entity's id column (ID[entity], default "id") in ascending order of the column's own type,
// and runs Query for each with $1 bound to the value's text, as the live path does. An
// entity in DeleteWith is walked too (its rows' ids are recomputed, not deleted). Before the
// walk, a derived row whose id no longer exists in a DeleteWith entity (its delete was never
// seen, e.g. after a TRUNCATE) is deleted. An index on each id column keeps every batch
// cheap.
//
// For a [Func] operator it walks each entity's rows in primary key order and calls Handle
// with a synthesized insert event per row: NewRecord holds every column in PostgreSQL's
// text form, as replication sends it, and Source describes the table; Position, LSN and XID
// are 0 and Timestamp is when the batch started. A Func operator whose Events exclude
// insert cannot be backfilled. Handle must be idempotent for the result to be exact while
// live events flow: a row can be seen both by the backfill and by the live operator.
//
// Each batch is one transaction that takes the operator's lock (the one every live batch
// takes), applies the batch and saves the progress in walflow.backfills. So a backfill is
// safe while live events flow: live and backfill batches never overlap, and each statement
// after the lock sees everything committed before it, so whichever recomputes a row last
// does so from the latest data; a derived row ends up exact either way. It is resumable:
// when interrupted (ctx cancelled, crash), running it again continues after the last
// committed batch, unless opts.Restart is set. A backfill that finished starts over when run
// again. Only one backfill of an operator runs at a time; another gets [ErrBackfillRunning].
// Progress is kept in the walflow.backfills table, created when missing. Backfill uses two
// connections of db at a time: one holds the run's lock, the other runs the batches.
//
// Backfill returns when every entity is done, or with an error wrapping ctx.Err() when ctx
// ends first.
func Backfill(ctx context.Context, db *pgxpool.Pool, op Operator, opts *BackfillOpts) error {
	if db == nil {
		return errors.New("operator: Backfill needs a pgxpool.Pool on the followed database")
	}
	if opts == nil {
		opts = &BackfillOpts{}
	}
	if opts.BatchSize < 0 {
		return fmt.Errorf("operator: BackfillOpts.BatchSize is %d; use a positive number or 0 for %d", opts.BatchSize, BackfillBatchDefault)
	}
	s, err := op.spec()
	if err != nil {
		return err
	}
	b := &backfill{db: db, name: s.name, batch: cmp.Or(opts.BatchSize, BackfillBatchDefault), progress: opts.Progress}
	if err := b.plan(ctx, op, opts.Derived); err != nil {
		return err
	}
	if err := migrateBackfills(ctx, db); err != nil {
		return err
	}
	unlock, err := b.lockRun(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	states, err := b.load(ctx, opts.Restart)
	if err != nil {
		return b.fail(ctx, err)
	}
	if err := b.prune(ctx); err != nil {
		return b.fail(ctx, err)
	}
	for _, w := range b.walkers {
		if err := b.walk(ctx, w, states[w.entity]); err != nil {
			return b.fail(ctx, err)
		}
	}
	return nil
}

// Backfill runs [Backfill] for the runner's operator called name. It may run while the
// runner runs.
func (r *Runner) Backfill(ctx context.Context, name string, opts *BackfillOpts) error {
	for _, op := range r.cfg.Operators {
		if s, err := op.spec(); err == nil && s.name == name {
			return Backfill(ctx, r.cfg.DB, op, opts)
		}
	}
	return fmt.Errorf("%w: %q", ErrUnknown, name)
}

// backfill is one run of Backfill.
type backfill struct {
	db       *pgxpool.Pool
	name     string
	batch    int
	progress ProgressFunc
	walkers  []*walker
	pruneSQL []string // SQL operators: deletes of derived rows whose DeleteWith row is gone
}

// walker walks one entity's ids or rows in key order.
type walker struct {
	entity   string
	countSQL string
	// step handles at most n ids or rows after last (nil: from the start) in tx, which
	// holds the operator's lock, and saves the progress in tx with saveProgressSQL. It
	// returns the new last key (nil when there was nothing left) and how many it handled.
	step func(ctx context.Context, tx pgx.Tx, last *string, n int) (*string, int, error)
}

// saveProgressSQL records a committed batch: $1 operator, $2 entity, $3 last key (NULL:
// unchanged), $4 ids or rows handled, $5 whether the entity is finished.
const saveProgressSQL = `UPDATE walflow.backfills SET last_id = coalesce($3, last_id), done = done + $4,
	finished_at = CASE WHEN $5::bool THEN now() END, updated_at = now() WHERE operator = $1 AND entity = $2`

// migrateBackfills creates the walflow.backfills table when missing.
func migrateBackfills(ctx context.Context, db *pgxpool.Pool) error {
	err := pgschema.Create(ctx, db, `CREATE SCHEMA IF NOT EXISTS walflow;
		CREATE TABLE IF NOT EXISTS walflow.backfills (
			operator text NOT NULL,
			entity text NOT NULL,
			last_id text,
			done bigint NOT NULL DEFAULT 0,
			total bigint,
			started_at timestamptz NOT NULL DEFAULT now(),
			finished_at timestamptz,
			updated_at timestamptz NOT NULL DEFAULT now(),
			PRIMARY KEY (operator, entity))`)
	if err != nil {
		return fmt.Errorf("operator: create the walflow.backfills table: %w%s", err, pgschema.PrivilegeHint(err))
	}
	return nil
}

func (b *backfill) fail(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return &BackfillError{Operator: b.name, Err: fmt.Errorf("interrupted; run it again to resume after the last committed batch: %w", ctx.Err())}
	}
	return &BackfillError{Operator: b.name, Err: err}
}

// BackfillError is a failed or interrupted [Backfill] of an operator. A caller that names
// the operator itself (a command line) matches it with errors.As and reports Err.
type BackfillError struct {
	// Operator is the operator's name.
	Operator string
	// Err is what failed, and the fix when there is one.
	Err error
}

func (e *BackfillError) Error() string {
	return "operator: backfill of " + e.Operator + ": " + e.Err.Error()
}

func (e *BackfillError) Unwrap() error { return e.Err }

// lockRun holds a session advisory lock, on a connection of its own, for the whole run, so
// that two backfills of one operator never interleave their progress.
func (b *backfill) lockRun(ctx context.Context) (func(), error) {
	conn, err := b.db.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("operator: backfill of %s: connect: %w", b.name, err)
	}
	const key = `hashtextextended('walflow.backfill:' || $1, 0)`
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+key+`)`, b.name).Scan(&ok); err != nil {
		conn.Release()
		return nil, fmt.Errorf("operator: backfill of %s: lock: %w", b.name, err)
	}
	if !ok {
		conn.Release()
		return nil, fmt.Errorf("%w: %s; wait for it or stop it, then run this again", ErrBackfillRunning, b.name)
	}
	return func() {
		uctx := context.WithoutCancel(ctx)
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(`+key+`)`, b.name); err != nil {
			// Never hand a connection that may still hold the lock back to the pool.
			_ = conn.Conn().Close(uctx)
		}
		conn.Release()
	}, nil
}

// entityState is an entity's saved progress.
type entityState struct {
	lastID   *string
	done     int64
	total    int64
	finished bool
}

// load reads the saved progress, or resets it when starting over: on restart, on a first
// run, and after a finished run.
func (b *backfill) load(ctx context.Context, restart bool) (map[string]*entityState, error) {
	rows, err := b.db.Query(ctx, `SELECT entity, last_id, done, coalesce(total, 0), finished_at IS NOT NULL FROM walflow.backfills WHERE operator = $1`, b.name)
	if err != nil {
		return nil, fmt.Errorf("read walflow.backfills: %w", err)
	}
	saved := map[string]*entityState{}
	for rows.Next() {
		var ent string
		st := &entityState{}
		if err := rows.Scan(&ent, &st.lastID, &st.done, &st.total, &st.finished); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read walflow.backfills: %w", err)
		}
		saved[ent] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read walflow.backfills: %w", err)
	}
	entities := make([]string, len(b.walkers))
	finished := true
	for i, w := range b.walkers {
		entities[i] = w.entity
		st, ok := saved[w.entity]
		finished = finished && ok && st.finished
	}
	if restart || finished || len(saved) == 0 {
		saved = map[string]*entityState{}
		if _, err := b.db.Exec(ctx, `DELETE FROM walflow.backfills WHERE operator = $1`, b.name); err != nil {
			return nil, fmt.Errorf("reset walflow.backfills: %w", err)
		}
	}
	if _, err := b.db.Exec(ctx, `INSERT INTO walflow.backfills (operator, entity) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, b.name, entities); err != nil {
		return nil, fmt.Errorf("save to walflow.backfills: %w", err)
	}
	for _, e := range entities {
		if saved[e] == nil {
			saved[e] = &entityState{}
		}
	}
	return saved, nil
}

// prune deletes the derived rows whose DeleteWith row is gone, under the operator's lock.
func (b *backfill) prune(ctx context.Context) error {
	for _, q := range b.pruneSQL {
		if err := b.inTx(ctx, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, q)
			return err
		}); err != nil {
			return fmt.Errorf("delete derived rows whose source row is gone: %w", err)
		}
	}
	return nil
}

// inTx runs f in a transaction that holds the operator's lock, and commits.
func (b *backfill) inTx(ctx context.Context, f func(tx pgx.Tx) error) error {
	// Read committed whatever the database's default: each statement after the lock must
	// see what the lock's previous holder committed.
	tx, err := b.db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := lockOperator(ctx, tx, b.name); err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// walk handles one entity from its saved progress to its end.
func (b *backfill) walk(ctx context.Context, w *walker, st *entityState) error {
	p := BackfillProgress{Operator: b.name, Entity: w.entity, Done: st.done, Resumed: st.done, Started: time.Now()}
	report := func() {
		if b.progress != nil {
			p.At = time.Now()
			b.progress(p)
		}
	}
	if st.finished {
		// Finished by the run this one resumes.
		p.Total, p.Finished = st.total, true
		report()
		return nil
	}
	// Counted once per run: rows written meanwhile make the total approximate.
	if err := b.db.QueryRow(ctx, w.countSQL).Scan(&p.Total); err != nil {
		return fmt.Errorf("count %s: %w", w.entity, err)
	}
	if _, err := b.db.Exec(ctx, `UPDATE walflow.backfills SET total = $3 WHERE operator = $1 AND entity = $2`, b.name, w.entity, p.Total); err != nil {
		return fmt.Errorf("save progress: %w", err)
	}
	report()
	for {
		var last *string
		var n int
		err := b.inTx(ctx, func(tx pgx.Tx) error {
			var err error
			last, n, err = w.step(ctx, tx, st.lastID, b.batch)
			return err
		})
		if err != nil {
			return fmt.Errorf("%s after id %s: %w", w.entity, deref(st.lastID), err)
		}
		if last != nil {
			st.lastID = last
		}
		st.done += int64(n)
		p.Done = st.done
		p.Finished = n < b.batch
		report()
		if p.Finished {
			return nil
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return "(start)"
	}
	return *s
}

// plan prepares the walkers of op's entities.
func (b *backfill) plan(ctx context.Context, op Operator, derived bool) error {
	switch o := op.(type) {
	case SQL:
		return b.planSQL(o, derived)
	case *SQL:
		return b.planSQL(*o, derived)
	case Func:
		return b.planFunc(ctx, o)
	case *Func:
		return b.planFunc(ctx, *o)
	}
	return fmt.Errorf("operator: cannot backfill an operator of type %T", op)
}

func (b *backfill) planSQL(o SQL, derived bool) error {
	target := quoteTable(o.Target)
	targetCol := cmp.Or(o.TargetIDColumn, TargetIDColumnDefault)
	targetID := pgx.Identifier{targetCol}.Sanitize()
	for _, ent := range o.Entities {
		col := cmp.Or(o.ID[ent], o.ID[event.TableName(ent)], "id")
		qcol := pgx.Identifier{col}.Sanitize()
		table := quoteTable(ent)
		if slices.Contains(o.DeleteWith, ent) {
			// The text forms are compared, as the live path binds the id as text.
			b.pruneSQL = append(b.pruneSQL, `DELETE FROM `+target+` t WHERE t.`+targetID+` IS NOT NULL AND NOT EXISTS (
				SELECT 1 FROM `+table+` e WHERE e.`+qcol+`::text = t.`+targetID+`::text)`)
		}
		b.walkers = append(b.walkers, b.idWalker(o, ent, table, qcol))
	}
	if derived {
		b.walkers = append(b.walkers, b.idWalker(o, o.Target, target, targetID))
	}
	return nil
}

// idWalker walks the distinct non-NULL values of column qcol of table (named entity in the
// progress) and runs o's Query for each.
func (b *backfill) idWalker(o SQL, entity, table, qcol string) *walker {
	// The text form is selected but the column's own type orders (numbers numerically),
	// and $2, sent as text, is read as that type. GROUP BY rather than DISTINCT, which
	// would have to order by what it selects; e.col rather than col, which ORDER BY would
	// take for the text output column of the same name.
	ecol := `e.` + qcol
	first := `SELECT ` + ecol + `::text FROM ` + table + ` e WHERE ` + ecol + ` IS NOT NULL GROUP BY ` + ecol + ` ORDER BY ` + ecol + ` LIMIT $1`
	next := `SELECT ` + ecol + `::text FROM ` + table + ` e WHERE ` + ecol + ` > $2 GROUP BY ` + ecol + ` ORDER BY ` + ecol + ` LIMIT $1`
	query, what := o.Query, "query for "+o.Target+" id "
	return &walker{
		entity:   entity,
		countSQL: `SELECT count(DISTINCT ` + qcol + `) FROM ` + table,
		step: func(ctx context.Context, tx pgx.Tx, last *string, n int) (*string, int, error) {
			var rows pgx.Rows
			var err error
			if last == nil {
				rows, err = tx.Query(ctx, first, n)
			} else {
				rows, err = tx.Query(ctx, next, n, *last)
			}
			if err != nil {
				return nil, 0, fmt.Errorf("read the ids of %s: %w", entity, err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return nil, 0, fmt.Errorf("read the ids of %s: %w", entity, err)
			}
			var newLast *string
			if len(ids) > 0 {
				newLast = &ids[len(ids)-1]
			}
			// The whole batch and the progress update travel in one round trip.
			batch := &pgx.Batch{}
			for _, id := range ids {
				batch.Queue(query, id)
			}
			batch.Queue(saveProgressSQL, b.name, entity, newLast, len(ids), len(ids) < n)
			res := tx.SendBatch(ctx, batch)
			defer res.Close()
			for _, id := range ids {
				if _, err := res.Exec(); err != nil {
					return nil, 0, fmt.Errorf("%s%s: %w", what, id, err)
				}
			}
			if _, err := res.Exec(); err != nil {
				return nil, 0, fmt.Errorf("save progress: %w", err)
			}
			return newLast, len(ids), res.Close()
		},
	}
}

// planFunc reads each entity's columns and primary key from the catalog.
func (b *backfill) planFunc(ctx context.Context, o Func) error {
	if !slices.Contains(defaultTypes(o.Events), event.Insert) {
		return fmt.Errorf("operator %s: cannot backfill: its Events exclude insert, and a backfill presents existing rows as insert events", o.Name)
	}
	res := newTypeLookup()
	for _, ent := range o.Entities {
		tbl, err := describeTable(ctx, b.db, res, ent)
		if err != nil {
			return fmt.Errorf("operator %s: backfill entity %s: %w", o.Name, ent, err)
		}
		b.walkers = append(b.walkers, tbl.walker(b.name, ent, o.Handle))
	}
	return nil
}

// table is what a Func backfill needs to know of an entity.
type table struct {
	source  event.Source
	quoted  string
	selects []string // quoted columns: the event's, then any key column not among them
	keys    []int    // positions of the primary key columns in selects
	delims  []byte   // per event column: its array delimiter when not event.ArrayDelim of its OID, else 0
}

func describeTable(ctx context.Context, db *pgxpool.Pool, tl *typeLookup, ent string) (*table, error) {
	t := &table{quoted: quoteTable(ent)}
	var replident string
	err := db.QueryRow(ctx, `SELECT current_database(), n.nspname, c.relname, c.relreplident::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)`, t.quoted).
		Scan(&t.source.DB, &t.source.Schema, &t.source.Table, &replident)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("no table %s", ent)
	}
	if err != nil {
		return nil, fmt.Errorf("look up table: %w", err)
	}
	rows, err := db.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attgenerated <> '',
			coalesce(pk.ord, 0), coalesce(a.attnum = ANY (ri.indkey::int2[]), false)
		FROM pg_attribute a
		LEFT JOIN LATERAL (SELECT k.ord FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
			WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.attnum = a.attnum) pk ON true
		LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND ri.indisreplident
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, t.quoted)
	if err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	type col struct {
		name, typ     string
		oid           uint32
		generated, ri bool
		pk            int64
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (col, error) {
		var c col
		err := r.Scan(&c.name, &c.typ, &c.oid, &c.generated, &c.pk, &c.ri)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	var pk []col
	for _, c := range cols {
		if c.pk > 0 {
			pk = append(pk, c)
		}
		if c.generated {
			// Replication does not send generated columns: neither does the backfill.
			continue
		}
		dec, err := tl.decodeType(ctx, db, c.oid)
		if err != nil {
			return nil, err
		}
		key := replident == "f" || (replident == "d" && c.pk > 0) || (replident == "i" && c.ri)
		t.source.Columns = append(t.source.Columns, event.Column{Name: c.name, Type: c.typ, OID: dec.oid, Key: key})
		t.delims = append(t.delims, dec.delim)
		t.selects = append(t.selects, pgx.Identifier{c.name}.Sanitize())
	}
	if len(pk) == 0 {
		return nil, errors.New("no primary key, which a backfill walks the rows by; add one")
	}
	slices.SortFunc(pk, func(a, b col) int { return cmp.Compare(a.pk, b.pk) })
	for _, k := range pk {
		i := slices.IndexFunc(t.source.Columns, func(c event.Column) bool { return c.Name == k.name })
		if i < 0 {
			i = len(t.selects)
			t.selects = append(t.selects, pgx.Identifier{k.name}.Sanitize())
		}
		t.keys = append(t.keys, i)
	}
	return t, nil
}

// walker walks the table's rows in primary key order. The last key is saved as the key
// column's text, or as a JSON array of the texts for a composite key.
func (t *table) walker(name, ent string, handle HandlerFunc) *walker {
	var keyList, params []string
	for i, k := range t.keys {
		keyList = append(keyList, t.selects[k])
		params = append(params, "$"+strconv.Itoa(i+2))
	}
	keys := strings.Join(keyList, ", ")
	sel := `SELECT ` + strings.Join(t.selects, ", ") + ` FROM ` + t.quoted
	first := sel + ` ORDER BY ` + keys + ` LIMIT $1`
	next := sel + ` WHERE (` + keys + `) > (` + strings.Join(params, ", ") + `) ORDER BY ` + keys + ` LIMIT $1`
	if len(t.keys) == 1 {
		next = sel + ` WHERE ` + keys + ` > $2 ORDER BY ` + keys + ` LIMIT $1`
	}
	ncols := len(t.source.Columns)
	return &walker{
		entity:   ent,
		countSQL: `SELECT count(*) FROM ` + t.quoted,
		step: func(ctx context.Context, tx pgx.Tx, last *string, n int) (*string, int, error) {
			// Text results: values exactly as replication would send them.
			args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}, n}
			query := first
			if last != nil {
				query = next
				if len(t.keys) == 1 {
					args = append(args, *last)
				} else {
					var ks []string
					if err := json.Unmarshal([]byte(*last), &ks); err != nil || len(ks) != len(t.keys) {
						return nil, 0, fmt.Errorf("saved position %q is not a key of %s; run the backfill with Restart", *last, ent)
					}
					for _, k := range ks {
						args = append(args, k)
					}
				}
			}
			rows, err := tx.Query(ctx, query, args...)
			if err != nil {
				return nil, 0, fmt.Errorf("read the rows of %s: %w", ent, err)
			}
			var recs []event.Record
			var keyText []string
			for rows.Next() {
				raw := rows.RawValues()
				rec := make(event.Record, ncols)
				for i := range ncols {
					c := &t.source.Columns[i]
					rec[i] = event.Field{Name: c.Name, Value: event.Null(c.OID)}
					if raw[i] != nil {
						rec[i].Value = event.ArrayText(c.OID, t.delims[i], string(raw[i]))
					}
				}
				recs = append(recs, rec)
				keyText = keyText[:0]
				for _, k := range t.keys {
					keyText = append(keyText, string(raw[k]))
				}
			}
			if err := rows.Err(); err != nil {
				return nil, 0, fmt.Errorf("read the rows of %s: %w", ent, err)
			}
			var newLast *string
			if len(recs) > 0 {
				k := keyText[0]
				if len(t.keys) > 1 {
					b, _ := json.Marshal(keyText)
					k = string(b)
				}
				newLast = &k
			}
			now := time.Now()
			for _, rec := range recs {
				e := event.Event{Name: t.source.Table, Type: event.Insert, Source: t.source, NewRecord: rec, Timestamp: now}
				if err := handle(ctx, tx, &e); err != nil {
					return nil, 0, fmt.Errorf("handle %s row %s: %w", ent, rowKey(rec, t), err)
				}
			}
			if _, err := tx.Exec(ctx, saveProgressSQL, name, ent, newLast, len(recs), len(recs) < n); err != nil {
				return nil, 0, fmt.Errorf("save progress: %w", err)
			}
			return newLast, len(recs), nil
		},
	}
}

// rowKey names a row by its key values, for errors.
func rowKey(rec event.Record, t *table) string {
	var parts []string
	for _, k := range t.keys {
		if k < len(rec) {
			parts = append(parts, rec[k].Value.String())
		}
	}
	return strings.Join(parts, ",")
}

// typeLookup finds the OID a column's values decode as, as the replication source does:
// the type itself when pgx knows it, a domain's base type, the array of a known element
// type, and text otherwise (enums, composite and extension types); and for an array, the
// delimiter between its elements (its element type's pg_type.typdelim).
type typeLookup struct {
	known *pgtype.Map
	cache map[uint32]decodeType
}

// decodeType is how a column's values decode: as oid, and for an array whose delimiter is
// not event.ArrayDelim(oid), split on delim (else 0).
type decodeType struct {
	oid   uint32
	delim byte
}

func newTypeLookup() *typeLookup {
	return &typeLookup{known: pgtype.NewMap(), cache: map[uint32]decodeType{}}
}

func (tl *typeLookup) decodeType(ctx context.Context, db *pgxpool.Pool, oid uint32) (decodeType, error) {
	if d, ok := tl.cache[oid]; ok {
		return d, nil
	}
	d, delim, err := tl.resolve(ctx, db, oid, 0)
	if err != nil {
		return decodeType{}, fmt.Errorf("look up type %d: %w", oid, err)
	}
	dt := decodeType{oid: d}
	if delim != event.ArrayDelim(d) {
		dt.delim = delim
	}
	tl.cache[oid] = dt
	return dt, nil
}

func (tl *typeLookup) resolve(ctx context.Context, db *pgxpool.Pool, oid uint32, depth int) (uint32, byte, error) {
	if _, ok := tl.known.TypeForOID(oid); ok {
		return oid, event.ArrayDelim(oid), nil
	}
	if depth > 10 {
		return pgtype.TextOID, ',', nil
	}
	var typtype, delim string
	var array bool
	var base, elem uint32
	// An array is a type written by array_out; int2vector and oidvector have an element type
	// too, but write their elements space-separated without braces, so they stay text.
	err := db.QueryRow(ctx, `SELECT t.typtype::text, t.typoutput = 'pg_catalog.array_out'::regproc, t.typbasetype, t.typelem,
			coalesce(e.typdelim, ',')::text
		FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem WHERE t.oid = $1`, oid).
		Scan(&typtype, &array, &base, &elem, &delim)
	if errors.Is(err, pgx.ErrNoRows) {
		return pgtype.TextOID, ',', nil
	}
	if err != nil {
		return 0, 0, err
	}
	switch {
	case typtype == "d":
		return tl.resolve(ctx, db, base, depth+1)
	case array && elem != 0:
		e, _, err := tl.resolve(ctx, db, elem, depth+1)
		if err != nil {
			return 0, 0, err
		}
		d := byte(',')
		if len(delim) == 1 {
			d = delim[0]
		}
		var arr uint32
		if err := db.QueryRow(ctx, `SELECT typarray FROM pg_catalog.pg_type WHERE oid = $1`, e).Scan(&arr); err == nil {
			if _, ok := tl.known.TypeForOID(arr); ok {
				return arr, d, nil
			}
		}
		return pgtype.TextArrayOID, d, nil
	}
	return pgtype.TextOID, ',', nil
}
