package operator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
	// one post to another updates both posts; the old value is known with REPLICA IDENTITY
	// FULL). A NULL id runs nothing; an event without the column halts the operator (see
	// the package documentation, Ids and schema changes).
	ID map[string]string
	// DeleteWith lists entities whose delete removes the derived row
	// (DELETE FROM Target WHERE TargetIDColumn = $1) instead of running Query.
	DeleteWith []string
	// TargetIDColumn is the derived table's id column. Default "id".
	TargetIDColumn string
	// OnFailure is what happens when an event fails past its retries: [Halt] (the
	// default) or [Park] (see the package documentation, Parking).
	OnFailure FailureMode
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
	// OnFailure is what happens when an event fails past its retries: [Halt] (the
	// default) or [Park], which needs ID.
	OnFailure FailureMode
	// ID returns the derived row an event affects, which keys parking: the later events
	// of a parked row are parked behind it, in order. Required with OnFailure Park.
	ID func(e *event.Event) (string, error)
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
	statements func(e *event.Event, q []stmt) ([]stmt, error)
	// park is set for OnFailure Park; ids lists the derived rows an event affects and
	// applyID applies its effect on one of them (parking works per derived row).
	park    bool
	ids     func(e *event.Event) ([]string, error)
	applyID func(ctx context.Context, tx pgx.Tx, e *event.Event, id string) error
	// checks are prepared when the runner starts, so that a query PostgreSQL cannot
	// parse or plan, or a missing id column, fails the start instead of the first event.
	checks []stmt
}

// stmt is one statement an SQL operator runs for an event, with $1 bound to arg.
type stmt struct {
	sql  string
	arg  string
	what string // for errors: "query for post_with_comments_counts id 7"
	// idColumn marks a start check of an entity's id column.
	idColumn bool
}

// err wraps a failure of the statement. A failure that cannot heal (IsPermanent) also
// shows the statement, and where in it PostgreSQL found the error, since the fix is there.
func (s stmt) err(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || !IsPermanent(err) {
		return fmt.Errorf("%s: %w", s.what, err)
	}
	return fmt.Errorf("%s: %w%s", s.what, err, describeQuery(s.sql, int(pe.Position)))
}

