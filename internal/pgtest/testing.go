package pgtest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

var (
	sharedMu      sync.Mutex
	sharedCluster *Cluster
	dbCounter     atomic.Uint64
)

// Main starts one cluster for the test package, runs the tests, stops the
// cluster, checks that no goroutines leaked, and exits. Call it from
// TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m, nil) }
//
// opts are passed to [Start]. If the cluster cannot be started, Main prints
// why and exits with status 1 without running any test.
func Main(m *testing.M, opts *Options) {
	os.Exit(runMain(m, opts))
}

// runMain is Main without the exit; it deliberately uses no defers.
func runMain(m *testing.M, opts *Options) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest.Main: cannot start PostgreSQL: %v\n", err)
		return 1
	}
	setShared(c)

	code := m.Run()

	setShared(nil)
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Minute)
	err = c.Stop(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest.Main: stopping PostgreSQL: %v\n", err)
		code = max(code, 1)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest.Main: goroutines leaked after the tests: %v\n", err)
			code = 1
		}
	}
	return code
}

func setShared(c *Cluster) {
	sharedMu.Lock()
	sharedCluster = c
	sharedMu.Unlock()
}

// Shared returns the package cluster started by [Main]. It fails the test if
// Main is not used in the package's TestMain.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	sharedMu.Lock()
	c := sharedCluster
	sharedMu.Unlock()
	if c == nil {
		tb.Fatal("pgtest.Shared: no shared PostgreSQL cluster; add `func TestMain(m *testing.M) { pgtest.Main(m, nil) }` to the test package")
	}
	return c
}

// NewDatabase creates a fresh database with a unique name (derived from the
// test name) on the shared cluster and returns its DSN. If the test passes,
// the database is dropped in tb.Cleanup; if it fails, the database is kept
// (until the cluster stops) and its DSN is logged.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	c := Shared(tb)
	name := databaseName(tb.Name(), dbCounter.Add(1))
	ctx, cancel := context.WithTimeout(tb.Context(), time.Minute)
	err := c.CreateDatabase(ctx, name)
	cancel()
	if err != nil {
		tb.Fatalf("pgtest.NewDatabase: %v", err)
	}
	dsn := c.DSN(name)
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("pgtest: test failed, keeping database %s: %s", name, dsn)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := c.DropDatabase(ctx, name)
		cancel()
		if err != nil {
			tb.Errorf("pgtest.NewDatabase cleanup: %v", err)
		}
	})
	return dsn
}

// NewDatabaseWith is NewDatabase that also runs schema (SQL statements) in the new
// database. It returns the DSN and a connection to the database, closed when the test
// ends.
func NewDatabaseWith(tb testing.TB, schema string) (string, *pgx.Conn) {
	tb.Helper()
	dsn := NewDatabase(tb)
	conn, err := pgx.Connect(tb.Context(), dsn)
	if err != nil {
		tb.Fatalf("pgtest.NewDatabaseWith: connect: %v", err)
	}
	tb.Cleanup(func() { closeConn(conn) })
	if _, err := conn.Exec(tb.Context(), schema); err != nil {
		tb.Fatalf("pgtest.NewDatabaseWith: create the schema: %v", err)
	}
	return dsn, conn
}

// databaseName derives a database name from a test name and a counter:
// lower case, [a-z0-9_] only, at most 63 bytes, e.g. "t_testfoo_sub_3".
func databaseName(testName string, n uint64) string {
	const maxLen = 63
	suffix := "_" + strconv.FormatUint(n, 10)
	var b strings.Builder
	b.WriteString("t_")
	underscore := true // avoid "__" right after the prefix
	for _, r := range strings.ToLower(testName) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			underscore = false
		} else if !underscore {
			b.WriteByte('_')
			underscore = true
		}
	}
	base := strings.TrimRight(b.String(), "_")
	if limit := maxLen - len(suffix); len(base) > limit {
		base = strings.TrimRight(base[:limit], "_")
	}
	return base + suffix
}
