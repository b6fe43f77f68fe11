package snapshot

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Defaults of [Config] and [Opts].
const (
	// LimitDefault is the default Opts.Limit: rows per page.
	LimitDefault = 1000
	// LimitMax is the largest Opts.Limit.
	LimitMax = 10000
	// IdleTimeoutDefault is the default Config.IdleTimeout.
	IdleTimeoutDefault = 30 * time.Second
	// MaxOpenDefault is the default Config.MaxOpen.
	MaxOpenDefault = 16
	// RaceWindowDefault is the default Config.RaceWindow.
	RaceWindowDefault = 30 * time.Second
)

// Errors of [Reader.Read]; match them with errors.Is.
var (
	// ErrCursorExpired: the cursor's snapshot was released (its IdleTimeout passed, or it
	// was read by another process). Load the channel again from the first page.
	ErrCursorExpired = errors.New("snapshot: cursor expired")
	// ErrBusy: MaxOpen paged snapshots are open. Retry shortly.
	ErrBusy = errors.New("snapshot: too many paged snapshots open")
	// ErrBadRequest: the channel, cursor or limit is malformed.
	ErrBadRequest = errors.New("snapshot: bad request")
)

// Ledger is what a Reader reads of the ledger: positions, LSNs and commit times, to find the
// token's start position. ledger.Ledger satisfies it.
type Ledger interface {
	Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error)
	State() ledger.State
}

// Config configures a [Reader].
type Config struct {
	// Pool connects to the followed database. Required.
	Pool *pgxpool.Pool
	// Router maps channels to tables, id columns and scopes. Required.
	Router *channel.Router
	// Ledger is the engine's ledger. Required.
	Ledger Ledger
	// IdleTimeout is how long the snapshot of a paged read stays open waiting for its next
	// page. Default IdleTimeoutDefault (30s).
	IdleTimeout time.Duration
	// MaxOpen is the most paged snapshots open at once (each holds a connection of Pool).
	// Default MaxOpenDefault (16).
	MaxOpen int
	// RaceWindow is how long before the snapshot a transaction may have written its commit
	// record while staying invisible to it; see the package documentation. Default
	// RaceWindowDefault (30s).
	RaceWindow time.Duration
}

// Opts are the options of one read. Nil means the first page with LimitDefault rows.
type Opts struct {
	// Cursor continues a paged read: the Next of the previous page. Empty: the first page.
	Cursor string
	// Limit is the most rows of the page, 1 to LimitMax. Default LimitDefault (1000).
	Limit int
}

// Page is one page of a channel's rows, in primary key order.
type Page struct {
	// Channel is the canonical channel.
	Channel string `json:"channel"`
	// Rows are the rows, each as an event's new_record shows it.
	Rows []event.Record `json:"rows"`
	// Token is the resume token of the snapshot, the same on every page of a read.
	Token Token `json:"token"`
	// Next is the cursor of the next page; empty on the last page.
	Next string `json:"next,omitempty"`
}

// Reader reads channel snapshots. It is safe for concurrent use; Close releases the
// snapshots it holds open.
type Reader struct {
	cfg Config

	mu     sync.Mutex
	open   map[string]*held
	closed bool
}

// held is a paged read's open snapshot transaction.
type held struct {
	mu      sync.Mutex // one page at a time
	id      string
	channel string
	tx      pgx.Tx
	tbl     *table
	token   Token
	timer   *time.Timer
	done    bool
}

// NewReader returns a Reader, or an error naming a missing field.
func NewReader(cfg Config) (*Reader, error) {
	switch {
	case cfg.Pool == nil:
		return nil, errors.New("snapshot: Config.Pool is nil; pass a pool on the followed database")
	case cfg.Router == nil:
		return nil, errors.New("snapshot: Config.Router is nil; pass engine.Router()")
	case cfg.Ledger == nil:
		return nil, errors.New("snapshot: Config.Ledger is nil; pass engine.Ledger()")
	}
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, IdleTimeoutDefault)
	cfg.MaxOpen = cmp.Or(cfg.MaxOpen, MaxOpenDefault)
	cfg.RaceWindow = cmp.Or(cfg.RaceWindow, RaceWindowDefault)
	return &Reader{cfg: cfg, open: map[string]*held{}}, nil
}

