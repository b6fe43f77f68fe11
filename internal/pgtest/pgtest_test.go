package pgtest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) {
	Main(m, &Options{Settings: map[string]string{
		"max_slot_wal_keep_size": "1MB",
		"application_name":       "it's pgtest", // exercises quoting
	}})
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { closeConn(conn) })
	return conn
}

func queryString(t *testing.T, ctx context.Context, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestStart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := Shared(t)
	if c.Host() != "127.0.0.1" {
		t.Errorf("Host() = %q", c.Host())
	}
	if c.Port() <= 0 {
		t.Errorf("Port() = %d", c.Port())
	}
	if checkBinDir(c.BinDir()) != nil {
		t.Errorf("BinDir() = %q lacks server binaries", c.BinDir())
	}
	want := "postgres://postgres@127.0.0.1:" + strconv.Itoa(c.Port()) + "/postgres?sslmode=disable"
	if got := c.DSN("postgres"); got != want {
		t.Errorf("DSN = %q, want %q", got, want)
	}
	conn := connect(t, ctx, c.DSN("postgres"))
	for setting, want := range map[string]string{
		"wal_level":             "logical",
		"fsync":                 "off",
		"full_page_writes":      "off",
		"synchronous_commit":    "off",
		"max_wal_senders":       "20",
		"max_replication_slots": "20",
		"max_connections":       "200",
		"listen_addresses":      "127.0.0.1",
		"server_encoding":       "UTF8",
	} {
		if got := queryString(t, ctx, conn, "SELECT current_setting($1)", setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	if got := queryString(t, ctx, conn, "SHOW wal_level"); got != "logical" {
		t.Errorf("SHOW wal_level = %q", got)
	}
	if got := queryString(t, ctx, conn, "SELECT current_user"); got != "postgres" {
		t.Errorf("current_user = %q", got)
	}
	if tail := c.LogTail(1000); !strings.Contains(tail, "ready to accept connections") {
		t.Errorf("LogTail does not show startup:\n%s", tail)
	}
	if got := strings.Count(c.LogTail(2), "\n"); got > 1 {
		t.Errorf("LogTail(2) has %d newlines", got)
	}
}

func TestSettingsApplied(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	conn := connect(t, ctx, Shared(t).DSN("postgres"))
	if got := queryString(t, ctx, conn, "SHOW max_slot_wal_keep_size"); got != "1MB" {
		t.Errorf("max_slot_wal_keep_size = %q, want 1MB", got)
	}
	var val, src string
	if err := conn.QueryRow(ctx, "SELECT reset_val, source FROM pg_settings WHERE name = 'application_name'").Scan(&val, &src); err != nil {
		t.Fatal(err)
	}
	if val != "it's pgtest" || src != "configuration file" {
		t.Errorf("application_name = %q from %q, want \"it's pgtest\" from the configuration file", val, src)
	}
}

func TestNewDatabase(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dsnA, dsnB := NewDatabase(t), NewDatabase(t)
	if dsnA == dsnB {
		t.Fatalf("NewDatabase returned the same DSN twice: %s", dsnA)
	}
	a, b := connect(t, ctx, dsnA), connect(t, ctx, dsnB)
	nameA := queryString(t, ctx, a, "SELECT current_database()")
	nameB := queryString(t, ctx, b, "SELECT current_database()")
	for _, n := range []string{nameA, nameB} {
		if !regexp.MustCompile(`^t_testnewdatabase_[0-9]+$`).MatchString(n) {
			t.Errorf("unexpected database name %q", n)
		}
	}
	if _, err := a.Exec(ctx, "CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	var exists bool
	if err := b.QueryRow(ctx, "SELECT to_regclass('only_in_a') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Error("table created in database A is visible in database B")
	}
}

func TestNewDatabaseDroppedAfterSubtest(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := Shared(t)
	var name string
	t.Run("sub/Test With Spaces", func(t *testing.T) {
		conn := connect(t, ctx, NewDatabase(t))
		name = queryString(t, ctx, conn, "SELECT current_database()")
		closeConn(conn) // the drop terminates it anyway
	})
	if !strings.HasPrefix(name, "t_testnewdatabasedroppedaftersubtest_sub_test_with_spaces_") {
		t.Errorf("database name %q", name)
	}
	conn := connect(t, ctx, c.DSN("postgres"))
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database %q still exists after the passing subtest", name)
	}
}

func TestDropDatabaseWithSlots(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := Shared(t)
	const db = "Drop Me" // needs quoting
	if err := c.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, db, "SELECT pg_create_logical_replication_slot('pgtest_inactive', 'test_decoding')"); err != nil {
		t.Fatal(err)
	}

	// An active slot, held by pg_recvlogical's WAL sender.
	recvlogical, err := c.Binary("pg_recvlogical")
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, recvlogical, "-d", c.DSN(db), "--slot", "pgtest_active",
		"--create-slot", "--if-not-exists", "-P", "test_decoding", "--start", "--no-loop", "-f", "-")
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	admin := connect(t, ctx, c.DSN("postgres"))
	for {
		var active bool
		err := admin.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'pgtest_active'").Scan(&active)
		if err == nil && active {
			break
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		if ctx.Err() != nil {
			t.Fatalf("slot never became active; pg_recvlogical: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// And an idle ordinary connection.
	connect(t, ctx, c.DSN(db))

	if err := c.DropDatabase(ctx, db); err != nil {
		t.Fatalf("DropDatabase: %v", err)
	}
	var n int
	if err := admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_database WHERE datname = $1)
		+ (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgtest_%')`, db).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("database or slots left behind (%d)", n)
	}
	waited = true
	if err := cmd.Wait(); err == nil {
		t.Errorf("pg_recvlogical exited successfully after its database was dropped")
	}
	// Dropping a missing database is fine.
	if err := c.DropDatabase(ctx, db); err != nil {
		t.Errorf("second DropDatabase: %v", err)
	}
}

func TestRestartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c, err := Start(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop(context.Background())
		}
	})
	port := c.Port()
	if err := c.Exec(ctx, "postgres", "CREATE TABLE t (n int)"); err != nil {
		t.Fatal(err)
	}
	insert := func(n int) {
		t.Helper()
		// synchronous_commit=on makes the row survive an immediate shutdown.
		if err := c.Exec(ctx, "postgres", "SET synchronous_commit = on; INSERT INTO t VALUES ("+strconv.Itoa(n)+")"); err != nil {
			t.Fatalf("insert %d: %v", n, err)
		}
	}
	count := func() int {
		t.Helper()
		conn := connect(t, ctx, c.DSN("postgres"))
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		closeConn(conn)
		return n
	}

	modes := []string{"fast", "immediate", "immediate", "immediate", "immediate", "immediate", "fast"}
	for i, mode := range modes {
		insert(i)
		if err := c.Restart(ctx, mode); err != nil {
			t.Fatalf("restart %d (%s): %v", i, mode, err)
		}
		if got := count(); got != i+1 {
			t.Fatalf("after restart %d (%s): %d rows, want %d", i, mode, got, i+1)
		}
		if c.Port() != port {
			t.Fatalf("port changed from %d to %d", port, c.Port())
		}
	}

	// Down for a while, then up again.
	if err := c.StopServer(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, "postgres", "SELECT 1"); err == nil {
		t.Fatal("Exec succeeded while the server was stopped")
	}
	if err := c.StopServer(ctx, "bogus"); err == nil {
		t.Error("StopServer accepted mode bogus")
	}
	if err := c.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(); got != len(modes) {
		t.Fatalf("after StopServer/StartServer: %d rows, want %d", got, len(modes))
	}

	dataDir := c.DataDir()
	pid := c.postmasterPID()
	stopped = true
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(dataDir)); !os.IsNotExist(err) {
		t.Errorf("temporary directory still exists after Stop: %v", err)
	}
	if processAlive(pid) {
		t.Errorf("postmaster %d still running after Stop", pid)
	}
	if err := c.StartServer(ctx); err == nil {
		t.Error("StartServer succeeded after Stop")
	}
}

