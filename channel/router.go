package channel

import (
	"context"
	"hash/maphash"
	"log/slog"
	"net/url"
	"strings"
	"sync"

	"github.com/walflow/walflow/event"
)

// Router maps events to the channels they belong to, following the table configuration. Its
// configuration is immutable and it is safe for concurrent use. A nil Router has no
// configured tables.
type Router struct {
	tables map[string]Table
	// watch, set by WithLogger, reports scopes that the events' columns no longer allow.
	watch *columnWatch
}

// NewRouter returns a router for the given tables, after filling in their defaults
// ([Table.WithDefaults]) and validating them ([Table.Validate]). Two tables with the same
// name are an error. The router keeps its own copy of the configuration.
func NewRouter(tables []Table) (*Router, error) {
	r := &Router{tables: make(map[string]Table, len(tables))}
	for i, t := range tables {
		if err := t.Validate(); err != nil {
			return nil, err
		}
		if _, dup := r.tables[t.Name]; dup {
			return nil, tableErrorf(t.Name, "is configured twice (entry %d); merge its scopes into one entry", i+1)
		}
		r.tables[t.Name] = t.WithDefaults().clone()
	}
	return r, nil
}

// WithLogger returns a router with r's tables that also warns on log when a configured
// table's events stop carrying one of its scope columns (the column was renamed or
// dropped): their scoped channels of that scope then get none of them. It warns once per
// change of the table's columns, as events list them in event.Source.Columns, naming the
// table, the scope and the column; events that do not list their columns are not checked.
func (r *Router) WithLogger(log *slog.Logger) *Router {
	out := &Router{watch: &columnWatch{log: log, seed: maphash.MakeSeed(), seen: map[string]*tableColumns{}}}
	if r != nil {
		out.tables = r.tables
	}
	return out
}

// columnWatch remembers which column lists of each configured table were checked.
type columnWatch struct {
	log  *slog.Logger
	seed maphash.Seed
	mu   sync.Mutex
	seen map[string]*tableColumns
}

// tableColumns is what a columnWatch knows of one table.
type tableColumns struct {
	// last is the column list checked last. pgwal gives every event of one relation
	// version the same slice, so comparing its address skips the check for them.
	last *event.Column
	// hashes are the column lists already checked (a lagging reader may route events
	// written before a change while another routes newer ones).
	hashes map[uint64]bool
}

// check warns about the scopes of t that e's column list cannot fill, the first time it
// sees that list.
func (w *columnWatch) check(e *event.Event, t Table) {
	cols := e.Source.Columns
	if len(t.Scopes) == 0 || len(cols) == 0 {
		return
	}
	w.mu.Lock()
	tc := w.seen[t.Name]
	if tc == nil {
		tc = &tableColumns{hashes: map[uint64]bool{}}
		w.seen[t.Name] = tc
	}
	if tc.last == &cols[0] {
		w.mu.Unlock()
		return
	}
	tc.last = &cols[0]
	var h maphash.Hash
	h.SetSeed(w.seed)
	for _, c := range cols {
		h.WriteString(c.Name)
		h.WriteByte(0)
	}
	sum := h.Sum64()
	known := tc.hashes[sum]
	tc.hashes[sum] = true
	w.mu.Unlock()
	if known {
		return
	}
	for _, s := range t.Scopes {
		for _, f := range s {
			if _, ok := e.Source.Column(f.Column); !ok {
				attrs := []any{slog.String("table", t.Name), slog.String("scope", s.String()), slog.String("column", f.Column)}
				if e.Position != 0 {
					attrs = append(attrs, slog.Uint64("position", uint64(e.Position)))
				}
				w.log.WarnContext(context.Background(), "a table's events lack a column its scope names, so that scope's channels receive none of them; if the column was renamed, update the scope (tables.TABLE.scopes in walflow.yaml, or channel.Table.Scopes)", attrs...)
			}
		}
	}
}

