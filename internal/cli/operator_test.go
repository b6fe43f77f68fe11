package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
)

// derivedSchema is post_with_comments_counts's derived table, for blogSchema's posts (which lack body and
// inserted_at: the operator tests add them).
const derivedSchema = `
ALTER TABLE posts ADD COLUMN body text NOT NULL DEFAULT '', ADD COLUMN inserted_at timestamptz NOT NULL DEFAULT now();
CREATE TABLE post_with_comments_counts (id int PRIMARY KEY, title text, body text,
	inserted_at timestamptz, updated_at timestamptz, comments_count int);
ALTER TABLE post_with_comments_counts REPLICA IDENTITY FULL;`

// operatorConfigFile writes a configuration with post_with_comments_counts and comment_totals on
// dsn, and returns its path. extra is appended (top-level keys).
// seedQuery is the query of the operator post_with_comments_counts, a MERGE, indented for
// a YAML block.
const seedQuery = `
    query: |
      MERGE INTO post_with_comments_counts dest
      USING (
          SELECT p.id AS id, p.title AS title, p.body AS body, p.inserted_at AS inserted_at,
                 p.updated_at AS updated_at,
                 (SELECT COUNT(c.id) FROM comments c WHERE c.post_id = p.id) AS comments_count
          FROM posts p
          WHERE p.id = $1
      ) src ON src.id = dest.id
      WHEN NOT MATCHED THEN
        INSERT (id, title, body, inserted_at, updated_at, comments_count)
        VALUES (src.id, src.title, src.body, src.inserted_at, src.updated_at, src.comments_count)
      WHEN MATCHED THEN
        UPDATE SET title = src.title, body = src.body, inserted_at = src.inserted_at,
                   updated_at = src.updated_at, comments_count = src.comments_count;
`

