package configfile

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/operator"
)

const operatorTables = `database_url: postgres://app@localhost/app
tables:
  posts:
  comments:
    scopes: ["posts/{post_id}"]
  post_with_comments_counts:
`

func TestParseConfigOperators(t *testing.T) {
	t.Parallel()
	yaml := operatorTables + `operators:
  post_with_comments_counts:
    target: post_with_comments_counts
    events: [insert, update, delete]
    entities: [comments, posts]
    id: {comments: post_id, posts: id}
    delete_with: [posts]
    target_id: id
    query: |
      UPDATE post_with_comments_counts p
      SET comments_count = (SELECT count(*) FROM comments c WHERE c.post_id = p.id)
      WHERE p.id = $1
  comment_totals:
    target: public.post_with_comments_counts
    events: [insert, delete]
    entities: [comments]
    id: {comments: post_id}
    query: UPDATE post_with_comments_counts SET comments_count = comments_count WHERE id = $1
    on_failure: park
operator_defaults:
  batch_size: 250
  batch_delay: 0s
  retry: {min: 100ms, multiplier: 1.5, max: 3s, max_retries: 7}
`
	c, err := parseConfig("walflow.yaml", []byte(yaml), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	e := c.Engine
	if len(e.Operators) != 2 {
		t.Fatalf("Operators = %+v, want 2", e.Operators)
	}
	seed, ok := e.Operators[0].(operator.SQL)
	if !ok {
		t.Fatalf("Operators[0] is %T, want operator.SQL", e.Operators[0])
	}
	if seed.Name != "post_with_comments_counts" || seed.Target != "post_with_comments_counts" ||
		!slices.Equal(seed.Events, []event.Type{event.Insert, event.Update, event.Delete}) ||
		!slices.Equal(seed.Entities, []string{"comments", "posts"}) ||
		seed.ID["comments"] != "post_id" || seed.ID["posts"] != "id" || len(seed.ID) != 2 ||
		!slices.Equal(seed.DeleteWith, []string{"posts"}) || seed.TargetIDColumn != "id" ||
		!strings.Contains(seed.Query, "WHERE p.id = $1") {
		t.Errorf("post_with_comments_counts = %+v", seed)
	}
	second := e.Operators[1].(operator.SQL)
	if second.Name != "comment_totals" || second.Target != "public.post_with_comments_counts" ||
		!slices.Equal(second.Events, []event.Type{event.Insert, event.Delete}) || second.DeleteWith != nil || second.OnFailure != operator.Park {
		t.Errorf("comment_totals = %+v", second)
	}
	want := operator.RetryPolicy{Min: 100 * time.Millisecond, Multiplier: 1.5, Max: 3 * time.Second, MaxRetries: 7}
	if e.OperatorBatchSize != 250 || e.OperatorBatchDelay != 0 || e.OperatorRetry != want {
		t.Errorf("operator defaults: batch %d, delay %s, retry %+v", e.OperatorBatchSize, e.OperatorBatchDelay, e.OperatorRetry)
	}

	// The name is the target by default, events default to all three (nil), and
	// max_retries: 0 means none (RetryPolicy's zero would mean the default).
	c, err = parseConfig("walflow.yaml", []byte(operatorTables+`operators:
  post_with_comments_counts:
    entities: [comments]
    id: {comments: post_id}
    query: SELECT $1::int
operator_defaults:
  batch_delay: 50ms
  retry:
    max_retries: 0
`), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	op := c.Engine.Operators[0].(operator.SQL)
	if op.Name != "post_with_comments_counts" || op.Target != "post_with_comments_counts" || op.Events != nil || op.TargetIDColumn != "" || op.OnFailure != "" {
		t.Errorf("defaults: %+v", op)
	}
	if c.Engine.OperatorRetry.MaxRetries != -1 || c.Engine.OperatorBatchDelay != 50*time.Millisecond || c.Engine.OperatorBatchSize != 0 {
		t.Errorf("operator defaults: %+v, delay %s, batch %d", c.Engine.OperatorRetry, c.Engine.OperatorBatchDelay, c.Engine.OperatorBatchSize)
	}

	// Without tables every table is followed, so any entity is accepted.
	if _, err := parseConfig("walflow.yaml", []byte("database_url: postgres://app@localhost/app\noperators:\n  counts:\n    entities: [anything]\n    query: SELECT $1\n"), noEnv); err != nil {
		t.Errorf("operator without tables: %v", err)
	}
}

func TestParseConfigOperatorErrors(t *testing.T) {
	t.Parallel()
	op := func(body string) string {
		return operatorTables + "operators:\n  counts:\n    target: post_with_comments_counts\n" + body
	}
	const ok = "    entities: [comments, posts]\n    id: {comments: post_id}\n    query: SELECT $1\n"
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error, in order
	}{
		{"unknown key", op("    entities: [comments]\n    querry: SELECT $1\n"),
			[]string{"walflow.yaml:11: operators.counts.querry: unknown key (did you mean query?); the keys of an operator are target, events, entities, id, delete_with, target_id, query, on_failure"}},
		{"bad on_failure", op("    on_failure: skip\n" + ok), []string{`walflow.yaml:10: operators.counts.on_failure: "skip" is not halt or park; halt (the default)`}},
		{"operators a list", operatorTables + "operators:\n  - counts\n", []string{"walflow.yaml:8: operators: want a mapping of operator names to their settings"}},
		{"operator not a mapping", operatorTables + "operators:\n  counts: SELECT 1\n", []string{`walflow.yaml:8: operators.counts: want a mapping of keys, found "SELECT 1"`}},
		{"empty operator", operatorTables + "operators:\n  counts:\n", []string{"walflow.yaml:8: operators.counts: empty; an operator needs at least entities and query"}},
		{"duplicate operator", operatorTables + "operators:\n  counts: {entities: [posts], query: SELECT $1}\n  counts: {entities: [posts], query: SELECT $1}\n",
			[]string{"walflow.yaml:9: operators.counts: set twice (first on line 8); keep one"}},
		{"no entities", op("    query: SELECT $1\n"), []string{"walflow.yaml:8: operators.counts: no entities; list the tables the operator listens to, like entities: [comments, posts]"}},
		{"empty entities", op("    entities: []\n    query: SELECT $1\n"), []string{"walflow.yaml:10: operators.counts.entities: no entities"}},
		{"entities not a list", op("    entities: comments\n    query: SELECT $1\n"), []string{`operators.counts.entities: want a list of followed tables like [comments, posts], found "comments"`}},
		{"bad entity", op("    entities: [comments, com-ments]\n    query: SELECT $1\n"), []string{`walflow.yaml:10: operators.counts.entities[1]: "com-ments" is not a table name`}},
		{"entity twice", op("    entities: [comments, comments]\n    query: SELECT $1\n"), []string{"operators.counts.entities[1]: comments is listed twice (also operators.counts.entities[0]); keep one"}},
		{"entity not followed", op("    entities: [comments, users]\n    query: SELECT $1\n"),
			[]string{"walflow.yaml:10: operators.counts.entities[1]: users is not in tables", "add it there (tables.users:), or remove it from operators.counts.entities"}},
		{"bad event", op("    events: [insert, upsert]\n" + ok), []string{`walflow.yaml:10: operators.counts.events[1]: "upsert" is not an event type; use insert, update or delete`}},
		{"truncate event", op("    events: [truncate]\n" + ok), []string{"operators.counts.events[0]: truncate carries no row ids", "walflow operator backfill counts after a TRUNCATE"}},
		{"event twice", op("    events: [insert, insert]\n" + ok), []string{"operators.counts.events[1]: insert is listed twice"}},
		{"no events", op("    events: []\n" + ok), []string{"operators.counts.events: empty, so the operator would never run"}},
		{"id of another table", op("    entities: [comments]\n    id: {comments: post_id, users: id}\n    query: SELECT $1\n"),
			[]string{"walflow.yaml:11: operators.counts.id.users: users is not one of operators.counts.entities (comments); add it there or remove this key"}},
		{"id bad column", op("    entities: [comments]\n    id: {comments: post-id}\n    query: SELECT $1\n"),
			[]string{`operators.counts.id.comments: "post-id" is not a column name`}},
		{"id not a mapping", op("    entities: [comments]\n    id: post_id\n    query: SELECT $1\n"),
			[]string{`operators.counts.id: want a mapping of entities to the column holding the derived row's id, like {comments: post_id, posts: id}, found "post_id"`}},
		{"delete_with another table", op("    entities: [comments, posts]\n    delete_with: [users]\n    query: SELECT $1\n"),
			[]string{"walflow.yaml:11: operators.counts.delete_with[0]: users is not one of operators.counts.entities (comments, posts)"}},
		{"bad target_id", op("    target_id: post id\n" + ok), []string{`operators.counts.target_id: "post id" is not a column name`}},
		{"bad target", operatorTables + "operators:\n  counts:\n    target: post counts\n" + ok, []string{`walflow.yaml:9: operators.counts.target: "post counts" is not a table name`}},
		{"name not a target", operatorTables + "operators:\n  post-counts:\n" + ok,
			[]string{`walflow.yaml:8: operators["post-counts"]: the name "post-counts" is not a table name, so it cannot be the target table; set target:`}},
		{"no query", op("    entities: [comments]\n"), []string{"walflow.yaml:8: operators.counts: no query; write the statement that recomputes the post_with_comments_counts row whose id is $1"}},
		{"blank query", op("    entities: [comments]\n    query: \"  \"\n"), []string{"walflow.yaml:11: operators.counts.query: no query"}},
		{"query without $1", op("    entities: [comments]\n    query: |\n      UPDATE post_with_comments_counts SET comments_count = 0\n"),
			[]string{"walflow.yaml:11: operators.counts.query: does not use $1, the derived row's id"}},
		{"feeds itself", operatorTables + "operators:\n  comments_copy:\n    target: comments\n    entities: [comments]\n    query: SELECT $1\n",
			[]string{"walflow.yaml:8: operators.comments_copy: would feed itself (comments_copy writes comments, which comments_copy listens to); an operator may not listen"}},
		{"feed each other", operatorTables + `operators:
  a:
    target: post_with_comments_counts
    entities: [comments]
    query: SELECT $1
  b:
    target: comments
    entities: [post_with_comments_counts]
    query: SELECT $1
`, []string{"walflow.yaml:8: operators.a: would feed itself (a writes post_with_comments_counts, b writes comments, which a listens to)"}},
		{"defaults unknown key", op(ok) + "operator_defaults:\n  batch: 10\n", []string{"walflow.yaml:14: operator_defaults.batch: unknown key; the keys of operator_defaults are batch_size, batch_delay, retry"}},
		{"batch size zero", op(ok) + "operator_defaults:\n  batch_size: 0\n", []string{`walflow.yaml:14: operator_defaults.batch_size: "0" is not a batch size; write a whole number of events from 1, like 100`}},
		{"batch size text", op(ok) + "operator_defaults: {batch_size: many}\n", []string{`operator_defaults.batch_size: "many" is not a batch size`}},
		{"negative batch delay", op(ok) + "operator_defaults: {batch_delay: -1s}\n", []string{`operator_defaults.batch_delay: "-1s" is not a duration from 0`}},
		{"bad retry min", op(ok) + "operator_defaults:\n  retry:\n    min: soon\n", []string{`walflow.yaml:15: operator_defaults.retry.min: "soon" is not a duration; write it like 10s`}},
		{"zero retry max", op(ok) + "operator_defaults: {retry: {max: 0s}}\n", []string{`operator_defaults.retry.max: "0s" is not positive`}},
		{"retry max below min", op(ok) + "operator_defaults: {retry: {min: 2s, max: 1s}}\n", []string{"operator_defaults.retry.max: 1s is less than retry.min 2s; make max at least min"}},
		{"small multiplier", op(ok) + "operator_defaults: {retry: {multiplier: 0.5}}\n", []string{`operator_defaults.retry.multiplier: "0.5" is not a multiplier; write a number from 1`}},
		{"negative max_retries", op(ok) + "operator_defaults: {retry: {max_retries: -1}}\n", []string{`operator_defaults.retry.max_retries: "-1" is not a number of retries`, "or 0 to halt at the first failure"}},
		{"unknown retry key", op(ok) + "operator_defaults: {retry: {maximum: 3}}\n", []string{"operator_defaults.retry.maximum: unknown key; the keys of operator_defaults.retry are min, multiplier, max, max_retries"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseConfig("walflow.yaml", []byte(tt.yaml), noEnv)
			if err == nil {
				t.Fatalf("parseConfig succeeded (%+v), want an error with %q", c.Engine.Operators, tt.want)
			}
			msg := err.Error()
			rest := msg
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error\n\t%s\ndoes not contain (in order)\n\t%s", msg, w)
				}
				rest = rest[i+len(w):]
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
		})
	}
}