func TestStopKillsStuckServer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c, err := Start(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	pid := c.postmasterPID()
	// A cancelled context makes pg_ctl fail; Stop must still get rid of
	// the server and the directory.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_ = c.Stop(cancelled)
	if processAlive(pid) {
		t.Errorf("postmaster %d still running after Stop", pid)
		_ = stopProcess(pid)
	}
	if _, err := os.Stat(c.dir); !os.IsNotExist(err) {
		t.Errorf("temporary directory still exists after Stop: %v", err)
	}
}

func TestStartErrorIncludesLog(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c, err := Start(ctx, &Options{Settings: map[string]string{"shared_buffers": "not a size"}})
	if err == nil {
		_ = c.Stop(ctx)
		t.Fatal("Start succeeded with an invalid setting")
	}
	if !strings.Contains(err.Error(), `invalid value for parameter "shared_buffers"`) {
		t.Errorf("error does not include the server log:\n%v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for _, settings := range []map[string]string{
		{"port": "5432"},
		{"bad name": "x"},
		{"work_mem": "1MB\nfsync = on"},
	} {
		if _, err := Start(ctx, &Options{Settings: settings}); err == nil {
			t.Errorf("Start accepted settings %q", settings)
		}
	}
	got, err := renderSettings(map[string]string{"b": `it's`, "a": `c:\x`})
	if err != nil {
		t.Fatal(err)
	}
	if want := "a = 'c:\\\\x'\nb = 'it''s'\n"; got != want {
		t.Errorf("renderSettings = %q, want %q", got, want)
	}
	c := Shared(t)
	for _, name := range []string{"", strings.Repeat("x", 64), "nul\x00"} {
		if err := c.CreateDatabase(ctx, name); err == nil {
			t.Errorf("CreateDatabase accepted %q", name)
		}
	}
}

func TestBinary(t *testing.T) {
	t.Parallel()
	c := Shared(t)
	for _, name := range []string{"pg_ctl", "pg_recvlogical", "psql"} {
		p, err := c.Binary(name)
		if err != nil {
			t.Errorf("Binary(%q): %v", name, err)
		} else if !isExecutable(p) {
			t.Errorf("Binary(%q) = %q, not executable", name, p)
		}
	}
	if _, err := c.Binary("no-such-pg-program"); err == nil {
		t.Error("Binary found a program that does not exist")
	}
}

// fakeBinDir makes a directory holding fake, executable copies of names.
func fakeBinDir(t *testing.T, dir string, names ...string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindBinDir(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	root := t.TempDir()
	all := []string{"initdb", "pg_ctl", "postgres"}
	good := fakeBinDir(t, filepath.Join(root, "good"), all...)
	partial := fakeBinDir(t, filepath.Join(root, "partial"), "initdb", "pg_ctl")
	empty := fakeBinDir(t, filepath.Join(root, "empty"))
	for _, v := range []string{"9.6", "15", "16", "12"} {
		fakeBinDir(t, filepath.Join(root, "lib", v, "bin"), all...)
	}
	fakeBinDir(t, filepath.Join(root, "lib", "17", "bin"), "initdb") // incomplete: skipped
	// A symlink in PATH that points into a complete directory.
	linkDir := fakeBinDir(t, filepath.Join(root, "links"))
	if err := os.Symlink(filepath.Join(good, "initdb"), filepath.Join(linkDir, "initdb")); err != nil {
		t.Fatal(err)
	}
	// pg_config that reports a bindir.
	cfgDir := filepath.Join(root, "cfg")
	fakeBinDir(t, cfgDir)
	if err := os.WriteFile(filepath.Join(cfgDir, "pg_config"), []byte("#!/bin/sh\necho "+good+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	noEnv := env(nil)
	noGlob := filepath.Join(root, "nothing", "*", "bin")

	tests := []struct {
		name    string
		finder  binFinder
		want    string
		wantErr string
	}{
		{"env", binFinder{getenv: env(map[string]string{BinDirEnv: good}), path: partial, glob: noGlob}, good, ""},
		{"env invalid", binFinder{getenv: env(map[string]string{BinDirEnv: partial}), path: good, glob: noGlob}, "", BinDirEnv},
		{"path", binFinder{getenv: noEnv, path: empty + string(os.PathListSeparator) + good, glob: noGlob}, good, ""},
		{"path partial skipped", binFinder{getenv: noEnv, path: partial, glob: filepath.Join(root, "lib", "*", "bin")}, filepath.Join(root, "lib", "16", "bin"), ""},
		{"path symlink", binFinder{getenv: noEnv, path: linkDir, glob: noGlob}, good, ""},
		{"pg_config", binFinder{getenv: noEnv, path: cfgDir, glob: noGlob}, good, ""},
		{"glob highest version", binFinder{getenv: noEnv, path: "", glob: filepath.Join(root, "lib", "*", "bin")}, filepath.Join(root, "lib", "16", "bin"), ""},
		{"nothing", binFinder{getenv: noEnv, path: "", glob: noGlob}, "", "apt-get install -y --no-install-recommends postgresql-15"},
		{"nothing with empty dirs", binFinder{getenv: noEnv, path: empty, glob: noGlob}, "", BinDirEnv},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.finder.findBinDir(ctx)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("found %q, want error", got)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrBinariesNotFound) {
					t.Errorf("error %q does not mention %q or wrap ErrBinariesNotFound", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "apt-get install -y --no-install-recommends postgresql-15") {
					t.Errorf("error %q lacks the install hint", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}

	// The real environment must find PostgreSQL on this machine.
	if dir, err := defaultBinFinder().findBinDir(ctx); err != nil {
		t.Errorf("default lookup: %v", err)
	} else if checkBinDir(dir) != nil {
		t.Errorf("default lookup returned incomplete %q", dir)
	}
}

func TestDatabaseName(t *testing.T) {
	t.Parallel()
	valid := regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	for _, tt := range []struct {
		test string
		n    uint64
		want string
	}{
		{"TestFoo", 1, "t_testfoo_1"},
		{"TestFoo/Sub_Case#01", 12, "t_testfoo_sub_case_01_12"},
		{"Test__X--Y/", 3, "t_test_x_y_3"},
		{"Tést/ü", 4, "t_t_st_4"},
		{strings.Repeat("TestVeryLong", 10), 123456, ""},
		{strings.Repeat("a/", 40), 7, ""},
	} {
		got := databaseName(tt.test, tt.n)
		if tt.want != "" && got != tt.want {
			t.Errorf("databaseName(%q, %d) = %q, want %q", tt.test, tt.n, got, tt.want)
		}
		if len(got) > 63 || !valid.MatchString(got) || strings.Contains(got, "__") {
			t.Errorf("databaseName(%q, %d) = %q is not a clean name of at most 63 bytes", tt.test, tt.n, got)
		}
		if !strings.HasSuffix(got, "_"+strconv.FormatUint(tt.n, 10)) {
			t.Errorf("databaseName(%q, %d) = %q lost the counter", tt.test, tt.n, got)
		}
	}
}

func TestReapOrphans(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	// A process that has certainly exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	mk := func(name string, owner int) string {
		dir := filepath.Join(base, name)
		if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
			t.Fatal(err)
		}
		if owner != 0 {
			if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(owner)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	orphan := mk("walflow-pg-orphan", dead.Process.Pid)
	live := mk("walflow-pg-live", os.Getppid())
	mine := mk("walflow-pg-mine", os.Getpid())
	noOwner := mk("walflow-pg-starting", 0)
	other := mk("something-else", dead.Process.Pid)

	reapOrphans(base)

	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan not removed: %v", err)
	}
	for _, d := range []string{live, mine, noOwner, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s wrongly removed: %v", d, err)
		}
	}
}