// Close rolls back the open paged snapshots; their cursors expire.
func (r *Reader) Close() {
	r.mu.Lock()
	r.closed = true
	hs := make([]*held, 0, len(r.open))
	for _, h := range r.open {
		hs = append(hs, h)
	}
	r.mu.Unlock()
	for _, h := range hs {
		r.release(h)
	}
}

// Read returns a page of the rows of channel ch (comments, comments/7, posts/42/comments)
// and the snapshot's token. Authorize the caller for ch before calling it.
func (r *Reader) Read(ctx context.Context, ch string, opts *Opts) (*Page, error) {
	if opts == nil {
		opts = &Opts{}
	}
	limit := cmp.Or(opts.Limit, LimitDefault)
	if limit < 1 || limit > LimitMax {
		return nil, fmt.Errorf("%w: limit %d: use 1 to %d rows per page", ErrBadRequest, opts.Limit, LimitMax)
	}
	c, err := channel.Parse(ch)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if err := r.cfg.Router.Check(c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if opts.Cursor != "" {
		return r.next(ctx, c.String(), opts.Cursor, limit)
	}
	return r.first(ctx, c, limit)
}

// first opens the snapshot, reads its first page, and keeps the snapshot open when there
// are more.
func (r *Reader) first(ctx context.Context, c channel.Channel, limit int) (*Page, error) {
	conn, err := r.cfg.Pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot: connect to the database: %w", err)
	}
	var l0s string
	// Before the snapshot: every transaction whose commit record is at or after l0 commits
	// after the snapshot is taken, so it is not visible in it.
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&l0s); err != nil {
		conn.Release()
		return nil, fmt.Errorf("snapshot: read the WAL position: %w", err)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		conn.Release()
		return nil, fmt.Errorf("snapshot: begin: %w", err)
	}
	h := &held{channel: c.String(), tx: tx}
	ok := false
	defer func() {
		if !ok {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			conn.Release()
		}
	}()
	// The first statement of a REPEATABLE READ transaction takes its snapshot; the insert
	// position is read after it, so every transaction visible in it committed before l1.
	var snap, l1s string
	var at time.Time
	if err := tx.QueryRow(ctx, `SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text, statement_timestamp()`).
		Scan(&snap, &l1s, &at); err != nil {
		return nil, fmt.Errorf("snapshot: take the snapshot (PostgreSQL 13 or later is needed): %w", err)
	}
	l0, err := event.ParseLSN(l0s)
	if err != nil {
		return nil, err
	}
	l1, err := event.ParseLSN(l1s)
	if err != nil {
		return nil, err
	}
	xmin, xmax, xip, err := parseSnapshot(snap)
	if err != nil {
		return nil, err
	}
	after, err := r.startPosition(ctx, l0, at.Add(-r.cfg.RaceWindow))
	if err != nil {
		return nil, err
	}
	h.token = Token{After: after, LSN: l1, Xmin: xmin, Xmax: xmax, Xip: xip}
	h.tbl, err = describe(ctx, tx, r.cfg.Router.Table(c.Table), c)
	if err != nil {
		return nil, err
	}
	rows, last, more, err := h.tbl.read(ctx, tx, nil, limit)
	if err != nil {
		return nil, err
	}
	page := &Page{Channel: h.channel, Rows: rows, Token: h.token}
	if !more {
		if err := tx.Commit(ctx); err != nil {
			return nil, fmt.Errorf("snapshot: end the snapshot: %w", err)
		}
		ok = true
		conn.Release()
		return page, nil
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	h.id = hex.EncodeToString(id[:])
	h.tx = &releasingTx{Tx: tx, conn: conn}
	r.mu.Lock()
	if r.closed || len(r.open) >= r.cfg.MaxOpen {
		closed := r.closed
		r.mu.Unlock()
		if closed {
			return nil, fmt.Errorf("%w: the reader is closed", ErrCursorExpired)
		}
		return nil, fmt.Errorf("%w (%d); retry shortly", ErrBusy, r.cfg.MaxOpen)
	}
	r.open[h.id] = h
	h.timer = time.AfterFunc(r.cfg.IdleTimeout, func() { r.release(h) })
	r.mu.Unlock()
	ok = true // h.tx now owns tx and conn: release rolls back and returns conn
	page.Next = cursorText(h.id, last)
	return page, nil
}

