package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// result is what a command printed and returned.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs a walflow command line in-process.
func runCLI(ctx context.Context, getenv func(string) string, args ...string) result {
	var stdout, stderr syncbuf.Buffer
	code := run(ctx, &env{stdout: &stdout, stderr: &stderr, getenv: getenv}, args)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// noEnv is a getenv with nothing set.
func noEnv(string) string { return "" }

func TestCommandLine(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "walflow.yaml")
	tests := []cliCase{
		{args: nil, code: ExitUsage, stderr: "walflow: no command given"},
		{args: []string{"help"}, code: ExitOK, stdout: "Commands:\n  run "},
		{args: []string{"-h"}, code: ExitOK, stdout: "walflow demo"},
		{args: []string{"--help"}, code: ExitOK, stdout: "walflow help COMMAND"},
		{args: []string{"help", "run"}, code: ExitOK, stdout: "Usage: walflow run [--config FILE]"},
		{args: []string{"help", "nope"}, code: ExitUsage, stderr: `walflow: help: unknown command "nope"`},
		{args: []string{"run", "-h"}, code: ExitOK, stdout: "--config FILE\n"},
		{args: []string{"status", "--help"}, code: ExitOK, stdout: "--json"},
		{args: []string{"demo", "-h"}, code: ExitOK, stdout: "--duration D\n"},
		{args: []string{"version"}, code: ExitOK, stdout: "walflow "},
		{args: []string{"--version"}, code: ExitOK, stdout: "walflow "},
		{args: []string{"rnu"}, code: ExitUsage, stderr: `walflow: unknown command "rnu"; did you mean run?`},
		{args: []string{"--config", "x", "run"}, code: ExitUsage, stderr: "walflow: flag --config comes before a command"},
		{args: []string{"run", "--nope"}, code: ExitUsage, stderr: "walflow: run: flag provided but not defined: -nope; see walflow help run"},
		{args: []string{"run", "extra"}, code: ExitUsage, stderr: `walflow: run: unexpected argument "extra"`},
		{args: []string{"run", "--config", missing}, code: ExitUsage, stderr: "walflow: " + missing + ": no such file"},
		{args: []string{"status", "--config", missing}, code: ExitUsage, stderr: "no such file"},
		{args: []string{"demo", "--duration", "-1s"}, code: ExitUsage, stderr: "--duration -1s is negative"},
		{args: []string{"demo", "--duration", "soon"}, code: ExitUsage, stderr: `invalid value "soon" for flag -duration`},
		{args: []string{"demo", "--kill-every", "5s"}, code: ExitUsage, stderr: "--kill-every applies to --cluster only"},
		{args: []string{"demo", "--cluster", "--keep"}, code: ExitUsage, stderr: "--keep does not apply with --cluster"},
		{args: []string{"demo", "--cluster", "--kill-every", "-5s"}, code: ExitUsage, stderr: "not negative ones"},
		{args: []string{"help"}, code: ExitOK, stdout: "\n  operator  Show, restart, skip or backfill the configured operators.\n"},
		{args: []string{"operator"}, code: ExitUsage, stderr: "walflow: operator: no command given; the operator commands are status, restart, skip, backfill"},
		{args: []string{"operator", "--help"}, code: ExitOK, stdout: "Usage: walflow operator COMMAND [flags]"},
		{args: []string{"help", "operator"}, code: ExitOK, stdout: "  backfill  Recompute every derived row"},
		{args: []string{"help", "operator", "backfill"}, code: ExitOK, stdout: "Usage: walflow operator backfill NAME [--config FILE] [--batch N] [--restart]"},
		{args: []string{"help", "operator", "skip", "x"}, code: ExitUsage, stderr: `walflow: help: operator skip has no command "x"`},
		{args: []string{"help", "operator", "stat"}, code: ExitUsage, stderr: `walflow: help: unknown command "operator stat"; the operator commands are status, restart, skip, backfill`},
		{args: []string{"operator", "status", "-h"}, code: ExitOK, stdout: "--json"},
		{args: []string{"operator", "stats"}, code: ExitUsage, stderr: `walflow: operator: unknown command "stats"; did you mean status?`},
		{args: []string{"operator", "--config", "x"}, code: ExitUsage, stderr: "walflow: operator: flag --config comes before a command"},
		{args: []string{"operator", "restart"}, code: ExitUsage, stderr: "walflow: operator restart: missing NAME; write walflow operator restart NAME [--config FILE]"},
		{args: []string{"operator", "skip", "--config", missing}, code: ExitUsage, stderr: "walflow: operator skip: missing NAME"},
		{args: []string{"operator", "restart", "a", "b"}, code: ExitUsage, stderr: `walflow: operator restart: unexpected argument "b"`},
		{args: []string{"operator", "status", "extra"}, code: ExitUsage, stderr: `walflow: operator status: unexpected argument "extra"`},
		{args: []string{"operator", "backfill", "x", "--batch", "many"}, code: ExitUsage, stderr: `walflow: operator backfill: invalid value "many" for flag -batch`},
		{args: []string{"operator", "backfill", "x", "--batch", "-1", "--config", missing}, code: ExitUsage, stderr: "walflow: operator backfill: --batch -1 is not a batch size"},
		{args: []string{"operator", "status", "--config", missing}, code: ExitUsage, stderr: "walflow: " + missing + ": no such file"},
		{args: []string{"operator", "restart", "x", "--config", missing}, code: ExitUsage, stderr: "no such file"},
		{args: []string{"operator", "restart", "--", "-x", "--config"}, code: ExitUsage, stderr: `walflow: operator restart: unexpected argument "--config"`},
	}
	runCLICases(t, tests)
}

