package channel

import (
	"net/url"
	"strings"

	"github.com/walflow/walflow/event"
)

// Router maps events to the channels they belong to, following the table configuration. It
// is immutable and safe for concurrent use. A nil Router has no configured tables.
type Router struct {
	tables map[string]Table
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
