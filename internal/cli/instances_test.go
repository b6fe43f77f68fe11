package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/operator"
)

// instanceConfig writes, in a directory of its own, the configuration of an instance on
// slot with its own ledger directory and HTTP address, and the given operators: block.
func instanceConfig(t *testing.T, dsn, slot, operators string) (path, dir, addr string) {
	t.Helper()
	return blogRunConfig(t, dsn, slot, "warn", "  post_with_comments_counts:\noperators:\n"+operators)
}

// seedOperators are post_with_comments_counts and comment_totals, which write the same derived
// table, as an operators: block.
const seedOperators = `  post_with_comments_counts:
    entities: [comments, posts]
    id: {comments: post_id, posts: id}
    delete_with: [posts]
` + seedQuery + `  comment_totals:
    target: post_with_comments_counts
    entities: [comments]
    id: {comments: post_id}
    query: UPDATE post_with_comments_counts SET comments_count = (SELECT count(*) FROM comments WHERE post_id = $1) WHERE id = $1
`

// startRun runs walflow run on path until stop is called (or the test ends), and waits
// until it streams. stop returns its result.
func startRun(t *testing.T, path, addr string) (runDone <-chan result, stop func() result) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan result, 1)
	go func() { done <- runCLI(ctx, noEnv, "run", "--config", path) }()
	var res *result
	stop = func() result {
		if res == nil {
			cancel()
			r := <-done
			res = &r
		}
		return *res
	}
	t.Cleanup(func() { stop() })
	waitFor(t, "walflow run streams", done, func() bool {
		code, body, err := httpGet(ctx, "http://"+addr+"/healthz")
		return err == nil && code == 200 && body != ""
	})
	return done, stop
}

// waitCaughtUp waits until every operator of the configuration runs with no lag.
func waitCaughtUp(t *testing.T, path string, runDone <-chan result) {
	t.Helper()
	waitForState(t, "the operators of "+path+" catch up", runDone, func() (bool, string) {
		doc, r := operatorStatusJSON(t, path)
		if r.code != ExitOK || doc.LedgerHead == nil || len(doc.Operators) == 0 {
			return false, fmt.Sprintf("; exit %d %s", r.code, r.stderr)
		}
		for _, o := range doc.Operators {
			if o.Halted || o.LagEvents == nil || *o.LagEvents != 0 {
				return false, fmt.Sprintf("; %+v", doc)
			}
		}
		return true, ""
	})
}