// releasingTx returns its connection to the pool when it ends.
type releasingTx struct {
	pgx.Tx
	conn *pgxpool.Conn
}

func (t *releasingTx) Rollback(ctx context.Context) error {
	err := t.Tx.Rollback(ctx)
	t.conn.Release()
	return err
}

// next reads the page after a cursor in the cursor's snapshot.
func (r *Reader) next(ctx context.Context, ch, cursor string, limit int) (*Page, error) {
	id, last, err := parseCursor(cursor)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	h := r.open[id]
	r.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("%w: its snapshot is no longer open (pages must follow within %s, from the same walflow process); load the channel again from the first page", ErrCursorExpired, r.cfg.IdleTimeout)
	}
	if h.channel != ch {
		return nil, fmt.Errorf("%w: the cursor belongs to channel %s, not %s", ErrBadRequest, h.channel, ch)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done || !h.timer.Stop() {
		return nil, fmt.Errorf("%w: its snapshot was released; load the channel again from the first page", ErrCursorExpired)
	}
	if len(last) != len(h.tbl.keys) {
		h.timer.Reset(r.cfg.IdleTimeout)
		return nil, fmt.Errorf("%w: the cursor does not fit the table's primary key", ErrBadRequest)
	}
	rows, newLast, more, err := h.tbl.read(ctx, h.tx, last, limit)
	if err != nil {
		h.mu.Unlock()
		r.release(h)
		h.mu.Lock()
		return nil, err
	}
	page := &Page{Channel: h.channel, Rows: rows, Token: h.token}
	if more {
		page.Next = cursorText(h.id, newLast)
		h.timer.Reset(r.cfg.IdleTimeout)
		return page, nil
	}
	h.mu.Unlock()
	r.release(h)
	h.mu.Lock()
	return page, nil
}

// release ends a held snapshot once.
func (r *Reader) release(h *held) {
	r.mu.Lock()
	delete(r.open, h.id)
	r.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return
	}
	h.done = true
	h.timer.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = h.tx.Rollback(ctx)
}

// cursorText is the cursor of the page after the row with key last.
func cursorText(id string, last []string) string {
	b, _ := json.Marshal(last)
	return id + "." + base64.RawURLEncoding.EncodeToString(b)
}

func parseCursor(s string) (string, []string, error) {
	id, enc, ok := strings.Cut(s, ".")
	var last []string
	if ok && len(id) == 32 {
		if b, err := base64.RawURLEncoding.DecodeString(enc); err == nil && json.Unmarshal(b, &last) == nil && len(last) > 0 {
			return id, last, nil
		}
	}
	return "", nil, fmt.Errorf("%w: cursor %q is not one a snapshot page returned; pass its next unchanged", ErrBadRequest, truncate(s))
}

// startPosition returns the token's After: the last ledger position whose commit LSN is
// before l0 and whose commit time is before notBefore, or earlier.
func (r *Reader) startPosition(ctx context.Context, l0 event.LSN, notBefore time.Time) (event.Position, error) {
	byLSN, err := r.lastWhere(ctx, func(e *event.Event) bool { return e.LSN < l0 })
	if err != nil {
		return 0, err
	}
	byTime, err := r.lastWhere(ctx, func(e *event.Event) bool { return e.Timestamp.Before(notBefore) })
	if err != nil {
		return 0, err
	}
	return min(byLSN, byTime), nil
}