// describeQuery shows sql, with the line and column of the 1-based character position pos
// when it is known (PostgreSQL reports a syntax error's place that way).
func describeQuery(sql string, pos int) string {
	flat := strings.TrimRight(strings.Join(strings.Fields(sql), " "), "; ")
	if pos <= 0 || pos > utf8.RuneCountInString(sql) {
		return "; the statement: " + flat
	}
	line, col := 1, 1
	start := 0
	n := 0
	for i, r := range sql {
		n++
		if n == pos {
			end := strings.IndexByte(sql[i:], '\n')
			if end < 0 {
				end = len(sql) - i
			}
			return fmt.Sprintf("; at line %d, column %d of the statement, in %q; the statement: %s",
				line, col, strings.TrimSpace(sql[start:i+end]), flat)
		}
		if r == '\n' {
			line, col, start = line+1, 1, i+1
		} else {
			col++
		}
	}
	return "; the statement: " + flat
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$`)

// ValidTable reports whether name is a table name SQL takes as Target or an entity: an
// identifier (a letter or _, then letters, digits, _ or $), optionally schema-qualified.
func ValidTable(name string) bool { return identRE.MatchString(name) }

// ValidColumn reports whether name is a column name SQL takes in ID and TargetIDColumn:
// an identifier, not qualified.
func ValidColumn(name string) bool { return identRE.MatchString(name) && !strings.Contains(name, ".") }

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
	case !ValidTable(o.Target):
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
	if !ValidColumn(idCol) {
		return spec{}, configErrorf(name, "TargetIDColumn", "TargetIDColumn %q is not a column name", idCol)
	}
	deleteSQL := "DELETE FROM " + quoteTable(o.Target) + " WHERE " + pgx.Identifier{idCol}.Sanitize() + " = $1"
	idCols := o.ID
	deleteWith := o.DeleteWith
	query := o.Query
	// statements lists what an event runs: the delete for a DeleteWith entity's delete,
	// otherwise the query once per distinct id in the new and old records (an update that
	// moves a row from one parent to another recomputes both). They are queued, so a whole
	// batch travels to the server in one round trip. An event that lacks its id column is an
	// error (see idOf); a NULL id runs nothing.
	statements := func(e *event.Event, q []stmt) ([]stmt, error) {
		col := idCols[e.Name]
		if col == "" {
			col = "id"
		}
		if e.Type == event.Delete && slices.Contains(deleteWith, e.Name) {
			id, ok, err := idOf(name, o.Target, e, true, col)
			if ok {
				q = append(q, stmt{sql: deleteSQL, arg: id, what: "delete " + o.Target + " row " + id})
			}
			return q, err
		}
		first := ""
		for i, old := range [2]bool{false, true} {
			id, ok, err := idOf(name, o.Target, e, old, col)
			if err != nil {
				return q, err
			}
			if !ok || (i == 1 && id == first) {
				continue
			}
			if i == 0 {
				first = id
			}
			q = append(q, stmt{sql: query, arg: id, what: "query for " + o.Target + " id " + id})
		}
		return q, nil
	}
	apply := func(ctx context.Context, tx pgx.Tx, e *event.Event) error {
		q, err := statements(e, nil)
		if err != nil {
			return err
		}
		for _, st := range q {
			if _, err := tx.Exec(ctx, st.sql, st.arg); err != nil {
				return st.err(err)
			}
		}
		return nil
	}
	// Checked when the runner starts: each entity's id column, then the statements.
	var checks []stmt
	for _, ent := range o.Entities {
		col := cmp.Or(idCols[event.TableName(ent)], "id") // as statements looks it up: by the event's name
		checks = append(checks, stmt{sql: "SELECT " + pgx.Identifier{col}.Sanitize() + " FROM " + quoteTable(ent) + " LIMIT 0",
			what: fmt.Sprintf("id column %s of %s", col, ent), idColumn: true})
	}
	checks = append(checks, stmt{sql: query, what: "query"})
	if len(deleteWith) > 0 {
		checks = append(checks, stmt{sql: deleteSQL, what: "delete statement for delete_with"})
	}
	park, err := o.OnFailure.park(name)
	if err != nil {
		return spec{}, err
	}
	ids := func(e *event.Event) ([]string, error) {
		q, err := statements(e, nil)
		out := make([]string, 0, len(q))
		for _, st := range q {
			if !slices.Contains(out, st.arg) {
				out = append(out, st.arg)
			}
		}
		return out, err
	}
	applyID := func(ctx context.Context, tx pgx.Tx, e *event.Event, id string) error {
		q, err := statements(e, nil)
		if err != nil {
			return err
		}
		for _, st := range q {
			if st.arg != id {
				continue
			}
			if _, err := tx.Exec(ctx, st.sql, st.arg); err != nil {
				return st.err(err)
			}
		}
		return nil
	}
	return spec{name: name, targets: []string{o.Target}, entities: o.Entities, types: defaultTypes(o.Events), apply: apply, statements: statements, checks: checks,
		park: park, ids: ids, applyID: applyID}, nil
}

// idOf returns the text of the id column col in the event's new record (old: its old
// record); ok is false when that record is absent or the value is NULL (a row with no
// parent: nothing to recompute). It is an [*IDColumnError] when the record lacks the
// column although it should carry it: the table no longer has the column (renamed or
// dropped; a new record carries every column), or a delete's old record carries only the
// table's replica identity columns and col is not one of them. An update's old record may
// lack the column for that reason too; then only the new record's id is recomputed
// (REPLICA IDENTITY FULL sends the whole old row, so a row moved to another parent
// recomputes both).
func idOf(op, target string, e *event.Event, old bool, col string) (string, bool, error) {
	rec := e.NewRecord
	if old {
		rec = e.OldRecord
	}
	if rec == nil {
		return "", false, nil
	}
	if v, ok := rec.Get(col); ok {
		if v.IsUnchanged() {
			// An unchanged TOASTed id was not sent: its value is unknown, which is not NULL.
			return "", false, &IDColumnError{Operator: op, Target: target, Table: tableOf(e), Column: col, Type: e.Type, Unchanged: true}
		}
		id, ok := v.Text()
		return id, ok, nil
	}
	_, inTable := e.Source.Column(col)
	known := len(e.Source.Columns) > 0 // events built by hand may not list their columns
	if old && e.Type != event.Delete && (inTable || !known) {
		// An update's old row under the default replica identity: the key columns only.
		return "", false, nil
	}
	err := &IDColumnError{Operator: op, Target: target, Table: tableOf(e), Column: col, Type: e.Type,
		NotInReplicaIdentity: old && (inTable || !known)}
	for _, c := range e.Source.Columns {
		err.Columns = append(err.Columns, c.Name)
	}
	return "", false, err
}

// tableOf names the event's table, with its schema unless that is public.
func tableOf(e *event.Event) string {
	if e.Source.Schema != "" && e.Source.Schema != "public" {
		return e.Source.Schema + "." + e.Name
	}
	return e.Name
}

// IDColumnError is the failure of an event that lacks the column an [SQL] operator's ID
// mapping names for its table, so the derived row the event affects is unknown. Retrying
// the event cannot help ([IsPermanent]): the operator halts at once, and the error says
// what to change.
type IDColumnError struct {
	// Operator is the operator's name; Target is its derived table.
	Operator, Target string
	// Table is the event's table; Column is the id column the operator maps it to.
	Table, Column string
	// Type is the event's type.
	Type event.Type
	// Columns are the event's columns: the table's columns when the change was made.
	Columns []string
	// NotInReplicaIdentity reports a delete whose old record carries only the table's
	// replica identity columns (with REPLICA IDENTITY DEFAULT, the primary key), Column not
	// among them. Unchanged reports an id that is an unchanged TOASTed value PostgreSQL did
	// not send. When both are false, the table itself lacks Column: renamed or dropped.
	NotInReplicaIdentity, Unchanged bool
}

func (e *IDColumnError) Error() string {
	if e.NotInReplicaIdentity || e.Unchanged {
		cause := fmt.Sprintf("its old record carries only the replica identity columns of %s, not %s", e.Table, e.Column)
		if e.Unchanged {
			cause = fmt.Sprintf("its %s is an unchanged TOASTed value that PostgreSQL did not send", e.Column)
		}
		return fmt.Sprintf("operator %s: %s of %s: %s, so the %s row it affects is unknown; run ALTER TABLE %s REPLICA IDENTITY FULL so that changes carry the whole row, then skip this event (walflow operator skip %s) and backfill the operator (walflow operator backfill %s) to recompute the row it missed",
			e.Operator, e.Type, e.Table, cause, e.Target, quoteTable(e.Table), e.Operator, e.Operator)
	}
	return fmt.Sprintf("operator %s: %s of %s has no column %s, which the operator's id mapping names for %s (the event's columns: %s): the column was renamed or dropped, so the %s row the event affects is unknown; map %s to its new id column (id: {%s: NEW_COLUMN} under operators.%s in walflow.yaml, or SQL.ID in Go), fix the query if it names the column, restart walflow with that configuration, then run walflow operator restart %s",
		e.Operator, e.Type, e.Table, e.Column, e.Table, strings.Join(e.Columns, ", "), e.Target, e.Table, event.TableName(e.Table), e.Operator, e.Operator)
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
	park, err := o.OnFailure.park(o.Name)
	if err != nil {
		return spec{}, err
	}
	if park && o.ID == nil {
		return spec{}, fmt.Errorf("operator %s: OnFailure is %q but ID is nil; set ID to the function that names the derived row an event affects, which keys parked events", o.Name, Park)
	}
	s := spec{name: o.Name, targets: o.Targets, entities: o.Entities, types: defaultTypes(o.Events),
		apply: func(ctx context.Context, tx pgx.Tx, e *event.Event) error { return o.Handle(ctx, tx, e) }, park: park}
	if park {
		s.ids = func(e *event.Event) ([]string, error) {
			id, err := o.ID(e)
			if err != nil {
				return nil, fmt.Errorf("operator %s: the id of the event at position %d: %w", o.Name, e.Position, err)
			}
			return []string{id}, nil
		}
		s.applyID = func(ctx context.Context, tx pgx.Tx, e *event.Event, _ string) error { return o.Handle(ctx, tx, e) }
	}
	return s, nil
}

// checkGraph refuses an operator set where some operator's writes reach, through the
// operators listening to them, one of its own entities: that would loop forever.
func checkGraph(specs []spec) error {
	byEntity := map[string][]int{}
	for i, s := range specs {
		for _, e := range s.entities {
			byEntity[event.TableName(e)] = append(byEntity[event.TableName(e)], i)
		}
	}
	for i, s := range specs {
		// Walk from s's targets through listeners; reaching s again is a cycle.
		seen := map[int]bool{}
		var path []string
		var walk func(j int) error
		walk = func(j int) error {
			for _, t := range specs[j].targets {
				for _, k := range byEntity[event.TableName(t)] {
					step := append(path, fmt.Sprintf("%s writes %s", specs[j].name, event.TableName(t)))
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
