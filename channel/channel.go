package channel

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxScopes is the largest number of parents a scoped channel or a [Scope] may have.
const MaxScopes = 8

// maxNameLen is PostgreSQL's identifier limit (NAMEDATALEN-1 bytes).
const maxNameLen = 63

// ErrInvalid is matched (with errors.Is) by every error of [Parse], [ParseScope],
// [Table.Validate], [NewRouter] and [Router.Check].
var ErrInvalid = errors.New("channel: invalid")

// Error is every error of [Parse], [ParseScope], [Table.Validate], [NewRouter] and
// [Router.Check]; it matches [ErrInvalid]. A caller that reports it against its own
// configuration (a YAML key naming the table) matches it with errors.As and uses Problem.
type Error struct {
	// Table is the configured table at fault; "" for a channel or a scope alone (or a
	// table without a name).
	Table string
	// Problem says what is wrong and the fix, without naming the table.
	Problem string
	// inTable is set for an error about a configured table, even one without a name.
	inTable bool
}

func (e *Error) Error() string {
	if e.Table != "" || e.inTable {
		return "channel: table " + quote(e.Table) + ": " + e.Problem
	}
	return "channel: " + e.Problem
}

// Is reports whether target is [ErrInvalid].
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func errorf(format string, args ...any) error {
	return &Error{Problem: fmt.Sprintf(format, args...)}
}

// tableErrorf is an error about the configured table called table.
func tableErrorf(table, format string, args ...any) error {
	return &Error{Table: table, Problem: fmt.Sprintf(format, args...), inTable: true}
}

// channelHint ends every error about the form of a channel.
const channelHint = "use table, table/id or parent/id/table, e.g. comments, comments/7 or posts/42/comments"

// Kind is the kind of a [Channel], which its number of segments decides.
type Kind uint8

const (
	// Unscoped is a whole table: comments.
	Unscoped Kind = iota + 1
	// Direct is one row of a table, by id: comments/7.
	Direct
	// Scoped is the rows of a table that belong to given parents: posts/42/comments.
	Scoped
)

// String returns unscoped, direct or scoped.
func (k Kind) String() string {
	switch k {
	case Unscoped:
		return "unscoped"
	case Direct:
		return "direct"
	case Scoped:
		return "scoped"
	default:
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
}

// ScopeValue is one parent of a scoped channel: the parent table and its id, posts/42.
type ScopeValue struct {
	// Table is the parent table.
	Table string
	// ID is the parent's id, as text (not escaped).
	ID string
}

// Channel is a parsed channel. Exactly one of ID and Scopes may be set: neither for an
// unscoped channel, ID for a direct one, Scopes for a scoped one. The zero Channel is not
// valid (it has no table).
type Channel struct {
	// Table is the table whose events the channel carries.
	Table string
	// ID is the row id of a direct channel, as text (not escaped); empty otherwise.
	ID string
	// Scopes are the parents of a scoped channel, outermost first; empty otherwise.
	Scopes []ScopeValue
}

// Kind returns Scoped when the channel has scopes, Direct when it has an id, and Unscoped
// otherwise.
func (c Channel) Kind() Kind {
	switch {
	case len(c.Scopes) > 0:
		return Scoped
	case c.ID != "":
		return Direct
	default:
		return Unscoped
	}
}

// String returns the canonical form of the channel, every segment escaped with
// [url.PathEscape]. For a channel [Parse] returned, Parse(c.String()) gives c again. A
// channel with both an ID and Scopes is written with all of them, which Parse rejects.
func (c Channel) String() string {
	var b strings.Builder
	for _, s := range c.Scopes {
		b.WriteString(url.PathEscape(s.Table))
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s.ID))
		b.WriteByte('/')
	}
	b.WriteString(url.PathEscape(c.Table))
	if c.ID != "" {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(c.ID))
	}
	return b.String()
}

// Equal reports whether two channels have the same table, id and scopes. A nil and an
// empty Scopes are equal.
func (c Channel) Equal(d Channel) bool {
	if c.Table != d.Table || c.ID != d.ID || len(c.Scopes) != len(d.Scopes) {
		return false
	}
	for i := range c.Scopes {
		if c.Scopes[i] != d.Scopes[i] {
			return false
		}
	}
	return true
}

// MarshalText writes the canonical form, or returns an error for a channel [Parse] would
// not accept.
func (c Channel) MarshalText() ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	return []byte(c.String()), nil
}

// UnmarshalText parses a channel with [Parse].
func (c *Channel) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// MustParse is like [Parse] but panics on an invalid channel. It is for channels written in
// code and tests.
func MustParse(s string) Channel {
	c, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return c
}

