package operator

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
)

// TargetIDColumnDefault is the derived table's id column when SQL.TargetIDColumn is empty.
const TargetIDColumnDefault = "id"

// Operator is an [SQL] or a [Func] operator.
type Operator interface {
	spec() (spec, error)
}

// SQL is an operator that runs a query for each event of its entities, with $1 bound to the
// id of the derived row the event affects.
type SQL struct {
	// Name identifies the operator (its checkpoint, logs, CLI). Default: Target.
	Name string
	// Target is the derived table the query writes, e.g. post_with_comments_counts. Required.
	Target string
	// Events filters the event types; nil means insert, update and delete.
	Events []event.Type
	// Entities are the tables listened to, e.g. comments and posts. Required.
	Entities []string
	// Query runs with $1 set to the derived row's id, in the transaction that commits the
	// operator's checkpoint. Required.
	Query string
	// ID maps each entity to its column that holds the derived row's id, e.g.
	// {"comments": "post_id", "posts": "id"}. An entity not listed uses "id". For an update
	// the query runs for the old and the new value when they differ (a comment moved from
	// one post to another updates both posts).
	ID map[string]string
	// DeleteWith lists entities whose delete removes the derived row
	// (DELETE FROM Target WHERE TargetIDColumn = $1) instead of running Query.
	DeleteWith []string
	// TargetIDColumn is the derived table's id column. Default "id".
	TargetIDColumn string
}

// HandlerFunc applies one event. Writes made through tx are committed together with the
// operator's checkpoint, so they happen exactly once; a returned error rolls them back and
// the event is retried.
type HandlerFunc func(ctx context.Context, tx pgx.Tx, e *event.Event) error

// Func is an operator whose effect is Go code.
type Func struct {
	// Name identifies the operator. Required.
	Name string
	// Targets lists the tables the handler writes, so that an operator feeding itself can be
	// refused. Optional.
	Targets []string
	// Events filters the event types; nil means insert, update and delete.
	Events []event.Type
	// Entities are the tables listened to. Required.
	Entities []string
	// Handle applies one event. Required.
	Handle HandlerFunc
}

// spec is what the runner needs of any operator.
type spec struct {
	name     string
	targets  []string
	entities []string
	types    []event.Type
	// apply runs one event in tx. SQL operators also set statements, which lets the runner
	// queue a whole batch in one round trip.
	apply      func(ctx context.Context, tx pgx.Tx, e *event.Event) error
	statements func(e *event.Event, q []stmt) []stmt
}