// lastWhere returns the last position p in the ledger for which pred holds of p's event and
// every one before it (pred holds of a prefix of the ledger), by binary search; the tail
// when it holds of none.
func (r *Reader) lastWhere(ctx context.Context, pred func(*event.Event) bool) (event.Position, error) {
	st := r.cfg.Ledger.State()
	lo, hi := st.Tail, st.Head // pred holds through lo; it fails after hi
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		evs, err := r.cfg.Ledger.Read(ctx, mid-1, 1)
		if errors.Is(err, ledger.ErrTruncated) {
			// Retention moved the tail meanwhile: nothing before the new tail can be read.
			st = r.cfg.Ledger.State()
			lo = max(lo, st.Tail)
			hi = max(hi, lo)
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("snapshot: read the ledger: %w", err)
		}
		if len(evs) == 0 || evs[0].Position != mid {
			return 0, fmt.Errorf("snapshot: the ledger has no event at position %d below its head %d", mid, hi)
		}
		if pred(&evs[0]) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}

// table is how to read the rows of a channel.
type table struct {
	cols    []event.Column
	delims  []byte // per column: its array delimiter when not event.ArrayDelim of its OID, else 0
	selects []string
	keys    []int // positions of the primary key columns in selects
	from    string
	where   []string // conditions of the channel, with $1... for args
	args    []any
}

// describe reads the columns and primary key of the channel's table in the snapshot, and
// the channel's conditions: the id column for a direct channel, the scope columns for a
// scoped one, compared as text as the router compares them.
func describe(ctx context.Context, tx pgx.Tx, conf channel.Table, c channel.Channel) (*table, error) {
	quoted := quoteTable(c.Table)
	rows, err := tx.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attgenerated <> '',
			coalesce((SELECT k.ord FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
				WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.attnum = a.attnum), 0)
		FROM pg_attribute a
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, quoted)
	if err != nil {
		return nil, fmt.Errorf("snapshot: read the columns of %s: %w", c.Table, err)
	}
	type col struct {
		name, typ string
		oid       uint32
		generated bool
		pk        int64
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (col, error) {
		var c col
		return c, r.Scan(&c.name, &c.typ, &c.oid, &c.generated, &c.pk)
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: read the columns of %s: %w", c.Table, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: channel %s: there is no table %s", ErrBadRequest, c.String(), c.Table)
	}
	t := &table{from: quoted}
	tl := typeLookup{known: pgtype.NewMap(), tx: tx}
	pk := map[int64]string{}
	for _, cl := range cols {
		if cl.pk > 0 {
			pk[cl.pk] = cl.name
		}
		if cl.generated {
			continue // replication does not send generated columns
		}
		oid, delim, err := tl.resolve(ctx, cl.oid, 0)
		if err != nil {
			return nil, fmt.Errorf("snapshot: look up the type of %s.%s: %w", c.Table, cl.name, err)
		}
		if delim == event.ArrayDelim(oid) {
			delim = 0
		}
		t.cols = append(t.cols, event.Column{Name: cl.name, Type: cl.typ, OID: oid})
		t.delims = append(t.delims, delim)
		t.selects = append(t.selects, pgx.Identifier{cl.name}.Sanitize())
	}
	if len(pk) == 0 {
		return nil, fmt.Errorf("snapshot: table %s has no primary key, which a snapshot pages by; add one", c.Table)
	}
	for i := int64(1); i <= int64(len(pk)); i++ {
		name := pk[i]
		q := pgx.Identifier{name}.Sanitize()
		j := -1
		for k, s := range t.selects {
			if s == q {
				j = k
			}
		}
		if j < 0 {
			j = len(t.selects)
			t.selects = append(t.selects, q)
		}
		t.keys = append(t.keys, j)
	}
	cond := func(column, value string) {
		t.args = append(t.args, value)
		t.where = append(t.where, pgx.Identifier{column}.Sanitize()+"::text = $"+strconv.Itoa(len(t.args)))
	}
	switch c.Kind() {
	case channel.Direct:
		cond(conf.IDColumn, c.ID)
	case channel.Scoped:
		for _, s := range conf.Scopes {
			if len(s) != len(c.Scopes) {
				continue
			}
			match := true
			for i := range s {
				match = match && s[i].Table == c.Scopes[i].Table
			}
			if match {
				for i, f := range s {
					cond(f.Column, c.Scopes[i].ID)
				}
				break
			}
		}
	}
	return t, nil
}