// mismatches runs a query counting the rows that differ from a recomputation.
func mismatches(t *testing.T, pool *pgxpool.Pool, query string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(t.Context(), query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestResyncProcedure follows, to the letter, the advice walflow gives when its slot was
// dropped and recreated: stop walflow, move the ledger directory aside, start it again,
// and reset every operator. The operators halt on the new ledger instead of skipping its
// first events, and after the resets every derived row equals its recomputation, rows
// changed while walflow was stopped included.
func TestResyncProcedure(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, pool := poolOnNewDatabase(t, blogSchema+derivedSchema)
	slot := pool.Config().ConnConfig.Database
	path, dir, addr := instanceConfig(t, dsn, slot, seedOperators)

	runDone, stop := startRun(t, path, addr)
	if _, err := pool.Exec(ctx, `
		INSERT INTO posts (title) SELECT 'post ' || i FROM generate_series(1, 8) i;
		INSERT INTO comments (post_id, body) SELECT 1 + i % 8, 'comment ' || i FROM generate_series(1, 40) i;`); err != nil {
		t.Fatal(err)
	}
	// The lag is 0 too while the inserts have not reached the ledger: wait for the rows.
	waitForState(t, "the derived rows equal their recomputation", runDone, func() (bool, string) {
		n := mismatches(t, pool, derivedMismatches)
		return n == 0, fmt.Sprintf("; %d rows differ", n)
	})
	waitCaughtUp(t, path, runDone)
	if r := stop(); r.code != ExitOK {
		t.Fatalf("run exited %d\n%s", r.code, r.stderr)
	}

	// While walflow is stopped: changes, the slot dropped and recreated, more changes. Only
	// those after the recreation reach the slot.
	if _, err := pool.Exec(ctx, `
		UPDATE posts SET title = 'changed while stopped', updated_at = now() WHERE id = 1;
		DELETE FROM posts WHERE id = 2;
		INSERT INTO comments (post_id, body) VALUES (3, 'while stopped'), (3, 'while stopped');
		DELETE FROM comments WHERE post_id = 4;
		INSERT INTO posts (title) VALUES ('created while stopped');`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO posts (title) VALUES ('after the new slot');
		INSERT INTO comments (post_id, body) VALUES (5, 'after the new slot'), (10, 'after the new slot');
		DELETE FROM comments WHERE post_id = 6;
		UPDATE posts SET title = 'retitled after the new slot', updated_at = now() WHERE id = 7;`); err != nil {
		t.Fatal(err)
	}

	// walflow refuses to resume, and says how to resync.
	r := runCLI(ctx, noEnv, "run", "--config", path)
	for _, want := range []string{"replication slot was recreated", "to resync: stop walflow; move the ledger directory aside",
		"start walflow again", "walflow operator reset NAME for each operator"} {
		if r.code == ExitOK || !strings.Contains(r.stderr, want) {
			t.Fatalf("run on the recreated slot: exit %d, want an error containing %q:\n%s", r.code, want, r.stderr)
		}
	}

	// The advice: move the ledger directory aside, start again, reset each operator.
	if err := os.Rename(filepath.Join(dir, "data"), filepath.Join(dir, "data.old")); err != nil {
		t.Fatal(err)
	}
	runDone, stop = startRun(t, path, addr)
	waitForOutput(t, runDone, []string{
		`(?m)^post_with_comments_counts +\d+ +\d+ +yes +0 +- +.*the checkpoint belongs to another ledger.*walflow operator reset post_with_comments_counts`,
		`(?m)^comment_totals +\d+ +\d+ +yes +0 +- +.*the checkpoint belongs to another ledger.*walflow operator reset comment_totals`,
		`walflow operator reset NAME`,
	}, "operator", "status", "--config", path)
	var after int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM post_with_comments_counts WHERE title LIKE '%after the new slot'`).Scan(&after); err != nil || after != 0 {
		t.Fatalf("halted operators applied %d events of the new ledger (%v)", after, err)
	}
	for _, name := range []string{"post_with_comments_counts", "comment_totals"} {
		r := runCLI(ctx, noEnv, "operator", "reset", name, "--config", path)
		if r.code != ExitOK || !strings.HasPrefix(r.stdout, "Reset "+name+" in ") {
			t.Fatalf("operator reset %s: exit %d\n%s%s", name, r.code, r.stdout, r.stderr)
		}
	}
	waitCaughtUp(t, path, runDone)
	// Live changes after the resets are applied too.
	if _, err := pool.Exec(ctx, `INSERT INTO comments (post_id, body) VALUES (1, 'after the reset');
		UPDATE posts SET title = 'retitled after the reset', updated_at = now() WHERE id = 3`); err != nil {
		t.Fatal(err)
	}
	waitForState(t, "the derived rows equal their recomputation", runDone, func() (bool, string) {
		n := mismatches(t, pool, derivedMismatches)
		return n == 0, fmt.Sprintf("; %d rows differ", n)
	})
	waitCaughtUp(t, path, runDone)
	if n := mismatches(t, pool, derivedMismatches); n != 0 {
		t.Fatalf("after the resync, %d derived rows differ from a recomputation", n)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM post_with_comments_counts`).Scan(&n); err != nil || n != 9 {
		t.Errorf("post_with_comments_counts has %d rows (%v), want one per post", n, err)
	}
	if r := stop(); r.code != ExitOK {
		t.Fatalf("run after the resync exited %d\n%s", r.code, r.stderr)
	}
}

// postTotalsMismatches counts the rows of post_comment_totals that differ from a
// recomputation from comments.
const postTotalsMismatches = `
WITH want AS (SELECT post_id AS id, count(*)::int AS n FROM comments GROUP BY post_id)
SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT id, n FROM post_comment_totals) missing) +
	(SELECT count(*) FROM (SELECT id, n FROM post_comment_totals EXCEPT SELECT * FROM want) extra)`

// TestTwoInstancesShareDatabase runs two walflows on one database, each with its own slot,
// ledger, operators and process status. Neither resets nor misreports the other's state,
// the commands select the configured slot's instance (or --instance), and both derived
// tables stay exact.
func TestTwoInstancesShareDatabase(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, pool := poolOnNewDatabase(t, blogSchema+derivedSchema+`CREATE TABLE post_comment_totals (id int PRIMARY KEY, n int NOT NULL)`)
	db := pool.Config().ConnConfig.Database
	slotA, slotB := db+"_a", db+"_b"
	pathA, _, addrA := instanceConfig(t, dsn, slotA, `  post_with_comments_counts:
    entities: [comments, posts]
    id: {comments: post_id, posts: id}
    delete_with: [posts]
`+seedQuery)
	pathB, _, addrB := instanceConfig(t, dsn, slotB, `  post_comment_totals:
    entities: [comments]
    id: {comments: post_id}
    query: |
      MERGE INTO post_comment_totals d USING (SELECT $1::int AS id, (SELECT count(*) FROM comments WHERE post_id = $1::int)::int AS n) s ON d.id = s.id
      WHEN MATCHED AND s.n = 0 THEN DELETE
      WHEN MATCHED THEN UPDATE SET n = s.n
      WHEN NOT MATCHED AND s.n > 0 THEN INSERT VALUES (s.id, s.n)
`)

	// A runs first and gets ahead, with its process status saved; then B starts.
	doneA, stopA := startRun(t, pathA, addrA)
	if _, err := pool.Exec(ctx, `
		INSERT INTO posts (title) SELECT 'post ' || i FROM generate_series(1, 10) i;
		INSERT INTO comments (post_id, body) SELECT 1 + i % 10, 'comment ' || i FROM generate_series(1, 60) i;`); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, pathA, doneA)
	waitFor(t, "A's process status is saved", doneA, func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM walflow.process_status_position WHERE position > 0`).Scan(&n)
		return err == nil && n == 1
	})
	doneB, stopB := startRun(t, pathB, addrB)
	// B's operator is new to rows that existed before its slot: backfill it, as for any
	// operator added to tables with data.
	if r := runCLI(ctx, noEnv, "operator", "backfill", "post_comment_totals", "--config", pathB); r.code != ExitOK {
		t.Fatalf("operator backfill on B: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	if _, err := pool.Exec(ctx, `
		INSERT INTO comments (post_id, body) SELECT 1 + i % 4, 'both ' || i FROM generate_series(1, 12) i;
		DELETE FROM comments WHERE post_id = 9;
		UPDATE posts SET title = 'retitled', updated_at = now() WHERE id = 2;
		DELETE FROM posts WHERE id = 10;`); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, pathA, doneA)
	waitCaughtUp(t, pathB, doneB)
	waitForState(t, "both derived tables equal their recomputation", doneA, func() (bool, string) {
		a, b := mismatches(t, pool, derivedMismatches), mismatches(t, pool, postTotalsMismatches)
		return a == 0 && b == 0, fmt.Sprintf("; %d and %d rows differ", a, b)
	})

	// Each instance's commands show its own operators, and name the other instance.
	for _, c := range []struct{ path, slot, own, other, otherSlot string }{
		{pathA, slotA, "post_with_comments_counts", "post_comment_totals", slotB},
		{pathB, slotB, "post_comment_totals", "post_with_comments_counts", slotA},
	} {
		r := runCLI(ctx, noEnv, "operator", "status", "--config", c.path)
		if r.code != ExitOK || !regexp.MustCompile(`(?m)^`+c.own+` +\d+ +0 +no +0 +- +$`).MatchString(r.stdout) ||
			strings.Contains(r.stdout, c.other) || strings.Contains(r.stdout, "removed or renamed") ||
			!strings.Contains(r.stdout, "instance: "+c.slot+" (the slot of ") ||
			!regexp.MustCompile(`(?m)^  `+c.otherSlot+`: 1 operators$`).MatchString(r.stdout) {
			t.Errorf("operator status of %s: exit %d\n%s%s", c.slot, r.code, r.stdout, r.stderr)
		}
		r = runCLI(ctx, noEnv, "status", "--config", c.path)
		if r.code != ExitOK || !regexp.MustCompile(`(?m)^operator `+c.own+` +position \d+, 0 behind the head$`).MatchString(r.stdout) || strings.Contains(r.stdout, c.other) {
			t.Errorf("status of %s: exit %d\n%s%s", c.slot, r.code, r.stdout, r.stderr)
		}
		// The other instance's operator is selected with --instance, not by default.
		r = runCLI(ctx, noEnv, "operator", "restart", c.other, "--config", c.path)
		if r.code != ExitUsage || !strings.Contains(r.stderr, `unknown operator "`+c.other+`"`) {
			t.Errorf("operator restart of the other instance's operator: exit %d\n%s", r.code, r.stderr)
		}
		r = runCLI(ctx, noEnv, "operator", "restart", c.other, "--config", c.path, "--instance", c.otherSlot)
		if r.code != ExitOK || !strings.HasPrefix(r.stdout, c.other+" is not halted") {
			t.Errorf("operator restart --instance %s: exit %d\n%s%s", c.otherSlot, r.code, r.stdout, r.stderr)
		}
	}
	// Each instance's process status is its own, at its own ledger's head.
	for _, c := range []struct{ path, slot string }{{pathA, slotA}, {pathB, slotB}} {
		waitFor(t, c.slot+"'s process status reaches its head", doneA, func() bool {
			st, r := statusJSON(t, c.path)
			var pos uint64
			err := pool.QueryRow(ctx, `SELECT position FROM walflow.process_status_position WHERE instance = $1`, c.slot).Scan(&pos)
			return r.code == ExitOK && err == nil && pos == st.LedgerHead
		})
	}
	ra, rb := stopA(), stopB()
	for _, r := range []result{ra, rb} {
		if r.code != ExitOK || strings.Contains(r.stderr, "resetting it") || strings.Contains(r.stderr, "operator halted") {
			t.Errorf("run exited %d; stderr:\n%s", r.code, r.stderr)
		}
	}
	if a, b := mismatches(t, pool, derivedMismatches), mismatches(t, pool, postTotalsMismatches); a != 0 || b != 0 {
		t.Errorf("after both stopped, %d and %d derived rows differ from a recomputation", a, b)
	}
}

// reset refuses to run before the slot exists (the backfill could miss changes made before
// the slot records them), and skip points an operator halted on another ledger to reset.
func TestOperatorResetAndSkipOnForeignLedger(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, pool := operatorDB(t)
	slot := pool.Config().ConnConfig.Database
	path, _, _ := instanceConfig(t, dsn, slot, seedOperators)
	r := runCLI(ctx, noEnv, "operator", "reset", "post_with_comments_counts", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "walflow: operator reset: slot "+slot+" does not exist; start walflow first") {
		t.Errorf("operator reset without the slot: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO walflow.operators (instance, name, position, halted, error)
		VALUES ($1, 'post_with_comments_counts', 122, true, 'operator post_with_comments_counts: operator: the checkpoint belongs to another ledger: ...')`, slot); err != nil {
		t.Fatal(err)
	}
	r = runCLI(ctx, noEnv, "operator", "skip", "post_with_comments_counts", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "halted on no event: its checkpoint belongs to another ledger, so there is none to skip; rebuild it with walflow operator reset post_with_comments_counts") {
		t.Errorf("operator skip of an operator halted on another ledger: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if s, err := operator.Statuses(ctx, pool, slot); err != nil || len(s) != 1 || !s[0].Halted || s[0].Position != 122 {
		t.Errorf("the refused skip changed the checkpoint: %+v, %v", s, err)
	}
	// With the slot, reset rebuilds the rows and starts the operator over.
	if _, err := pool.Exec(ctx, `INSERT INTO posts (title) VALUES ('a'), ('b'); INSERT INTO comments (post_id, body) VALUES (1, 'x')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.WithoutCancel(ctx), `SELECT pg_drop_replication_slot($1)`, slot) })
	r = runCLI(ctx, noEnv, "operator", "reset", "post_with_comments_counts", "--config", path, "--batch", "1")
	if r.code != ExitOK || !strings.Contains(r.stdout, "Reset post_with_comments_counts in ") {
		t.Fatalf("operator reset: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if s, err := operator.Statuses(ctx, pool, slot); err != nil || len(s) != 1 || s[0].Halted || s[0].Position != 0 || s[0].Error != "" {
		t.Errorf("after reset: %+v, %v; want position 0, not halted", s, err)
	}
	if n := mismatches(t, pool, derivedMismatches); n != 0 {
		t.Errorf("after reset, %d derived rows differ from a recomputation", n)
	}
}