// Parse parses a channel: table (unscoped), table/id (direct) or parent/id/.../table
// (scoped, at most [MaxScopes] parents). Every segment is percent-decoded. See the package
// documentation for what segments may hold.
func Parse(s string) (Channel, error) {
	if s == "" {
		return Channel{}, errorf("the channel is empty; %s", channelHint)
	}
	// Count before splitting, so a huge input of slashes costs no allocation.
	n := strings.Count(s, "/") + 1
	if n > 2*MaxScopes+1 {
		return Channel{}, errorf("invalid channel %s: it has %d segments, but a scoped channel may have at most %d parents (%d segments); %s",
			quote(s), n, MaxScopes, 2*MaxScopes+1, channelHint)
	}
	segs := strings.Split(s, "/")
	for i, seg := range segs {
		if seg != "" {
			continue
		}
		what := "has an empty segment (two slashes in a row)"
		switch {
		case n == 1:
			what = "is empty"
		case i == 0:
			what = "starts with a slash"
		case i == n-1:
			what = "ends with a slash"
		}
		return Channel{}, errorf("invalid channel %s: it %s; %s", quote(s), what, channelHint)
	}
	if n >= 4 && n%2 == 0 {
		return Channel{}, errorf("invalid channel %s: it has %d segments, but a channel has 1 (table), 2 (table/id) or an odd number (parent/id/.../table); to follow one row use %s/%s; %s",
			quote(s), n, segs[n-2], segs[n-1], channelHint)
	}
	for i, seg := range segs {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return Channel{}, errorf("invalid channel %s: segment %d %s has an invalid percent escape (write %% as %%25); %s",
				quote(s), i+1, quote(seg), channelHint)
		}
		var problem string
		if i%2 == 0 {
			problem = nameProblem(dec)
		} else {
			problem = idProblem(dec)
		}
		if problem != "" {
			role := "table"
			if i%2 == 1 {
				role = "id"
			}
			shown := quote(seg)
			if dec != seg {
				shown += " (decoded " + quote(dec) + ")"
			}
			return Channel{}, errorf("invalid channel %s: %s segment %d %s %s; %s",
				quote(s), role, i+1, shown, problem, channelHint)
		}
		segs[i] = dec
	}
	switch n {
	case 1:
		return Channel{Table: segs[0]}, nil
	case 2:
		return Channel{Table: segs[0], ID: segs[1]}, nil
	}
	c := Channel{Table: segs[n-1], Scopes: make([]ScopeValue, 0, n/2)}
	for i := 0; i+1 < n; i += 2 {
		c.Scopes = append(c.Scopes, ScopeValue{Table: segs[i], ID: segs[i+1]})
	}
	return c, nil
}

// validate checks a channel built in code the way Parse checks a string.
func (c Channel) validate() error {
	s := c.String()
	if c.ID != "" && len(c.Scopes) > 0 {
		return errorf("invalid channel %s: it has both an id and scopes, but a channel is either table/id or parent/id/table; %s",
			quote(s), channelHint)
	}
	if len(c.Scopes) > MaxScopes {
		return errorf("invalid channel %s: it has %d parents, but at most %d are allowed; %s",
			quote(s), len(c.Scopes), MaxScopes, channelHint)
	}
	if p := nameProblem(c.Table); p != "" {
		return errorf("invalid channel %s: table %s %s; %s", quote(s), quote(c.Table), p, channelHint)
	}
	if c.ID != "" {
		if p := idProblem(c.ID); p != "" {
			return errorf("invalid channel %s: id %s %s; %s", quote(s), quote(c.ID), p, channelHint)
		}
	}
	for i, sv := range c.Scopes {
		if p := nameProblem(sv.Table); p != "" {
			return errorf("invalid channel %s: parent %d table %s %s; %s", quote(s), i+1, quote(sv.Table), p, channelHint)
		}
		if p := idProblem(sv.ID); p != "" {
			return errorf("invalid channel %s: parent %d id %s %s; %s", quote(s), i+1, quote(sv.ID), p, channelHint)
		}
	}
	return nil
}

// nameProblem says what is wrong with a table name, or "" when it is valid: an identifier,
// optionally schema-qualified.
func nameProblem(s string) string {
	if s == "" {
		return "is empty"
	}
	if strings.Contains(s, "*") {
		return "is a wildcard, which channels do not support; subscribe to the table's unscoped channel instead"
	}
	schema, table, qualified := strings.Cut(s, ".")
	if !qualified {
		return identProblem(s, "a table name")
	}
	if p := identProblem(schema, "a schema name"); p != "" {
		return p + " (a qualified table is schema.table)"
	}
	if p := identProblem(table, "a table name"); p != "" {
		return p + " (a qualified table is schema.table)"
	}
	return ""
}

// identProblem says what is wrong with one identifier, or "" when it matches
// [A-Za-z_][A-Za-z0-9_$]* and fits PostgreSQL's limit.
func identProblem(s, what string) string {
	if s == "" {
		return "is not " + what + " (empty name)"
	}
	if len(s) > maxNameLen {
		return fmt.Sprintf("is not %s (longer than PostgreSQL's %d-byte limit)", what, maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '$'):
		default:
			return "is not " + what + " (use letters, digits, _ and $, not starting with a digit)"
		}
	}
	return ""
}

// idProblem says what is wrong with an id (after percent-decoding), or "" when it is valid.
func idProblem(s string) string {
	switch {
	case s == "":
		return "is empty"
	case s == "." || s == "..":
		return "is a relative path element, which is not allowed as an id"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Sprintf("contains the control character %U", r)
		}
	}
	if strings.TrimSpace(s) == "" {
		return "is only whitespace"
	}
	return ""
}

// quote quotes s for an error message, shortened when it is long.
func quote(s string) string {
	const max = 200
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
}
