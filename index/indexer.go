package index

import (
	"fmt"
	"strings"

	"github.com/walflow/walflow/event"
)

// Indexer extracts values from events: every value it gives an event keys an ordered list
// of positions, which [Runner.Read] reads back as events.
type Indexer struct {
	// Name identifies the indexer in the store, in reads and in notifications: a lowercase
	// identifier (a letter, then letters, digits or underscores; at most 63 bytes).
	Name string
	// Version identifies the definition of Func. When it differs from the version the stored
	// entries were made with, the indexer deletes them and rebuilds from the ledger. Change
	// it whenever Func would give a past event different values. Default "".
	Version string
	// Func appends the values of an event to dst and returns the extended slice; it may
	// append none, one or many. Values must contain no NUL byte; duplicates are kept once.
	// Func must be deterministic (a rebuild must give the same entries), must not block,
	// and must treat the event as read-only. It must be safe for concurrent use: it is
	// called from the indexer's goroutine and, when the runner is fed ([Runner.Feed]), from
	// the ledger writer's.
	Func func(e *event.Event, dst []string) []string
}

// maxNameLen bounds indexer names.
const maxNameLen = 63

// validate names the indexer's problem and its fix.
func (ix *Indexer) validate() error {
	if err := ValidateName(ix.Name); err != nil {
		return err
	}
	if ix.Func == nil {
		return fmt.Errorf("index: indexer %q has no Func; set Func to the function that extracts its values", ix.Name)
	}
	return nil
}

// ValidateName reports whether name is a valid indexer name: a lowercase identifier of at
// most 63 bytes. The error names the fix.
func ValidateName(name string) error {
	ok := name != "" && len(name) <= maxNameLen && name[0] >= 'a' && name[0] <= 'z'
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_'
	}
	if !ok {
		return fmt.Errorf("index: indexer name %q is invalid; use a lowercase identifier of at most %d bytes: a letter, then letters, digits or underscores (user_id)", name, maxNameLen)
	}
	return nil
}

// validValue reports whether v can be stored: values contain no NUL byte.
func validValue(v string) bool { return !strings.Contains(v, "\x00") }

// Field returns an indexer named name whose value is the text of the given column, in any
// table that has it, like Fact's EventDataIndexer keyed by a field (Field("user_id",
// "user_id") gathers every event about each user).
//
// An insert gives the column's value in the new record; a delete its value in the old
// record, which holds only the replica identity's columns unless the table has REPLICA
// IDENTITY FULL. An update gives its value in the new record and, when it changed and the
// old value is known (REPLICA IDENTITY FULL, or a key column), the old value too: the
// update that moves a row from user 7 to user 8 belongs to the history of both. NULL, an
// unchanged TOAST value that walflow could not fill, and a missing column give nothing, as
// does a truncate. Its Version is "field:" + column, so changing the column rebuilds it.
func Field(name, column string) Indexer {
	return Indexer{
		Name:    name,
		Version: "field:" + column,
		Func: func(e *event.Event, dst []string) []string {
			start := len(dst)
			add := func(r event.Record) {
				v, ok := r.Get(column)
				if !ok {
					return
				}
				s, ok := v.Text()
				if !ok {
					return
				}
				for _, d := range dst[start:] {
					if d == s {
						return
					}
				}
				dst = append(dst, s)
			}
			add(e.NewRecord)
			add(e.OldRecord)
			if c, ok := e.Changes.Get(column); ok {
				add(event.Record{{Name: column, Value: c.OldValue}})
			}
			return dst
		},
	}
}

// Type returns an indexer named name whose value is the event's type: insert, update,
// delete or truncate.
func Type(name string) Indexer {
	return Indexer{
		Name:    name,
		Version: "type",
		Func: func(e *event.Event, dst []string) []string {
			return append(dst, e.Type.String())
		},
	}
}

// Table returns an indexer named name whose value is the event's entity name (its table
// name), as the ledger's unscoped channels are.
func Table(name string) Indexer {
	return Indexer{
		Name:    name,
		Version: "table",
		Func: func(e *event.Event, dst []string) []string {
			return append(dst, e.Name)
		},
	}
}
