package configfile

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
)

// operatorConfig is one entry of operators: a SQL operator. Its key is the operator's name.
type operatorConfig struct {
	Target     string            `yaml:"target"`
	Events     []string          `yaml:"events"`
	Entities   []string          `yaml:"entities"`
	ID         map[string]string `yaml:"id"`
	DeleteWith []string          `yaml:"delete_with"`
	TargetID   string            `yaml:"target_id"`
	Query      string            `yaml:"query"`
	OnFailure  string            `yaml:"on_failure"`
}

// operatorDefaultsConfig is operator_defaults: how every operator runs.
type operatorDefaultsConfig struct {
	// Numbers are kept as the file's text, to name the key of a bad one.
	BatchSize  string      `yaml:"batch_size"`
	BatchDelay string      `yaml:"batch_delay"`
	Retry      retryConfig `yaml:"retry"`
}

type retryConfig struct {
	Min        string `yaml:"min"`
	Multiplier string `yaml:"multiplier"`
	Max        string `yaml:"max"`
	MaxRetries string `yaml:"max_retries"`
}

var (
	operatorsSpec = &spec{kind: kindMap, want: "a mapping of operator names to their settings, like post_with_comments_counts: {entities: [comments, posts], query: ...}",
		any: mapSpec("the keys of an operator",
			"target", scalar("the derived table the query writes, like post_with_comments_counts"),
			"events", &spec{kind: kindList, want: "a list of event types like [insert, update, delete]", elem: scalar("insert, update or delete")},
			"entities", &spec{kind: kindList, want: "a list of followed tables like [comments, posts]", elem: scalar("a table name like comments")},
			"id", &spec{kind: kindMap, want: "a mapping of entities to the column holding the derived row's id, like {comments: post_id, posts: id}",
				any: scalar("a column name like post_id")},
			"delete_with", &spec{kind: kindList, want: "a list of entities like [posts]", elem: scalar("an entity like posts")},
			"target_id", scalar("the derived table's id column, like id"),
			"query", scalar("a SQL statement that recomputes the derived row whose id is $1"),
			"on_failure", scalar("halt or park"),
		),
	}
	operatorDefaultsSpec = mapSpec("the keys of operator_defaults",
		"batch_size", scalar("a number of events like 100"),
		"batch_delay", scalar("a duration like 0s or 50ms"),
		"retry", mapSpec("the keys of operator_defaults.retry",
			"min", scalar("a duration like 500ms"),
			"multiplier", scalar("a number like 2"),
			"max", scalar("a duration like 10s"),
			"max_retries", scalar("a number like 5"),
		),
	)
)

// operators validates operators and operator_defaults into e, after e.Tables.
func (l *loader) operators(fc *fileConfig, e *walflow.Config) error {
	for _, name := range l.order["operators"] {
		op, err := l.operator(name, fc.Operators[name], e)
		if err != nil {
			return err
		}
		e.Operators = append(e.Operators, op)
	}
	if len(e.Operators) > 1 {
		// Each operator passed alone; together they may feed one another.
		if err := operator.Validate(e.Operators); err != nil {
			path := "operators"
			var ce *operator.ConfigError
			if errors.As(err, &ce) && fc.Operators[ce.Operator] != nil {
				path = joinPath("operators", ce.Operator)
			}
			return l.errKey(path, "%s", operatorProblem(err))
		}
	}
	return l.operatorDefaults(&fc.OperatorDefaults, e)
}

