package operator_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/retry"
)

// start runs a runner until the returned stop is called (or the test ends); stop returns
// what Run returned.
func (e *env) start(cfg operator.Config) (*operator.Runner, func() error) {
	e.t.Helper()
	r := e.newRunner(cfg)
	stop := startRunner(r)
	e.t.Cleanup(func() { _ = stop() })
	return r, stop
}

// startErr runs a runner that must refuse to start, and returns its error.
func (e *env) startErr(ops ...operator.Operator) error {
	e.t.Helper()
	r, err := operator.New(operator.Config{DB: e.db, Ledger: e.eng.Ledger(), Operators: ops, Logger: testLogger(e.t)})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.t.Context(), 60*time.Second)
	defer cancel()
	if err := r.Run(ctx); err != nil {
		return err
	}
	e.t.Fatal("Run started operators it should have refused")
	return nil
}

func wantAll(t *testing.T, what, got string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, got)
		}
	}
}

// parentOperator is seedOperator after comments.post_id was renamed parent_id.
func parentOperator() operator.SQL {
	o := seedOperator
	o.ID = map[string]string{"comments": "parent_id", "posts": "id"}
	o.Query = strings.ReplaceAll(o.Query, "c.post_id", "c.parent_id")
	return o
}

// TestIDColumnRenamed renames the column an operator maps comments to while the operator
// runs: the next comment halts it at once with an error naming the table, the column and
// the fix (never skips it, which would leave the count wrong), the channel router
// warns once that the comments' scope cannot be computed, and walflow refuses to start
// again until the configuration follows the rename. Then the fix the error gives works.
func TestIDColumnRenamed(t *testing.T) {
	t.Parallel()
	engLogs := &syncbuf.Buffer{}
	e := newEnv(t, func(c *walflow.Config) {
		c.Tables[1].Scopes = []channel.Scope{channel.MustParseScope("posts/{post_id}")}
		c.Logger = slog.New(slog.NewJSONHandler(io.MultiWriter(engLogs, t.Output()), &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	const name = "post_with_comments_counts"
	rep := &recorder{halted: make(chan event.Position, 1)}
	r, stop := e.start(operator.Config{Operators: []operator.Operator{seedOperator}, Reporter: rep, SleepFunc: (&fakeSleep{}).sleep})
	e.exec(`INSERT INTO posts (title) VALUES ('a'), ('b')`)
	e.exec(`INSERT INTO comments (post_id) VALUES (1), (2)`)
	e.settle(r, "posts", "comments")
	if got, want := e.query(derived), e.query(recompute); got != want {
		t.Fatalf("before the rename: derived\n%s\nwant\n%s", got, want)
	}

	e.exec(`ALTER TABLE comments RENAME COLUMN post_id TO parent_id`)
	e.exec(`INSERT INTO comments (parent_id) VALUES (1)`)
	e.exec(`INSERT INTO comments (parent_id) VALUES (2)`)
	var at event.Position
	select {
	case at = <-rep.halted:
	case <-time.After(60 * time.Second):
		t.Fatal("the operator did not halt on a comment without post_id")
	}
	if n := rep.retries.Load(); n != 0 {
		t.Errorf("%d retries of an event that cannot heal, want 0", n)
	}
	st := statusOf(t, r, name)
	if !st.Halted || st.FailedPosition != at {
		t.Fatalf("status %+v, want halted at %d", st, at)
	}
	wantAll(t, "the halt error", st.Error, "insert of comments has no column post_id", "renamed or dropped",
		"id, parent_id, body", "id: {comments: NEW_COLUMN} under operators.post_with_comments_counts in walflow.yaml",
		"walflow operator restart post_with_comments_counts")
	// The router warned once for the new relation, not once per comment.
	e.settle(r)
	if n := strings.Count(engLogs.String(), `"scope":"posts/{post_id}"`); n != 1 {
		t.Fatalf("%d warnings about the scope posts/{post_id}, want 1:\n%s", n, engLogs.String())
	}
	wantAll(t, "the router's warning", engLogs.String(), `"table":"comments"`, `"column":"post_id"`, `"component":"channel"`)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// Started again with the old configuration, the runner refuses: the id column is gone,
	// and then the query names it.
	err := e.startErr(seedOperator)
	wantAll(t, "the start error with the old id mapping", err.Error(), "operator post_with_comments_counts", "id column post_id of comments", "post_id", "does not exist")
	half := seedOperator
	half.ID = map[string]string{"comments": "parent_id", "posts": "id"}
	err = e.startErr(half)
	wantAll(t, "the start error with the old query", err.Error(), "operator post_with_comments_counts: its query does not prepare",
		`column c.post_id does not exist (SQLSTATE 42703)`, "at line 10, column ", `"(SELECT COUNT(c.id) FROM comments c WHERE c.post_id = p.id) AS comments_count"`,
		"the statement: MERGE INTO post_with_comments_counts dest USING", "operators.post_with_comments_counts.query")

	// With the configuration fixed, the runner starts, says the operator is still halted,
	// and a restart applies the comments it halted on.
	logs := &syncbuf.Buffer{}
	r, _ = e.start(operator.Config{Operators: []operator.Operator{parentOperator()}, Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	waitFor(t, func() bool { return strings.Contains(logs.String(), "still halted") })
	wantAll(t, "the warning at start", logs.String(), `"level":"WARN"`, `"operator":"post_with_comments_counts"`,
		fmt.Sprintf(`"failed_position":%d`, at), "has no column post_id", `"restart":"walflow operator restart post_with_comments_counts"`)
	if err := r.Restart(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	e.settle(r, "posts", "comments")
	recomputeParent := strings.ReplaceAll(recompute, "c.post_id", "c.parent_id")
	if got, want := e.query(derived), e.query(recomputeParent); got != want || !strings.HasSuffix(got, " 2") {
		t.Fatalf("after the fix: derived\n%s\nwant\n%s (2 comments each)", got, want)
	}
}

// TestDeleteOutsideReplicaIdentity deletes a comment of a table whose replica identity is
// the primary key: the delete's old record has no post_id, so the operator cannot know
// which post to recompute. It halts at once saying so and how to fix it (skipping the
// delete would leave the count one too high). Updates, whose new record has post_id,
// go on without their old one.
func TestDeleteOutsideReplicaIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(`ALTER TABLE comments REPLICA IDENTITY DEFAULT`)
	rep := &recorder{halted: make(chan event.Position, 1)}
	r := e.run(operator.Config{Operators: []operator.Operator{seedOperator}, Reporter: rep, SleepFunc: (&fakeSleep{}).sleep})
	e.exec(`INSERT INTO posts (title) VALUES ('a'), ('b')`)
	e.exec(`INSERT INTO comments (post_id) VALUES (1), (1), (2)`)
	e.exec(`UPDATE comments SET body = 'edited' WHERE id = 1`) // no old record
	e.exec(`UPDATE comments SET id = 10 WHERE id = 2`)         // an old record with only the key
	e.settle(r, "posts", "comments")
	if got, want := e.query(derived), e.query(recompute); got != want {
		t.Fatalf("after the updates: derived\n%s\nwant\n%s", got, want)
	}
	if st := statusOf(t, r, "post_with_comments_counts"); st.Halted {
		t.Fatalf("halted on an update: %+v", st)
	}

	e.exec(`DELETE FROM comments WHERE id = 10`)
	var at event.Position
	select {
	case at = <-rep.halted:
	case <-time.After(60 * time.Second):
		t.Fatal("the operator did not halt on a delete without post_id")
	}
	if n := rep.retries.Load(); n != 0 {
		t.Errorf("%d retries of an event that cannot heal, want 0", n)
	}
	st := statusOf(t, r, "post_with_comments_counts")
	wantAll(t, "the halt error", st.Error, "delete of comments", "carries only the replica identity columns of comments, not post_id",
		`ALTER TABLE "comments" REPLICA IDENTITY FULL`, "walflow operator skip post_with_comments_counts", "walflow operator backfill post_with_comments_counts")

	// The fix the error gives makes the rows exact, and later deletes apply.
	e.exec(`ALTER TABLE comments REPLICA IDENTITY FULL`)
	if pos, err := r.Skip(t.Context(), "post_with_comments_counts"); err != nil || pos != at {
		t.Fatalf("Skip = %d, %v; want %d", pos, err, at)
	}
	if err := operator.Backfill(t.Context(), e.db, seedOperator, nil); err != nil {
		t.Fatal(err)
	}
	e.exec(`DELETE FROM comments WHERE id = 3`)
	e.settle(r, "posts", "comments")
	if got, want := e.query(derived), e.query(recompute); got != want || !strings.HasSuffix(got, " 0") {
		t.Fatalf("after the fix: derived\n%s\nwant\n%s", got, want)
	}
	if st := statusOf(t, r, "post_with_comments_counts"); st.Halted {
		t.Fatalf("halted after the fix: %+v", st)
	}
}

// TestBadQueryFailsAtStart checks that the runner prepares the operators' statements when
// it starts: a query PostgreSQL cannot parse or plan, and an id column the table lacks,
// fail Run with the operator's name, the statement and where in it the error is (they used
// to fail only at the first event, and were retried 5 times).
func TestBadQueryFailsAtStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name string
		op   operator.SQL
		want []string
	}{{
		name: "syntax error",
		op: operator.SQL{Name: "typo", Target: "post_stats", Entities: []string{"posts"},
			Query: "INSERT INTO post_stats (id, comments_count)\n  SELEC $1::int, 0\n  ON CONFLICT (id) DO NOTHING"},
		want: []string{"operator typo: its query does not prepare", "syntax error at or near", "(SQLSTATE 42601)",
			"at line 2, column 3 of the statement", `"SELEC $1::int, 0"`, "the statement: INSERT INTO post_stats (id, comments_count) SELEC $1::int, 0 ON CONFLICT"},
	}, {
		name: "missing table",
		op: operator.SQL{Name: "nowhere", Target: "post_stats", Entities: []string{"posts"},
			Query: "UPDATE post_statz SET comments_count = 0 WHERE id = $1::int"},
		want: []string{"operator nowhere: its query does not prepare", `relation "post_statz" does not exist (SQLSTATE 42P01)`, "at line 1, column 8"},
	}, {
		name: "missing id column",
		op: operator.SQL{Name: "unmapped", Target: "post_stats", Entities: []string{"comments"}, ID: map[string]string{"comments": "parent_id"},
			Query: "UPDATE post_stats SET comments_count = 0 WHERE id = $1::int"},
		want: []string{"operator unmapped: id column parent_id of comments", `column "parent_id" does not exist`, "operators.unmapped in walflow.yaml"},
	}, {
		name: "missing delete_with target",
		op: operator.SQL{Name: "gone", Target: "post_statz", Entities: []string{"posts"}, DeleteWith: []string{"posts"},
			Query: "UPDATE post_stats SET comments_count = 0 WHERE id = $1::int"},
		want: []string{"operator gone: its delete statement for delete_with does not prepare", `relation "post_statz" does not exist`},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.startErr(seedOperator, tt.op)
			wantAll(t, "the start error", err.Error(), tt.want...)
		})
	}
}

// TestPermanentErrorHaltsAtOnce checks that an event whose statement fails with an error
// that cannot heal (here a data exception) halts its operator at once, with the statement
// in the error, instead of after 5 retries.
func TestPermanentErrorHaltsAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	divides := operator.SQL{Name: "divides", Target: "post_stats", Entities: []string{"posts"},
		Query: "UPDATE post_stats SET comments_count = 1 / (length($1::text) - length($1::text))"}
	rep := &recorder{halted: make(chan event.Position, 1)}
	r := e.run(operator.Config{Operators: []operator.Operator{divides}, Reporter: rep, SleepFunc: (&fakeSleep{}).sleep})
	e.exec(`INSERT INTO post_stats VALUES (1, 0, false)`)
	e.exec(`INSERT INTO posts (title) VALUES ('a')`)
	select {
	case <-rep.halted:
	case <-time.After(60 * time.Second):
		t.Fatal("the operator did not halt")
	}
	if n := rep.retries.Load(); n != 0 {
		t.Errorf("%d retries of a division by zero, want 0", n)
	}
	wantAll(t, "the halt error", statusOf(t, r, "divides").Error, "query for post_stats id 1", "division by zero (SQLSTATE 22012)",
		"the statement: UPDATE post_stats SET comments_count = 1 / (length($1::text) - length($1::text))")
}

// An event without its id column halts its operator at once: retry.IsPermanent knows it
// from IDColumnError's Permanent method. (The SQLSTATE classes are tested in package retry.)
func TestIDColumnErrorIsPermanent(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("event: %w", &operator.IDColumnError{})
	if !retry.IsPermanent(err) || retry.IsTransient(err) {
		t.Fatalf("IsPermanent(%v) = %v, IsTransient = %v; want permanent, not transient", err, retry.IsPermanent(err), retry.IsTransient(err))
	}
}