// stmt is one statement an SQL operator runs for an event, with $1 bound to arg.
type stmt struct {
	sql  string
	arg  string
	what string // for errors: "query for post_with_comments_counts id 7"
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$`)

func defaultTypes(t []event.Type) []event.Type {
	if len(t) == 0 {
		return []event.Type{event.Insert, event.Update, event.Delete}
	}
	return t
}

func (o SQL) spec() (spec, error) {
	name := o.Name
	if name == "" {
		name = o.Target
	}
	switch {
	case o.Target == "":
		return spec{}, configErrorf("", "Target", "SQL operator has no Target; set it to the derived table the query writes, e.g. post_with_comments_counts")
	case !identRE.MatchString(o.Target):
		return spec{}, configErrorf(name, "Target", "Target %q is not a table name like post_with_comments_counts or schema.table", o.Target)
	case len(o.Entities) == 0:
		return spec{}, configErrorf(name, "Entities", "no Entities; list the tables it listens to, e.g. comments and posts")
	case strings.TrimSpace(o.Query) == "":
		return spec{}, configErrorf(name, "Query", "empty Query; write the statement that updates %s for the id $1", o.Target)
	case !strings.Contains(o.Query, "$1"):
		return spec{}, configErrorf(name, "Query", "Query does not use $1, the derived row's id; without it every event would recompute the same thing")
	}
	for ent := range o.ID {
		if !slices.Contains(o.Entities, ent) {
			return spec{}, configErrorf(name, "ID", "ID maps entity %q, which is not in Entities %v; add it to Entities or remove it from ID", ent, o.Entities)
		}
	}
	for _, ent := range o.DeleteWith {
		if !slices.Contains(o.Entities, ent) {
			return spec{}, configErrorf(name, "DeleteWith", "DeleteWith names %q, which is not in Entities %v", ent, o.Entities)
		}
	}
	idCol := o.TargetIDColumn
	if idCol == "" {
		idCol = TargetIDColumnDefault
	}
	if !identRE.MatchString(idCol) || strings.Contains(idCol, ".") {
		return spec{}, configErrorf(name, "TargetIDColumn", "TargetIDColumn %q is not a column name", idCol)
	}
	deleteSQL := "DELETE FROM " + quoteTable(o.Target) + " WHERE " + pgx.Identifier{idCol}.Sanitize() + " = $1"
	ids := o.ID
	deleteWith := o.DeleteWith
	query := o.Query
	// statements lists what an event runs: the delete for a DeleteWith entity's delete,
	// otherwise the query once per distinct id in the new and old records (an update that
	// moves a row from one parent to another recomputes both). They are queued, so a whole
	// batch travels to the server in one round trip.
	statements := func(e *event.Event, q []stmt) []stmt {
		col := ids[e.Name]
		if col == "" {
			col = "id"
		}
		if e.Type == event.Delete && slices.Contains(deleteWith, e.Name) {
			if id, ok := idOf(e.OldRecord, col); ok {
				q = append(q, stmt{sql: deleteSQL, arg: id, what: "delete " + o.Target + " row " + id})
			}
			return q
		}
		first := ""
		for i, rec := range [2]event.Record{e.NewRecord, e.OldRecord} {
			id, ok := idOf(rec, col)
			if !ok || (i == 1 && id == first) {
				continue
			}
			if i == 0 {
				first = id
			}
			q = append(q, stmt{sql: query, arg: id, what: "query for " + o.Target + " id " + id})
		}
		return q
	}
	apply := func(ctx context.Context, tx pgx.Tx, e *event.Event) error {
		for _, st := range statements(e, nil) {
			if _, err := tx.Exec(ctx, st.sql, st.arg); err != nil {
				return fmt.Errorf("%s: %w", st.what, err)
			}
		}
		return nil
	}
	return spec{name: name, targets: []string{o.Target}, entities: o.Entities, types: defaultTypes(o.Events), apply: apply, statements: statements}, nil
}

// idOf returns the text of the record's id column; ok is false when it is absent or NULL.
func idOf(rec event.Record, col string) (string, bool) {
	v, ok := rec.Get(col)
	if !ok {
		return "", false
	}
	return v.Text()
}

func quoteTable(t string) string {
	if s, n, ok := strings.Cut(t, "."); ok {
		return pgx.Identifier{s, n}.Sanitize()
	}
	return pgx.Identifier{t}.Sanitize()
}

func (o Func) spec() (spec, error) {
	switch {
	case o.Name == "":
		return spec{}, configErrorf("", "Name", "Func operator has no Name; give it one, it keys its checkpoint")
	case len(o.Entities) == 0:
		return spec{}, configErrorf(o.Name, "Entities", "no Entities; list the tables it listens to")
	case o.Handle == nil:
		return spec{}, configErrorf(o.Name, "Handle", "Handle is nil")
	}
	return spec{name: o.Name, targets: o.Targets, entities: o.Entities, types: defaultTypes(o.Events),
		apply: func(ctx context.Context, tx pgx.Tx, e *event.Event) error { return o.Handle(ctx, tx, e) }}, nil
}

// bare returns the table name without its schema, as events name entities.
func bare(t string) string {
	if _, n, ok := strings.Cut(t, "."); ok {
		return n
	}
	return t
}

// checkGraph refuses an operator set where some operator's writes reach, through the
// operators listening to them, one of its own entities: that would loop forever.
func checkGraph(specs []spec) error {
	byEntity := map[string][]int{}
	for i, s := range specs {
		for _, e := range s.entities {
			byEntity[bare(e)] = append(byEntity[bare(e)], i)
		}
	}
	for i, s := range specs {
		// Walk from s's targets through listeners; reaching s again is a cycle.
		seen := map[int]bool{}
		var path []string
		var walk func(j int) error
		walk = func(j int) error {
			for _, t := range specs[j].targets {
				for _, k := range byEntity[bare(t)] {
					step := append(path, fmt.Sprintf("%s writes %s", specs[j].name, bare(t)))
					if k == i {
						return configErrorf(s.name, "Entities", "would feed itself (%s, which %s listens to); an operator may not listen, directly or through other operators, to what it writes",
							strings.Join(step, ", "), s.name)
					}
					if !seen[k] {
						seen[k] = true
						path = step
						if err := walk(k); err != nil {
							return err
						}
						path = path[:len(path)-1]
					}
				}
			}
			return nil
		}
		if err := walk(i); err != nil {
			return err
		}
	}
	return nil
}
