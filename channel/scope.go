package channel

import (
	"errors"
	"slices"
	"strings"

	"github.com/walflow/walflow/event"
)

// scopeHint ends every error about the form of a scope template.
const scopeHint = "write a scope as parent/{column} pairs, e.g. posts/{post_id} or organizations/{org_id}/posts/{post_id}"

// ScopeField is one field of a [Scope]: the column of the scoped table that holds the id of
// a row of the parent table.
type ScopeField struct {
	// Column is the column of the scoped table, post_id.
	Column string
	// Table is the parent table, posts.
	Table string
}

// Scope is an ordered list of scope fields, outermost first, written as a template:
// "posts/{post_id}" or "organizations/{org_id}/posts/{post_id}". A table with that scope
// has its events delivered to the scoped channel parent/value/.../table built from the
// row's values of the scope's columns.
type Scope []ScopeField

// ParseScope parses a scope template: parent/{column} pairs, at most [MaxScopes] of them,
// where parent is a table name (optionally schema-qualified) and column a column name. A
// column may appear only once.
func ParseScope(template string) (Scope, error) {
	if template == "" {
		return nil, errorf("the scope is empty; %s", scopeHint)
	}
	n := strings.Count(template, "/") + 1
	if n > 2*MaxScopes {
		return nil, errorf("invalid scope %s: it has %d segments, but a scope may have at most %d fields (%d segments); %s",
			quote(template), n, MaxScopes, 2*MaxScopes, scopeHint)
	}
	segs := strings.Split(template, "/")
	if n%2 != 0 {
		return nil, errorf("invalid scope %s: it has %d segments, but a scope is made of parent/{column} pairs; %s",
			quote(template), n, scopeHint)
	}
	s := make(Scope, 0, n/2)
	for i := 0; i < n; i += 2 {
		f := ScopeField{Table: segs[i]}
		col := segs[i+1]
		if len(col) < 2 || col[0] != '{' || col[len(col)-1] != '}' {
			return nil, errorf("invalid scope %s: segment %d %s must be a column in braces, like {%s}; %s",
				quote(template), i+2, quote(col), strings.Trim(col, "{}"), scopeHint)
		}
		f.Column = col[1 : len(col)-1]
		s = append(s, f)
	}
	if err := s.validate(template); err != nil {
		return nil, err
	}
	return s, nil
}

// validate checks the fields; shown is how the scope is named in errors.
func (s Scope) validate(shown string) error {
	if len(s) == 0 {
		return errorf("the scope is empty; %s", scopeHint)
	}
	if len(s) > MaxScopes {
		return errorf("invalid scope %s: it has %d fields, but at most %d are allowed; %s",
			quote(shown), len(s), MaxScopes, scopeHint)
	}
	for i, f := range s {
		if p := nameProblem(f.Table); p != "" {
			return errorf("invalid scope %s: parent table %d %s %s; %s",
				quote(shown), i+1, quote(f.Table), p, scopeHint)
		}
		if p := identProblem(f.Column, "a column name"); p != "" {
			return errorf("invalid scope %s: column %d %s %s; %s",
				quote(shown), i+1, quote(f.Column), p, scopeHint)
		}
		for j := range i {
			if s[j].Column == f.Column {
				return errorf("invalid scope %s: column %s appears twice; give each parent its own column, e.g. organizations/{org_id}/posts/{post_id}",
					quote(shown), quote(f.Column))
			}
		}
	}
	return nil
}

// String returns the scope's template, posts/{post_id}.
func (s Scope) String() string {
	var b strings.Builder
	for i, f := range s {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(f.Table)
		b.WriteString("/{")
		b.WriteString(f.Column)
		b.WriteByte('}')
	}
	return b.String()
}

// MarshalText writes the scope's template, or returns an error for a scope [ParseScope]
// would not accept.
func (s Scope) MarshalText() ([]byte, error) {
	if err := s.validate(s.String()); err != nil {
		return nil, err
	}
	return []byte(s.String()), nil
}

// UnmarshalText parses a scope template with [ParseScope], so a scope can be written as a
// string in configuration files.
func (s *Scope) UnmarshalText(b []byte) error {
	v, err := ParseScope(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// sameParents reports whether two scopes have the same parent tables in the same order, so
// that they would be addressed by the same channels.
func sameParents(a, b Scope) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Table != b[i].Table {
			return false
		}
	}
	return true
}

