package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/internal/pgtest"
)

// cliCase is a command line and what it must give: an exit code, and substrings of its
// standard output and error.
type cliCase struct {
	args   []string
	code   int
	stdout string // substring
	stderr string // substring
}

// runCLICases runs each case as a parallel subtest, and checks too that a failing command
// prints its error exactly once.
func runCLICases(t *testing.T, tests []cliCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t.Context(), noEnv, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout, tt.stdout) || !strings.Contains(r.stderr, tt.stderr) {
				t.Fatalf("walflow %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s\nwant stdout with %q and stderr with %q",
					strings.Join(tt.args, " "), r.code, tt.code, r.stdout, r.stderr, tt.stdout, tt.stderr)
			}
			if tt.code != ExitOK && strings.Count(r.stderr, "walflow: ") != 1 {
				t.Errorf("the error is not printed exactly once:\n%s", r.stderr)
			}
		})
	}
}

// blogRunConfig writes, in a directory of its own, the configuration of a walflow run of
// the blog on dsn and slot: its ledger in data, HTTP on a free address, logs at logLevel,
// status every 200ms, the tables posts and comments (scoped by post), then extra (more
// tables, then top-level keys). It returns the file, its directory and the HTTP address.
func blogRunConfig(t *testing.T, dsn, slot, logLevel, extra string) (path, dir, addr string) {
	t.Helper()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	path = filepath.Join(dir, "walflow.yaml")
	config := fmt.Sprintf(`database_url: %s
slot: %s
ledger:
  dir: data
http:
  addr: %s
log:
  level: %s
status_interval: 200ms
tables:
  posts:
  comments:
    scopes: ["posts/{post_id}"]
%s`, dsn, slot, addr, logLevel, extra)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, dir, addr
}

// poolOnNewDatabase is a fresh database, with schema run in it, and a pool on it closed
// when the test ends.
func poolOnNewDatabase(t *testing.T, schema string) (dsn string, pool *pgxpool.Pool) {
	t.Helper()
	dsn = pgtest.NewDatabase(t)
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if schema != "" {
		if _, err := pool.Exec(t.Context(), schema); err != nil {
			t.Fatal(err)
		}
	}
	return dsn, pool
}

// pollUntil polls cond every 20ms until it holds, and fails the test after within, or
// when ended yields a reason first.
func pollUntil(t *testing.T, what string, within time.Duration, ended func() (string, bool), cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if why, ok := ended(); ok {
			t.Fatalf("%s while waiting until %s", why, what)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// notEnded is the ended of a pollUntil that waits on no process.
func notEnded() (string, bool) { return "", false }

// runEngineInTest runs eng in the background until stop is called or the test ends. until
// polls a condition as pollUntil does, failing the test when Run returns meanwhile (who
// names the engine in that message); stop cancels Run and returns its error, the same
// error on every call.
func runEngineInTest(t *testing.T, eng *walflow.Engine, who string, within time.Duration) (until func(what string, cond func() bool), stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- eng.Run(ctx) }()
	var (
		once   sync.Once
		runErr error
		done   bool
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-ran
			done = true
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	ended := func() (string, bool) {
		if done {
			return "", false // stopped on purpose: the condition may be about the stop
		}
		select {
		case err := <-ran:
			ran <- err // for stop
			return fmt.Sprintf("%s stopped (%v)", who, err), true
		default:
			return "", false
		}
	}
	until = func(what string, cond func() bool) {
		t.Helper()
		pollUntil(t, what, within, ended, cond)
	}
	return until, stop
}

// writeBlogChanges makes the 7 changes of the blog (blogSchema) the index tests read back:
// 1, 2: posts 1 and 2; 3, 4, 5: comments 1 (post 1), 2 (post 2), 3 (post 1); 6: comment
// 3 moves to post 2; 7: comment 1 is deleted.
func writeBlogChanges(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	for _, sql := range []string{
		`INSERT INTO posts (title) VALUES ('a'), ('b')`,
		`INSERT INTO comments (post_id, body) VALUES (1, 'x'), (2, 'y'), (1, 'z')`,
		`UPDATE comments SET post_id = 2 WHERE body = 'z'`,
		`DELETE FROM comments WHERE body = 'x'`,
	} {
		if _, err := conn.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
}

// startOneNATS starts one NATS server with JetStream, shut down when the test ends.
func startOneNATS(t *testing.T) *cluster.LocalCluster {
	t.Helper()
	lc, err := cluster.StartLocalCluster(t.Context(), t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lc.Shutdown)
	return lc
}

// quietEngineConfig loads the configuration at path as walflow run does, and returns its
// engine's configuration with a logger that discards.
func quietEngineConfig(t *testing.T, path string) walflow.Config {
	t.Helper()
	c, err := loadConfig(path, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.Engine
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}
