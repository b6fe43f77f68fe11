package event

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Type is what happened to a row.
type Type uint8

const (
	// Insert is a new row.
	Insert Type = iota + 1
	// Update is a changed row.
	Update
	// Delete is a removed row.
	Delete
	// Truncate is a TRUNCATE of the whole table; the event has no records.
	Truncate
)

// String returns insert, update, delete or truncate.
func (t Type) String() string {
	switch t {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	default:
		return "type(" + strconv.Itoa(int(t)) + ")"
	}
}

// ParseType parses insert, update, delete or truncate.
func ParseType(s string) (Type, error) {
	switch s {
	case "insert":
		return Insert, nil
	case "update":
		return Update, nil
	case "delete":
		return Delete, nil
	case "truncate":
		return Truncate, nil
	}
	return 0, fmt.Errorf("event: unknown event type %q: want insert, update, delete or truncate", s)
}

// MarshalText writes the type's name.
func (t Type) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText parses the type's name.
func (t *Type) UnmarshalText(b []byte) error {
	v, err := ParseType(string(b))
	*t = v
	return err
}

// Column describes one column of the table an event came from.
type Column struct {
	// Name is the column name.
	Name string
	// Type is PostgreSQL's name for the column type, as format_type prints it
	// ("integer", "character varying(255)", "timestamp with time zone").
	Type string
	// OID is the type the column's values decode as: the column's type, a domain's base type,
	// or text for enums and types pgx does not know.
	OID uint32
	// Key reports whether the column is part of the table's replica identity.
	Key bool
}

// Source says where an event comes from.
type Source struct {
	DB      string
	Schema  string
	Table   string
	Columns []Column
}

// Column returns the named column.
func (s *Source) Column(name string) (Column, bool) {
	for _, c := range s.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// Field is one column's value in a [Record].
type Field struct {
	Name  string
	Value Value
}

// Record is a row: its fields in the table's column order. A nil Record is absent (the
// new_record of a delete), which JSON shows as null.
type Record []Field

// Get returns the named column's value.
func (r Record) Get(name string) (Value, bool) {
	for i := range r {
		if r[i].Name == name {
			return r[i].Value, true
		}
	}
	return Value{}, false
}

// Change is one column's value before and after an update.
type Change struct {
	Column   string
	OldValue Value
	NewValue Value
}

// Changes lists the columns an update changed, in column order.
type Changes []Change

// Get returns the change of the named column.
func (c Changes) Get(column string) (Change, bool) {
	for i := range c {
		if c[i].Column == column {
			return c[i], true
		}
	}
	return Change{}, false
}

// Event is one row change, in the ledger's commit order. Events handed to consumers must be
// treated as read-only: their slices may be shared with other events of the same table.
type Event struct {
	// Position is the event's ledger position: from 1, gap-free, in commit order.
	Position Position
	// LSN is the commit LSN of the event's transaction.
	LSN LSN
	// Ordinal is the event's place within its transaction, from 0. With LSN it identifies
	// the change across replays.
	Ordinal uint32
	// XID is the transaction id.
	XID uint32
	// Name is the entity name, which is the table name without its schema (see
	// [TableName]).
	Name string
	// Type is insert, update, delete or truncate.
	Type Type
	// Source names the database, schema, table and columns.
	Source Source
	// NewRecord is the row after an insert or update; nil for delete and truncate.
	NewRecord Record
	// OldRecord is the row before a delete, and before an update when the table has
	// REPLICA IDENTITY FULL. With the default replica identity a delete's old record holds
	// only the key columns.
	OldRecord Record
	// Changes lists, for an update whose old row is known, every column that changed.
	Changes Changes
	// Timestamp is the commit time of the transaction.
	Timestamp time.Time
}

// UnchangedTOAST lists the new record's columns that are unchanged TOAST values which
// PostgreSQL did not send and walflow could not fill from the old row.
func (e *Event) UnchangedTOAST() []string {
	var out []string
	for _, f := range e.NewRecord {
		if f.Value.IsUnchanged() {
			out = append(out, f.Name)
		}
	}
	return out
}

// ID returns the value of the given id column, from the new record or, for a delete, the old.
func (e *Event) ID(column string) (Value, bool) {
	if e.NewRecord != nil {
		return e.NewRecord.Get(column)
	}
	return e.OldRecord.Get(column)
}

// TxMeta describes a committed transaction as the source sees it.
type TxMeta struct {
	// CommitLSN is the LSN of the commit record; it orders transactions.
	CommitLSN LSN
	// EndLSN is the LSN just past the commit record: what the slot is acknowledged with.
	EndLSN LSN
	// XID is the transaction id.
	XID uint32
	// CommitTime is when the transaction committed.
	CommitTime time.Time
}

// TableName returns the name events carry (Event.Name) for table, a table name that may
// be schema-qualified: the name without its schema.
func TableName(table string) string {
	if _, n, ok := strings.Cut(table, "."); ok {
		return n
	}
	return table
}