// operator validates one entry of operators, naming the key of each mistake.
func (l *loader) operator(name string, oc *operatorConfig, e *walflow.Config) (operator.SQL, error) {
	path := joinPath("operators", name)
	op := operator.SQL{Name: name}
	if oc == nil {
		return op, l.errPath(path, "empty; an operator needs at least entities and query, like entities: [comments, posts] and query: MERGE INTO ... WHERE p.id = $1")
	}

	op.Target = cmp.Or(oc.Target, name)
	switch {
	case oc.Target != "" && !operator.ValidTable(oc.Target):
		return op, l.errPath(path+".target", "%q is not a table name; write the derived table the query writes, like post_with_comments_counts or schema.table", oc.Target)
	case oc.Target == "" && !operator.ValidTable(name):
		return op, l.errKey(path, "the name %q is not a table name, so it cannot be the target table; set target: to the derived table the query writes", name)
	}

	for i, s := range oc.Events {
		p := fmt.Sprintf("%s.events[%d]", path, i)
		t, err := event.ParseType(s)
		switch {
		case err != nil:
			return op, l.errPath(p, "%q is not an event type; use insert, update or delete", s)
		case t == event.Truncate:
			return op, l.errPath(p, "truncate carries no row ids, so operators cannot apply it; remove it, and run walflow operator backfill %s after a TRUNCATE", name)
		case slices.Contains(op.Events, t):
			return op, l.errPath(p, "%s is listed twice; keep one", s)
		}
		op.Events = append(op.Events, t)
	}
	if oc.Events != nil && len(oc.Events) == 0 {
		return op, l.errPath(path+".events", "empty, so the operator would never run; list some of insert, update and delete, or leave events out for all three")
	}

	if len(oc.Entities) == 0 {
		if l.nodes[path+".entities"] == nil {
			return op, l.errKey(path, "no entities; list the tables the operator listens to, like entities: [comments, posts]")
		}
		return op, l.errPath(path+".entities", "no entities; list the tables the operator listens to, like entities: [comments, posts]")
	}
	for i, ent := range oc.Entities {
		p := fmt.Sprintf("%s.entities[%d]", path, i)
		if !operator.ValidTable(ent) {
			return op, l.errPath(p, "%q is not a table name; write a followed table like comments", ent)
		}
		if j := slices.Index(oc.Entities[:i], ent); j >= 0 {
			return op, l.errPath(p, "%s is listed twice (also %s.entities[%d]); keep one", ent, path, j)
		}
		if len(e.Tables) > 0 && !channel.HasTable(e.Tables, ent) {
			return op, l.errPath(p, "%s is not in tables, so its events never reach the ledger the operator reads; add it there (%s:), or remove it from %s.entities",
				ent, joinPath("tables", ent), path)
		}
	}
	op.Entities = oc.Entities

	for _, ent := range l.order[path+".id"] {
		p := joinPath(path+".id", ent)
		if !slices.Contains(oc.Entities, ent) {
			return op, l.errPath(p, "%s is not one of %s.entities (%s); add it there or remove this key", ent, path, strings.Join(oc.Entities, ", "))
		}
		if col := oc.ID[ent]; !operator.ValidColumn(col) {
			return op, l.errPath(p, "%q is not a column name; write the column of %s that holds the derived row's id, like post_id", col, ent)
		}
	}
	op.ID = oc.ID

	for i, ent := range oc.DeleteWith {
		if !slices.Contains(oc.Entities, ent) {
			return op, l.errPath(fmt.Sprintf("%s.delete_with[%d]", path, i), "%s is not one of %s.entities (%s); a delete_with entry must be an entity whose delete removes the derived row",
				ent, path, strings.Join(oc.Entities, ", "))
		}
	}
	op.DeleteWith = oc.DeleteWith

	if oc.TargetID != "" && !operator.ValidColumn(oc.TargetID) {
		return op, l.errPath(path+".target_id", "%q is not a column name; write %s's id column, like id", oc.TargetID, op.Target)
	}
	op.TargetIDColumn = oc.TargetID

	switch {
	case strings.TrimSpace(oc.Query) == "":
		msg := fmt.Sprintf("no query; write the statement that recomputes the %s row whose id is $1, like query: MERGE INTO %s ... WHERE p.id = $1", op.Target, op.Target)
		if l.nodes[path+".query"] == nil {
			return op, l.errKey(path, "%s", msg)
		}
		return op, l.errPath(path+".query", "%s", msg)
	case !strings.Contains(oc.Query, "$1"):
		return op, l.errPath(path+".query", "does not use $1, the derived row's id, so every event would recompute the same thing; filter on it, like WHERE p.id = $1")
	}
	op.Query = oc.Query

	switch oc.OnFailure {
	case "", string(operator.Halt), string(operator.Park):
		op.OnFailure = operator.FailureMode(oc.OnFailure)
	default:
		return op, l.errPath(path+".on_failure", "%q is not halt or park; halt (the default) stops the operator at an event that keeps failing, park sets it aside with the later events of its derived row and goes on with the other rows", oc.OnFailure)
	}

	// Whatever else operator.Validate (and so operator.New) refuses, it refuses here, at the operator's key.
	if err := operator.Validate([]operator.Operator{op}); err != nil {
		return op, l.errKey(path, "%s", operatorProblem(err))
	}
	return op, nil
}

// operatorDefaults validates operator_defaults into e.
func (l *loader) operatorDefaults(dc *operatorDefaultsConfig, e *walflow.Config) error {
	if dc.BatchSize != "" {
		n, err := strconv.Atoi(dc.BatchSize)
		if err != nil || n < 1 {
			return l.errPath("operator_defaults.batch_size", "%q is not a batch size; write a whole number of events from 1, like %d", dc.BatchSize, operator.BatchSizeDefault)
		}
		e.OperatorBatchSize = n
	}
	if s := dc.BatchDelay; s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return l.errPath("operator_defaults.batch_delay", "%q is not a duration from 0; write it like 0s (apply what is there) or 50ms (wait that long for a batch to fill)", s)
		}
		e.OperatorBatchDelay = d
	}
	r := &e.OperatorRetry
	var err error
	if r.Min, err = l.duration("operator_defaults.retry.min", dc.Retry.Min); err != nil {
		return err
	}
	if r.Max, err = l.duration("operator_defaults.retry.max", dc.Retry.Max); err != nil {
		return err
	}
	if r.Min > 0 && r.Max > 0 && r.Max < r.Min {
		return l.errPath("operator_defaults.retry.max", "%s is less than retry.min %s; make max at least min", r.Max, r.Min)
	}
	if s := dc.Retry.Multiplier; s != "" {
		m, err := strconv.ParseFloat(s, 64)
		if err != nil || m < 1 {
			return l.errPath("operator_defaults.retry.multiplier", "%q is not a multiplier; write a number from 1 (the same wait every time), like 2", s)
		}
		r.Multiplier = m
	}
	if s := dc.Retry.MaxRetries; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return l.errPath("operator_defaults.retry.max_retries", "%q is not a number of retries; write a whole number like %d, or 0 to halt at the first failure", s, operator.MaxRetriesDefault)
		}
		r.MaxRetries = n
		if n == 0 {
			r.MaxRetries = -1 // RetryPolicy's zero means the default; negative means none
		}
	}
	return nil
}

// operatorProblem is an operator.Validate error without the operator's name, which the key
// path already says.
func operatorProblem(err error) string {
	var ce *operator.ConfigError
	if errors.As(err, &ce) {
		return ce.Err.Error()
	}
	return err.Error()
}