const blogSchema = `
CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE comments (id serial PRIMARY KEY, post_id int NOT NULL REFERENCES posts ON DELETE CASCADE, body text NOT NULL,
	updated_at timestamptz NOT NULL DEFAULT now());
ALTER TABLE posts REPLICA IDENTITY FULL;
ALTER TABLE comments REPLICA IDENTITY FULL;`

// httpGet fetches url without keeping a connection (and its goroutines) alive.
func httpGet(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// statusJSON runs walflow status --json and decodes its output.
func statusJSON(t *testing.T, path string) (walflow.Status, result) {
	t.Helper()
	r := runCLI(t.Context(), noEnv, "status", "--config", path, "--json")
	var st walflow.Status
	if r.code == ExitOK {
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("status --json printed %q: %v", r.stdout, err)
		}
	}
	return st, r
}

// waitFor polls cond every 20ms until it holds, failing the test after a deadline or when
// the running command ends.
func waitFor(t *testing.T, what string, runDone <-chan result, cond func() bool) {
	t.Helper()
	waitForState(t, what, runDone, func() (bool, string) { return cond(), "" })
}

// waitForState is waitFor with a condition that also describes the state it saw, shown
// if it never holds.
func waitForState(t *testing.T, what string, runDone <-chan result, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		select {
		case r := <-runDone:
			t.Fatalf("walflow run ended (exit %d) while waiting until %s\nstderr:\n%s", r.code, what, r.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s%s", what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitForOutput runs the command args until its standard output matches every regular
// expression in res, and fails the test with the last output if it does not within a minute.
func waitForOutput(t *testing.T, runDone <-chan result, res []string, args ...string) {
	t.Helper()
	what := fmt.Sprintf("walflow %s prints %q", strings.Join(args, " "), res)
	waitForState(t, what, runDone, func() (bool, string) {
		r := runCLI(t.Context(), noEnv, args...)
		for _, re := range res {
			if !regexp.MustCompile(re).MatchString(r.stdout) {
				return false, fmt.Sprintf("; last output (exit %d):\n%s%s", r.code, r.stdout, r.stderr)
			}
		}
		return true, ""
	})
}

func TestRunAndStatus(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	slot := pc.Database // unique per test
	path, dir, addr := blogRunConfig(t, dsn, slot, "warn", "")

	// Before the first run: no engine, no ledger directory, no slot.
	st, r := statusJSON(t, path)
	if r.code != ExitOK || st.Slot != slot || st.SlotExists || st.LedgerHead != 0 {
		t.Fatalf("status before run: exit %d, %+v\nstderr: %s", r.code, st, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("status created the ledger directory (%v)", err)
	}
	r = runCLI(ctx, noEnv, "status", "--config", path)
	if r.code != ExitOK || !strings.Contains(r.stdout, "walflow is not running") || !strings.Contains(r.stdout, "does not exist: walflow run creates it") {
		t.Errorf("status before run: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	runDone, stop := startRun(t, path, addr)
	base := "http://" + addr
	// A second walflow run on the same ledger names the directory and the process holding
	// it: this one, as both run in the test's process.
	second := runCLI(ctx, noEnv, "run", "--config", path)
	wantSecond := fmt.Sprintf("walflow: open the engine: ledger: the directory %s is in use by process %d (%s); a ledger directory serves one walflow at a time: stop that process first, or give this one another directory\n",
		filepath.Join(dir, "data"), os.Getpid(), strings.Join(os.Args, " "))
	if second.code != ExitFailure || !strings.HasSuffix(second.stderr, wantSecond) {
		t.Errorf("a second walflow run: exit %d\nstderr:\n%s\nwant it to end with:\n%s", second.code, second.stderr, wantSecond)
	}
	if _, err := conn.Exec(ctx, `
		INSERT INTO posts (title) VALUES ('a'), ('b');
		INSERT INTO comments (post_id, body) VALUES (1, 'x');
		UPDATE comments SET post_id = 2;`); err != nil {
		t.Fatal(err)
	}
	// The engine measures the slot every status_interval, so the first measures may predate
	// the slot, or its streaming.
	waitFor(t, "status --json shows ledger_head 4 and the active slot", runDone, func() bool {
		st, r = statusJSON(t, path)
		return r.code == ExitOK && st.LedgerHead >= 4 && st.SlotExists && st.SlotActive
	})
	if !st.Streaming || !st.SlotExists || st.Slot != slot || st.EventsAppended < 4 || st.LastCommitLSN == 0 {
		t.Errorf("status from the running engine: %+v", st)
	}
	r = runCLI(ctx, noEnv, "status", "--config", path)
	for _, want := range []string{"walflow is running (status from " + base + "/status)", "slot ", slot, "(active", "ledger head", "position 4", "streaming ", "yes"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, r.stdout)
		}
	}

	code, metrics, err := httpGet(ctx, base+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/metrics: %d, %v", code, err)
	}
	for _, m := range []string{"walflow_events_appended_total 4", "walflow_ledger_head_position 4", "walflow_slot_lag_bytes", "walflow_replication_connected 1"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}

	r = stop()
	if r.code != ExitOK {
		t.Fatalf("run exited %d after Ctrl-C\nstderr:\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "level=ERROR") {
		t.Errorf("run logged errors:\n%s", r.stderr)
	}

	// After the run: status reads the ledger it left and the slot, inactive once PostgreSQL's
	// walsender has noticed the closed connection and exited (a moment after run returned).
	waitFor(t, "the slot is inactive", nil, func() bool {
		st, r = statusJSON(t, path)
		return r.code != ExitOK || !st.SlotActive
	})
	if r.code != ExitOK || st.LedgerHead != 4 || !st.SlotExists || st.SlotActive || st.Streaming {
		t.Errorf("status after run: exit %d, %+v\nstderr: %s", r.code, st, r.stderr)
	}
	r = runCLI(ctx, noEnv, "status", "--config", path)
	if !strings.Contains(r.stdout, "walflow is not running (ledger "+filepath.Join(dir, "data")) || !strings.Contains(r.stdout, "inactive") {
		t.Errorf("status after run:\n%s", r.stdout)
	}
}

func TestRunLogsNoPassword(t *testing.T) {
	t.Parallel()
	// An unreachable server: run logs its start, fails to connect and is stopped.
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	config := "database_url: postgres://app:s3cret@127.0.0.1:1/app?connect_timeout=1\nhttp:\n  addr: \"\"\nlog: {level: debug}\n"
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	r := runCLI(ctx, noEnv, "run", "--config", path)
	if !strings.Contains(r.stderr, "walflow starting") || !strings.Contains(r.stderr, "app:xxxxx@127.0.0.1") {
		t.Errorf("run did not log its start with the redacted URL:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, "s3cret") {
		t.Errorf("run logged the password:\n%s", r.stderr)
	}
}

func TestDemo(t *testing.T) {
	t.Parallel()
	r := runCLI(t.Context(), noEnv, "demo", "--duration", "8s")
	if r.code != ExitOK {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"postgres://postgres@127.0.0.1:", "/blog?sslmode=disable", "/metrics", "Removed the cluster and the ledger."} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	for _, table := range []string{"posts", "comments"} {
		for _, typ := range []string{"insert", "update", "delete"} {
			line := regexp.MustCompile(`(?m)^#\d+ +[0-9A-F]+/[0-9A-F]+ +` + table + ` +` + typ + `  id=\d+.*channels: ` + table + `, ` + table + `/\d+`)
			if !line.MatchString(r.stdout) {
				t.Errorf("demo printed no %s %s line", table, typ)
			}
		}
	}
	if !regexp.MustCompile(`(?m)comments +update +id=\d+ +post_id: \d+ → \d+ .*posts/\d+/comments, posts/\d+/comments$`).MatchString(r.stdout) {
		t.Error("demo printed no comment moving between posts")
	}
	// The operator's derived rows change right after the comments and posts they count.
	for _, re := range []string{
		`(?m)^#\d+ +\S+ +post_with_comments_counts +insert +id=(\d+) +title=".*comments_count=0 +channels: post_with_comments_counts, post_with_comments_counts/\d+$`,
		`(?m)^#\d+ +\S+ +comments +insert +id=\d+ +post_id=(\d+) .*\n#\d+ +\S+ +post_with_comments_counts +update +id=\d+ +comments_count: 0 → 1 `,
		`(?m)^#\d+ +\S+ +post_with_comments_counts +update +id=\d+ +title: ".*" → ".*" +channels: `,
		`(?m)^#\d+ +\S+ +post_with_comments_counts +delete +id=\d+ +channels: `,
		`, the operator post_with_comments_counts applied through \d+`,
	} {
		if !regexp.MustCompile(re).MatchString(r.stdout) {
			t.Errorf("demo output does not match %s", re)
		}
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
}

// TestDemoWithoutPostgres runs alone (t.Setenv): without server binaries, demo fails with
// the install command and exit code 1.
func TestDemoWithoutPostgres(t *testing.T) {
	t.Setenv(pgtest.BinDirEnv, t.TempDir())
	r := runCLI(t.Context(), noEnv, "demo", "--duration", "1s")
	if r.code != ExitFailure || !strings.Contains(r.stderr, "walflow: demo: ") || !strings.Contains(r.stderr, pgtest.InstallCommand()) {
		t.Fatalf("demo without binaries: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

func TestStatusUnreachable(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	config := "database_url: postgres://app:s3cret@127.0.0.1:1/app?connect_timeout=1\nhttp:\n  addr: \"\"\n"
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t.Context(), noEnv, "status", "--config", path)
	if r.code != ExitFailure || !regexp.MustCompile(`(?m)^slot +walflow  \(could not be read; the error follows\)$`).MatchString(r.stdout) ||
		!strings.HasPrefix(r.stderr, "walflow: status: slot walflow: connect to read the slot: ") || strings.Contains(r.stderr, "\nwalflow: ") {
		t.Errorf("status of an unreachable database: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, "s3cret") {
		t.Error("status shows the password")
	}
	// The JSON carries the same error, ready to show: the CLI edits no error text.
	r = runCLI(t.Context(), noEnv, "status", "--json", "--config", path)
	var st walflow.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != ExitFailure ||
		!strings.HasPrefix(st.SlotError, "connect to read the slot: ") || !strings.Contains(r.stderr, "slot walflow: "+st.SlotError) {
		t.Errorf("status --json of an unreachable database: exit %d, %v\nstdout:\n%s\nstderr:\n%s", r.code, err, r.stdout, r.stderr)
	}
}