func operatorConfigFile(t *testing.T, dsn, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	config := fmt.Sprintf(`database_url: %s
http:
  addr: ""
ledger:
  dir: data
tables:
  posts:
  comments:
    scopes: ["posts/{post_id}"]
  post_with_comments_counts:
operators:
  post_with_comments_counts:
    entities: [comments, posts]
    id: {comments: post_id, posts: id}
    delete_with: [posts]
%s  comment_totals:
    target: post_with_comments_counts
    entities: [comments]
    id: {comments: post_id}
    query: UPDATE post_with_comments_counts SET comments_count = (SELECT count(*) FROM comments WHERE post_id = $1) WHERE id = $1
%s`, dsn, seedQuery, extra)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// operatorDB is a fresh database with the blog, its derived table and walflow.operators,
// and a pool on it.
func operatorDB(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	dsn, pool := poolOnNewDatabase(t, blogSchema+derivedSchema)
	if err := operator.Migrate(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	return dsn, pool
}

// defaultInstance is the instance of operatorConfigFile's configuration, which names no
// slot.
const defaultInstance = "walflow"

// storedOperator reads an operator's row of walflow.operators.
func storedOperator(t *testing.T, pool *pgxpool.Pool, name string) operator.Status {
	t.Helper()
	all, err := operator.Statuses(t.Context(), pool, defaultInstance)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("walflow.operators has no %s: %+v", name, all)
	return operator.Status{}
}

// haltOperator records in walflow.operators that name halted on the event at failed, as a
// Runner does after its last retry.
func haltOperator(t *testing.T, pool *pgxpool.Pool, name string, failed int64, msg string) {
	t.Helper()
	_, err := pool.Exec(t.Context(), `INSERT INTO walflow.operators (instance, name, position, halted, error, failed_position)
		VALUES ('walflow', $1, $2, true, $3, $4)
		ON CONFLICT (instance, name) DO UPDATE SET position = $2, halted = true, error = $3, failed_position = $4`, name, failed-1, msg, failed)
	if err != nil {
		t.Fatal(err)
	}
}

func TestOperatorStatusRestartSkip(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, pool := operatorDB(t)
	path := operatorConfigFile(t, dsn, "")
	const failure = "query for post_with_comments_counts id 3: ERROR: division by zero (SQLSTATE 22012)"
	haltOperator(t, pool, "post_with_comments_counts", 41, failure)
	// A checkpoint left by an operator since removed from the file.
	if _, err := pool.Exec(ctx, `INSERT INTO walflow.operators (instance, name, position) VALUES ('walflow', 'old_counts', 7)`); err != nil {
		t.Fatal(err)
	}

	r := runCLI(ctx, noEnv, "operator", "status", "--config", path)
	if r.code != ExitOK {
		t.Fatalf("operator status: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, re := range []string{
		`(?m)^ledger head: unknown \(no walflow answers on http \(http.addr is off\) and the ledger \S+data does not exist yet\), so the lag is too$`,
		`(?m)^OPERATOR +POSITION +LAG +HALTED +PARKED +FAILED AT +ERROR$`,
		`(?m)^post_with_comments_counts +40 +- +yes +0 +41 +` + regexp.QuoteMeta(failure) + `$`,
		`(?m)^comment_totals +- +- +- +- +- +$`,
		`(?m)^old_counts\* +7 +- +no +0 +- +$`,
		`has not been started yet: walflow run starts it`,
		`\* not in \S+walflow.yaml: its checkpoint is left from an operator that was removed or renamed`,
		`walflow operator restart NAME +to retry the event it failed on`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("operator status output does not match %s:\n%s", re, r.stdout)
		}
	}

	r = runCLI(ctx, noEnv, "operator", "status", "--json", "--config", path)
	var doc operatorStatusDoc
	if err := json.Unmarshal([]byte(r.stdout), &doc); r.code != ExitOK || err != nil {
		t.Fatalf("operator status --json: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	if doc.LedgerHead != nil || len(doc.Operators) != 3 {
		t.Fatalf("operator status --json: %+v", doc)
	}
	if o := doc.Operators[0]; o.Name != "post_with_comments_counts" || o.Position != 40 || !o.Halted || o.Error != failure ||
		o.FailedPosition != 41 || !o.Configured || !o.Started || o.LagEvents != nil {
		t.Errorf("operator status --json: %+v", o)
	}
	if o := doc.Operators[1]; o.Name != "comment_totals" || o.Started || !o.Configured {
		t.Errorf("operator status --json: %+v", o)
	}
	if o := doc.Operators[2]; o.Name != "old_counts" || !o.Started || o.Configured || o.Position != 7 {
		t.Errorf("operator status --json: %+v", o)
	}
	if !strings.Contains(r.stdout, `"lag_events": null`) || !strings.Contains(r.stdout, `"failed_position": 41`) {
		t.Errorf("operator status --json keys:\n%s", r.stdout)
	}

	// Unknown names are usage errors that list the configured operators.
	for _, cmd := range []string{"restart", "skip", "backfill"} {
		r = runCLI(ctx, noEnv, "operator", cmd, "post_with_comment_counts", "--config", path)
		want := fmt.Sprintf(`walflow: operator %s: unknown operator "post_with_comment_counts" (did you mean post_with_comments_counts?); the operators in %s are post_with_comments_counts, comment_totals`, cmd, path)
		if r.code != ExitUsage || strings.TrimSpace(r.stderr) != want {
			t.Errorf("operator %s of an unknown name: exit %d\n%s\nwant\n%s", cmd, r.code, r.stderr, want)
		}
	}

	// Configured but never started: there is nothing to restart or skip.
	for _, cmd := range []string{"restart", "skip"} {
		r = runCLI(ctx, noEnv, "operator", cmd, "comment_totals", "--config", path)
		if r.code != ExitFailure || !strings.Contains(r.stderr, "walflow: operator "+cmd+": comment_totals has no checkpoint in walflow.operators for instance \"walflow\" yet: walflow run has not started it") {
			t.Errorf("operator %s of an operator never started: exit %d\n%s", cmd, r.code, r.stderr)
		}
	}

	// skip: past the failed event, with a warning that its effect is missing.
	r = runCLI(ctx, noEnv, "operator", "skip", "post_with_comments_counts", "--config", path)
	if r.code != ExitOK {
		t.Fatalf("operator skip: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if want := "Skipped position 41 of post_with_comments_counts: it resumes with the events after it.\nThat event had failed with: " + failure + "\n"; r.stdout != want {
		t.Errorf("operator skip printed\n%s\nwant\n%s", r.stdout, want)
	}
	if !strings.Contains(r.stderr, "walflow: warning: the effect of the event at position 41 was NOT applied, so rows of post_with_comments_counts it would have changed may be wrong; recompute them with walflow operator backfill post_with_comments_counts --config "+path) {
		t.Errorf("operator skip warned\n%s", r.stderr)
	}
	if s := storedOperator(t, pool, "post_with_comments_counts"); s.Halted || s.Position != 41 || s.Error != "" || s.FailedPosition != 0 {
		t.Errorf("after skip: %+v", s)
	}
	r = runCLI(ctx, noEnv, "operator", "skip", "post_with_comments_counts", "--config", path)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "walflow: operator skip: post_with_comments_counts is not halted (position 41); skip only moves a halted operator") {
		t.Errorf("operator skip of a running operator: exit %d\n%s", r.code, r.stderr)
	}

	// restart: the halt is cleared and the checkpoint stays, so the event is retried. The
	// name may come after the flags too.
	r = runCLI(ctx, noEnv, "operator", "restart", "post_with_comments_counts", "--config", path)
	if r.code != ExitOK || !strings.Contains(r.stdout, "post_with_comments_counts is not halted (position 41); nothing to restart.") {
		t.Errorf("operator restart of a running operator: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	haltOperator(t, pool, "post_with_comments_counts", 50, failure)
	r = runCLI(ctx, noEnv, "operator", "restart", "--config", path, "post_with_comments_counts")
	if r.code != ExitOK || !strings.HasPrefix(r.stdout, "Restarted post_with_comments_counts: it retries the event at position 50, where it halted") {
		t.Errorf("operator restart: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if s := storedOperator(t, pool, "post_with_comments_counts"); s.Halted || s.Position != 49 || s.Error != "" || s.FailedPosition != 0 {
		t.Errorf("after restart: %+v", s)
	}
}

// TestOperatorStatusBeforeRun: before walflow run first starts operators, the commands say
// walflow.operators is missing, with exit code 1.
func TestOperatorStatusBeforeRun(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	path := operatorConfigFile(t, dsn, "")
	for _, args := range [][]string{
		{"operator", "status", "--config", path},
		{"operator", "status", "--json", "--config", path},
		{"operator", "restart", "post_with_comments_counts", "--config", path},
		{"operator", "skip", "post_with_comments_counts", "--config", path},
	} {
		r := runCLI(ctx, noEnv, args...)
		want := fmt.Sprintf("walflow: %s %s: walflow.operators does not exist yet in the database of %s; walflow run creates it when it first runs with operators configured\n", args[0], args[1], path)
		if r.code != ExitFailure || r.stderr != want || r.stdout != "" {
			t.Errorf("walflow %s before walflow.operators exists: exit %d\nstdout: %s\nstderr: %s\nwant stderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr, want)
		}
	}
}

func TestOperatorUnreachable(t *testing.T) {
	t.Parallel()
	path := operatorConfigFile(t, "postgres://app:s3cret@127.0.0.1:1/app?connect_timeout=1", "")
	for _, cmd := range []string{"status", "restart", "skip"} {
		args := []string{"operator", cmd, "--config", path}
		if cmd != "status" {
			args = append(args, "post_with_comments_counts")
		}
		r := runCLI(t.Context(), noEnv, args...)
		if r.code != ExitFailure || !strings.HasPrefix(r.stderr, "walflow: operator "+cmd+": ") || strings.Count(r.stderr, "walflow: ") != 1 {
			t.Errorf("operator %s of an unreachable database: exit %d\n%s", cmd, r.code, r.stderr)
		}
		if strings.Contains(r.stdout+r.stderr, "s3cret") {
			t.Errorf("operator %s shows the password:\n%s", cmd, r.stderr)
		}
	}
}

func TestOperatorWithoutOperators(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	if err := os.WriteFile(path, []byte("database_url: postgres://app@127.0.0.1:1/app\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t.Context(), noEnv, "operator", "restart", "counts", "--config", path)
	if r.code != ExitUsage || !strings.Contains(r.stderr, "walflow: operator restart: "+path+" configures no operators; add an operators: block") {
		t.Errorf("operator restart without operators: exit %d\n%s", r.code, r.stderr)
	}
}

// derivedMismatches counts the rows where post_with_comments_counts differs from a
// recomputation from posts and comments, both ways.
const derivedMismatches = `
WITH want AS (
	SELECT p.id, p.title, p.body, p.inserted_at, p.updated_at,
		(SELECT count(*) FROM comments c WHERE c.post_id = p.id)::int AS comments_count
	FROM posts p
), got AS (
	SELECT id, title, body, inserted_at, updated_at, comments_count FROM post_with_comments_counts
)
SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM got) missing) +
	(SELECT count(*) FROM (SELECT * FROM got EXCEPT SELECT * FROM want) extra)`

// operatorStatusJSON runs walflow operator status --json and decodes its output.
func operatorStatusJSON(t *testing.T, path string) (operatorStatusDoc, result) {
	t.Helper()
	r := runCLI(t.Context(), noEnv, "operator", "status", "--json", "--config", path)
	var doc operatorStatusDoc
	if r.code == ExitOK {
		if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
			t.Fatalf("operator status --json printed %q: %v", r.stdout, err)
		}
	}
	return doc, r
}

// operatorByName finds an operator in a status document.
func (d *operatorStatusDoc) operator(name string) operatorStatus {
	for _, o := range d.Operators {
		if o.Name == name {
			return o
		}
	}
	return operatorStatus{}
}

// TestOperatorRunAndBackfill runs walflow with post_with_comments_counts and one whose query fails:
// on a missing table walflow refuses to start; with the table there but refusing the rows,
// the failing operator halts, and is restarted from the command line while walflow runs.
// Then it backfills the rows that existed before walflow started.
func TestOperatorRunAndBackfill(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	// 60 posts and 300 comments exist before walflow starts: only a backfill derives them.
	dsn, pool := poolOnNewDatabase(t, blogSchema+derivedSchema+`
		INSERT INTO posts (title, body) SELECT 'post ' || i, 'body ' || i FROM generate_series(1, 60) i;
		INSERT INTO comments (post_id, body) SELECT 1 + i % 60, 'comment ' || i FROM generate_series(1, 300) i;`)
	path, dir, addr := blogRunConfig(t, dsn, pool.Config().ConnConfig.Database, "warn", `  post_with_comments_counts:
operators:
  post_with_comments_counts:
    entities: [comments, posts]
    id: {comments: post_id, posts: id}
    delete_with: [posts]
`+seedQuery+`  comment_audit:
    entities: [comments]
    id: {comments: post_id}
    query: INSERT INTO comment_audit (post_id) VALUES ($1::int)
operator_defaults:
  retry: {min: 10ms, max: 10ms, max_retries: 0}
`)

	// A query on a missing table is found when walflow starts, not at the first event.
	r := runCLI(ctx, noEnv, "run", "--config", path)
	if want := `walflow: operator comment_audit: its query does not prepare: ERROR: relation "comment_audit" does not exist (SQLSTATE 42P01); at line 1, column 13 of the statement`; r.code != ExitFailure || !strings.Contains(r.stderr, want) {
		t.Fatalf("run with a query on a missing table: exit %d, want 1 and %s\nstderr:\n%s", r.code, want, r.stderr)
	}
	// With the table there, every insert breaks its check.
	if _, err := pool.Exec(ctx, `CREATE TABLE comment_audit (post_id int NOT NULL CONSTRAINT audit_check CHECK (post_id < 0))`); err != nil {
		t.Fatal(err)
	}

	runDone, stop := startRun(t, path, addr)

	// Live changes: new comments on posts 1 to 5, a retitled post, a deleted one.
	if _, err := pool.Exec(ctx, `
		INSERT INTO comments (post_id, body) SELECT 1 + i % 5, 'live ' || i FROM generate_series(1, 20) i;
		UPDATE posts SET title = 'retitled', updated_at = now() WHERE id = 7;
		DELETE FROM posts WHERE id = 60;`); err != nil {
		t.Fatal(err)
	}
	// comment_audit refuses the rows: its operator halts on its first event, while
	// post_with_comments_counts catches up with the head.
	var doc operatorStatusDoc
	waitFor(t, "comment_audit halts and post_with_comments_counts catches up", runDone, func() bool {
		var r result
		doc, r = operatorStatusJSON(t, path)
		seed, audit := doc.operator("post_with_comments_counts"), doc.operator("comment_audit")
		return r.code == ExitOK && doc.LedgerHead != nil && audit.Halted &&
			seed.LagEvents != nil && *seed.LagEvents == 0 && seed.Position == *doc.LedgerHead
	})
	audit := doc.operator("comment_audit")
	if !strings.Contains(audit.Error, `violates check constraint "audit_check"`) || audit.FailedPosition == 0 ||
		audit.Position != audit.FailedPosition-1 || *audit.LagEvents != uint64(*doc.LedgerHead-audit.Position) ||
		!strings.HasPrefix(doc.LedgerHeadFrom, "the running walflow at http://"+addr) {
		t.Errorf("operator status while walflow runs: %+v", doc)
	}
	// post_with_comments_counts's own writes to its table reach the ledger after it
	// caught up, moving the head on; it is at the head again once it has passed them.
	waitForOutput(t, runDone, []string{
		`(?m)^ledger head: position \d+ \(from the running walflow at http://` + regexp.QuoteMeta(addr) + `/status\)$`,
		`(?m)^post_with_comments_counts +\d+ +0 +no +0 +- +$`,
		`(?m)^comment_audit +\d+ +\d+ +yes +0 +\d+ +.*violates check constraint "audit_check"`,
	}, "operator", "status", "--config", path)
	waitForOutput(t, runDone, []string{
		`(?m)^operator post_with_comments_counts +position \d+, 0 behind the head$`,
		`(?m)^operator comment_audit +position \d+, \d+ behind the head, HALTED: see walflow operator status$`,
	}, "status", "--config", path)
	// The live path derived only the posts that changed.
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM post_with_comments_counts`).Scan(&n); err != nil || n != 6 {
		t.Errorf("post_with_comments_counts has %d rows (%v), want the 6 posts changed live", n, err)
	}

	// Fix the cause and restart: the running walflow resumes the operator.
	if _, err := pool.Exec(ctx, `ALTER TABLE comment_audit DROP CONSTRAINT audit_check`); err != nil {
		t.Fatal(err)
	}
	r = runCLI(ctx, noEnv, "operator", "restart", "comment_audit", "--config", path)
	if r.code != ExitOK || !strings.Contains(r.stdout, fmt.Sprintf("Restarted comment_audit: it retries the event at position %d", audit.FailedPosition)) {
		t.Fatalf("operator restart: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	waitFor(t, "comment_audit catches up after its restart", runDone, func() bool {
		doc, r = operatorStatusJSON(t, path)
		a := doc.operator("comment_audit")
		return r.code == ExitOK && !a.Halted && a.LagEvents != nil && *a.LagEvents == 0
	})
	// 20 inserted comments, and the 5 of post 60 its delete cascaded to.
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM comment_audit`).Scan(&n); err != nil || n != 25 {
		t.Errorf("comment_audit has %d rows (%v), want one per live comment event", n, err)
	}

	if r := stop(); r.code != ExitOK {
		t.Fatalf("run exited %d\nstderr:\n%s", r.code, r.stderr)
	}
	// Stopped: the head comes from the ledger, and both operators are caught up.
	doc, r = operatorStatusJSON(t, path)
	if r.code != ExitOK || doc.LedgerHead == nil || doc.LedgerHeadFrom != "the ledger "+filepath.Join(dir, "data") {
		t.Fatalf("operator status after run: exit %d, %+v\n%s", r.code, doc, r.stderr)
	}
	for _, o := range doc.Operators {
		if o.Halted || o.LagEvents == nil || *o.LagEvents != 0 || o.Position != *doc.LedgerHead {
			t.Errorf("operator status after run: %s at %d of %d: %+v", o.Name, o.Position, *doc.LedgerHead, o)
		}
	}
	// status, stopped, reads the same stored positions (not the 0 of a runner not started).
	st, sr := statusJSON(t, path)
	if len(st.Operators) != 2 {
		t.Fatalf("status --json after run: exit %d, %+v\n%s", sr.code, st, sr.stderr)
	}
	for _, o := range st.Operators {
		if want := doc.operator(o.Name); o.Position == 0 || o.Position != want.Position || o.Halted != want.Halted {
			t.Errorf("status --json after run: %s at %d, halted %v; operator status says %d, halted %v", o.Name, o.Position, o.Halted, want.Position, want.Halted)
		}
	}
	sr = runCLI(ctx, noEnv, "status", "--config", path)
	if re := fmt.Sprintf(`(?m)^operator comment_audit +position %d, 0 behind the head$`, doc.operator("comment_audit").Position); !regexp.MustCompile(re).MatchString(sr.stdout) {
		t.Errorf("status after run does not match %s:\n%s", re, sr.stdout)
	}

	if err := pool.QueryRow(ctx, derivedMismatches).Scan(&n); err != nil || n == 0 {
		t.Fatalf("before the backfill, %d derived rows differ from a recomputation (%v); want some", n, err)
	}
	r = runCLI(ctx, noEnv, "operator", "backfill", "post_with_comments_counts", "--config", path, "--batch", "25")
	if r.code != ExitOK {
		t.Fatalf("operator backfill: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if !regexp.MustCompile(`^Backfilled post_with_comments_counts in [0-9.]+m?s: every post_with_comments_counts row was recomputed from comments and posts\.\n$`).MatchString(r.stdout) {
		t.Errorf("operator backfill printed %q", r.stdout)
	}
	if err := pool.QueryRow(ctx, derivedMismatches).Scan(&n); err != nil || n != 0 {
		t.Errorf("after the backfill, %d derived rows differ from a recomputation (%v)", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM post_with_comments_counts`).Scan(&n); err != nil || n != 59 {
		t.Errorf("post_with_comments_counts has %d rows (%v), want one per post", n, err)
	}
	// Not a terminal: plain lines, no bar, no carriage return, no colour.
	if strings.ContainsAny(r.stderr, "\r\x1b[") {
		t.Errorf("backfill progress off a terminal has terminal controls: %q", r.stderr)
	}
	for _, re := range []string{
		`(?m)^post_with_comments_counts  comments  0/59  0\.0%  0/s  ETA \?$`,
		`(?m)^post_with_comments_counts  comments  59/59  100\.0%  [0-9,]+/s  done in [0-9.]+m?s$`,
		`(?m)^post_with_comments_counts  posts  59/59  100\.0%  [0-9,]+/s  done in [0-9.]+m?s$`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stderr) {
			t.Errorf("backfill progress does not match %s:\n%s", re, r.stderr)
		}
	}

	// Run again from the start: still exact.
	r = runCLI(ctx, noEnv, "operator", "backfill", "--restart", "post_with_comments_counts", "--config", path)
	if r.code != ExitOK {
		t.Fatalf("operator backfill --restart: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := pool.QueryRow(ctx, derivedMismatches).Scan(&n); err != nil || n != 0 {
		t.Errorf("after backfill --restart, %d derived rows differ from a recomputation (%v)", n, err)
	}
	r = runCLI(ctx, noEnv, "operator", "backfill", "post_with_comments_counts", "--config", path, "--batch", "0")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "walflow: operator backfill: --batch 0 is not a batch size") {
		t.Errorf("operator backfill --batch 0: exit %d\n%s", r.code, r.stderr)
	}
}