// matches reports whether the scope has the parents of a scoped channel.
func (s Scope) matches(parents []ScopeValue) bool {
	if len(s) != len(parents) {
		return false
	}
	for i := range s {
		if s[i].Table != parents[i].Table {
			return false
		}
	}
	return true
}

// Defaults of [Table].
const (
	// IDColumnDefault is the id column of a table that names none.
	IDColumnDefault = "id"
	// TimestampColumnDefault is the timestamp column of a table that names none.
	TimestampColumnDefault = "updated_at"
)

// Table is the channel configuration of one table.
type Table struct {
	// Name is the table name, as events name it (event.Event.Name).
	Name string
	// IDColumn is the column whose value names a row in direct channels; empty means
	// [IDColumnDefault].
	IDColumn string
	// Scopes are the table's scopes, in the order its scoped channels are listed. No two may
	// have the same parent tables in the same order.
	Scopes []Scope
	// TimestampColumn is the column holding the row's last change time; empty means
	// [TimestampColumnDefault]. The channel package does not use it.
	TimestampColumn string
}

// HasTable reports whether tables configure the table name, schema-qualified or not: names
// are compared without their schemas, as events carry them ([event.TableName]).
func HasTable(tables []Table, name string) bool {
	n := event.TableName(name)
	return slices.ContainsFunc(tables, func(t Table) bool { return event.TableName(t.Name) == n })
}

// WithDefaults returns t with an empty IDColumn or TimestampColumn set to its default.
func (t Table) WithDefaults() Table {
	if t.IDColumn == "" {
		t.IDColumn = IDColumnDefault
	}
	if t.TimestampColumn == "" {
		t.TimestampColumn = TimestampColumnDefault
	}
	return t
}

// Validate checks the table's name, columns and scopes. Empty columns are valid: they take
// their defaults.
func (t Table) Validate() error {
	if p := nameProblem(t.Name); p != "" {
		return tableErrorf(t.Name, "the name %s; use a name like comments or public.comments", p)
	}
	t = t.WithDefaults()
	if p := identProblem(t.IDColumn, "a column name"); p != "" {
		return tableErrorf(t.Name, "id column %s %s; name the column holding the row id, like %s",
			quote(t.IDColumn), p, IDColumnDefault)
	}
	if p := identProblem(t.TimestampColumn, "a column name"); p != "" {
		return tableErrorf(t.Name, "timestamp column %s %s; name the column holding the last change time, like %s",
			quote(t.TimestampColumn), p, TimestampColumnDefault)
	}
	for i, s := range t.Scopes {
		if err := s.validate(s.String()); err != nil {
			problem := err.Error()
			if ce := (*Error)(nil); errors.As(err, &ce) {
				problem = ce.Problem
			}
			return tableErrorf(t.Name, "scope %d: %s", i+1, problem)
		}
		for j := range i {
			if sameParents(t.Scopes[j], s) {
				return tableErrorf(t.Name, "scopes %d %s and %d %s have the same parents, so a channel like %s could mean either; remove one or rename a parent",
					j+1, quote(t.Scopes[j].String()), i+1, quote(s.String()), quote(exampleChannel(t.Name, s)))
			}
		}
	}
	return nil
}

// exampleChannel returns a channel of the scope, with 1 for every id.
func exampleChannel(table string, s Scope) string {
	c := Channel{Table: table}
	for _, f := range s {
		c.Scopes = append(c.Scopes, ScopeValue{Table: f.Table, ID: "1"})
	}
	return c.String()
}

// clone returns a deep copy of the table's scopes, so the caller's slices may change.
func (t Table) clone() Table {
	if t.Scopes == nil {
		return t
	}
	scopes := make([]Scope, len(t.Scopes))
	for i, s := range t.Scopes {
		scopes[i] = append(Scope(nil), s...)
	}
	t.Scopes = scopes
	return t
}

// MustParseScope is ParseScope for templates fixed in the program's source: it panics on an
// invalid one, which is a programming error found at start-up.
func MustParseScope(template string) Scope {
	s, err := ParseScope(template)
	if err != nil {
		panic(err)
	}
	return s
}