// read reads the rows after the key last (nil: from the first), at most limit, as text:
// values exactly as replication sends them.
func (t *table) read(ctx context.Context, tx pgx.Tx, last []string, limit int) ([]event.Record, []string, bool, error) {
	args := append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, t.args...)
	where := append([]string(nil), t.where...)
	var keys []string
	for _, k := range t.keys {
		keys = append(keys, t.selects[k])
	}
	if last != nil {
		var ps []string
		for _, v := range last {
			args = append(args, v)
			ps = append(ps, "$"+strconv.Itoa(len(args)-1))
		}
		// Each key compared as its column's type (the parameter takes the column's type).
		where = append(where, "("+strings.Join(keys, ", ")+") > ("+strings.Join(ps, ", ")+")")
	}
	q := `SELECT ` + strings.Join(t.selects, ", ") + ` FROM ` + t.from
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY ` + strings.Join(keys, ", ") + ` LIMIT ` + strconv.Itoa(limit+1)
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return nil, nil, false, fmt.Errorf("snapshot: read the rows of %s: %w", t.from, err)
	}
	defer rows.Close()
	recs := []event.Record{} // [] in JSON, never null
	var keyText []string
	more := false
	for rows.Next() {
		if len(recs) == limit {
			more = true
			break
		}
		raw := rows.RawValues()
		rec := make(event.Record, len(t.cols))
		for i := range t.cols {
			c := &t.cols[i]
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
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, false, fmt.Errorf("snapshot: read the rows of %s: %w", t.from, err)
	}
	return recs, append([]string(nil), keyText...), more, nil
}

// quoteTable quotes a table name, schema-qualified or not.
func quoteTable(name string) string {
	if s, t, ok := strings.Cut(name, "."); ok {
		return pgx.Identifier{s, t}.Sanitize()
	}
	return pgx.Identifier{name}.Sanitize()
}

// typeLookup finds the OID a column's values decode as, as the replication source does:
// the type itself when pgx knows it, a domain's base type, an array of a known element type,
// and text otherwise; and an array's element delimiter.
type typeLookup struct {
	known *pgtype.Map
	tx    pgx.Tx
}

func (tl *typeLookup) resolve(ctx context.Context, oid uint32, depth int) (uint32, byte, error) {
	if _, ok := tl.known.TypeForOID(oid); ok {
		return oid, event.ArrayDelim(oid), nil
	}
	if depth > 10 {
		return pgtype.TextOID, ',', nil
	}
	var typtype, delim string
	var array bool
	var base, elem, elemArray uint32
	err := tl.tx.QueryRow(ctx, `SELECT t.typtype::text, t.typoutput = 'pg_catalog.array_out'::regproc, t.typbasetype, t.typelem,
			coalesce(e.typdelim, ',')::text, coalesce(e.typarray, 0)
		FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem WHERE t.oid = $1`, oid).
		Scan(&typtype, &array, &base, &elem, &delim, &elemArray)
	if errors.Is(err, pgx.ErrNoRows) {
		return pgtype.TextOID, ',', nil
	}
	if err != nil {
		return 0, 0, err
	}
	switch {
	case typtype == "d":
		return tl.resolve(ctx, base, depth+1)
	case array && elem != 0:
		e, _, err := tl.resolve(ctx, elem, depth+1)
		if err != nil {
			return 0, 0, err
		}
		d := byte(',')
		if len(delim) == 1 {
			d = delim[0]
		}
		if e != elem {
			// The element decodes as another type (a domain's base, or text): the array
			// of that type, if pgx knows it.
			var arr uint32
			if err := tl.tx.QueryRow(ctx, `SELECT typarray FROM pg_catalog.pg_type WHERE oid = $1`, e).Scan(&arr); err == nil {
				elemArray = arr
			}
		}
		if _, ok := tl.known.TypeForOID(elemArray); ok {
			return elemArray, d, nil
		}
		return pgtype.TextArrayOID, d, nil
	}
	return pgtype.TextOID, ',', nil
}