// Table returns the configuration of the named table, with defaults filled in; for a table
// that is not configured, the defaults and no scopes. The returned Scopes are shared with
// the router and must not be modified.
func (r *Router) Table(name string) Table {
	if r != nil {
		if t, ok := r.tables[name]; ok {
			return t
		}
	}
	return Table{Name: name}.WithDefaults()
}

// Channels appends to dst the canonical channels the event belongs to and returns the
// extended slice; see the package documentation for the rules. The appended channels have
// no duplicates and a fixed order: unscoped, direct (new record, then old), scoped in the
// order of the table's scopes (new record, then old). An event without a name gives none.
//
// Its signature is that of ledger.Indexer.
func (r *Router) Channels(e *event.Event, dst []string) []string {
	if e == nil || e.Name == "" {
		return dst
	}
	start := len(dst)
	table := url.PathEscape(e.Name)
	dst = append(dst, table)
	if e.Type == event.Truncate {
		return dst
	}
	t := r.Table(e.Name)
	if r != nil && r.watch != nil {
		r.watch.check(e, t)
	}
	records := [2]event.Record{e.NewRecord, e.OldRecord}
	for _, rec := range records {
		if id, ok := idText(rec, t.IDColumn); ok {
			dst = appendUnique(dst, start, table+"/"+url.PathEscape(id))
		}
	}
	for _, s := range t.Scopes {
		for _, rec := range records {
			if c, ok := scoped(rec, s, table); ok {
				dst = appendUnique(dst, start, c)
			}
		}
	}
	return dst
}

// idText returns the text of the record's column when it can be an id segment.
func idText(rec event.Record, column string) (string, bool) {
	if rec == nil {
		return "", false
	}
	v, ok := rec.Get(column)
	if !ok {
		return "", false
	}
	s, ok := v.Text()
	if !ok || idProblem(s) != "" {
		return "", false
	}
	return s, true
}

// scoped returns the scoped channel of the record for scope s, whose table segment
// (escaped) is table; ok is false when the record lacks a usable value of a scope column.
func scoped(rec event.Record, s Scope, table string) (string, bool) {
	if rec == nil {
		return "", false
	}
	var b strings.Builder
	for _, f := range s {
		id, ok := idText(rec, f.Column)
		if !ok {
			return "", false
		}
		b.WriteString(url.PathEscape(f.Table))
		b.WriteByte('/')
		b.WriteString(url.PathEscape(id))
		b.WriteByte('/')
	}
	b.WriteString(table)
	return b.String(), true
}

// appendUnique appends c to dst unless dst[start:] holds it already.
func appendUnique(dst []string, start int, c string) []string {
	for _, d := range dst[start:] {
		if d == c {
			return dst
		}
	}
	return append(dst, c)
}

// Check reports whether the channel is well formed and can receive events: a scoped
// channel must follow one of its table's configured scopes. The error names the channel and
// lists the scopes the table has. Unscoped and direct channels of any table are accepted,
// since a table that is not configured has the default id column.
func (r *Router) Check(c Channel) error {
	if err := c.validate(); err != nil {
		return err
	}
	if c.Kind() != Scoped {
		return nil
	}
	t := r.Table(c.Table)
	for _, s := range t.Scopes {
		if s.matches(c.Scopes) {
			return nil
		}
	}
	var want strings.Builder
	for i, sv := range c.Scopes {
		if i > 0 {
			want.WriteByte('/')
		}
		want.WriteString(sv.Table)
		want.WriteString("/{…}")
	}
	if len(t.Scopes) == 0 {
		return errorf("channel %s: table %s has no scopes, so it has no scoped channels; subscribe to %s or %s/{%s}, or configure a scope %s for the table",
			quote(c.String()), quote(c.Table), url.PathEscape(c.Table), url.PathEscape(c.Table), t.IDColumn, want.String())
	}
	var have, examples []string
	for _, s := range t.Scopes {
		have = append(have, s.String())
		examples = append(examples, exampleChannel(c.Table, s))
	}
	return errorf("channel %s: table %s has no scope %s; its scopes are %s, so use a channel like %s, or configure the scope for the table",
		quote(c.String()), quote(c.Table), want.String(), strings.Join(have, ", "), strings.Join(examples, " or "))
}
