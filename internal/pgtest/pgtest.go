package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options configure a cluster started by [Start]. The zero value (or a nil
// *Options) gives the defaults.
type Options struct {
	// Settings are extra postgresql.conf lines, e.g.
	// {"max_slot_wal_keep_size": "1MB"}. Default none. Values are written
	// as quoted string literals, so they must not be quoted again. They are
	// applied after the package defaults and therefore override them, except
	// for the settings the package manages itself (port, listen_addresses,
	// unix_socket_directories), which are rejected.
	Settings map[string]string
}

// Cluster is a running (or stopped) throwaway PostgreSQL cluster. All methods
// are safe for concurrent use.
type Cluster struct {
	binDir  string
	dir     string   // temporary directory holding everything
	dataDir string   // dir/data
	logFile string   // dir/server.log
	host    string   // always 127.0.0.1
	port    int      // fixed once the server first started
	owner   *sysUser // nil unless the server runs as another user (root case)

	mu      sync.Mutex // serialises server state changes
	removed bool       // Stop has run
}

const (
	superuser = "postgres"
	localhost = "127.0.0.1"

	// startAttempts is how many free ports Start tries.
	startAttempts = 5
	// maxCtlWait caps pg_ctl -t.
	maxCtlWait = 60 * time.Second
	// logTailLines is how much of the server log startup errors carry.
	logTailLines = 30
	// ownerFile records which process owns a temporary directory.
	ownerFile = "owner.pid"
	// tempPattern names the temporary directories.
	tempPattern = "walflow-pg-*"
)

// managedSettings cannot be overridden through Options.Settings.
var managedSettings = map[string]bool{
	"port":                    true,
	"listen_addresses":        true,
	"unix_socket_directories": true,
}

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// Start creates and starts a new cluster in a fresh temporary directory. A
// nil opts gives the defaults. The caller must call [Cluster.Stop] to shut
// the server down and delete its files. Every error returned because the
// server failed to start includes the end of the server log.
func Start(ctx context.Context, opts *Options) (*Cluster, error) {
	if opts == nil {
		opts = &Options{}
	}
	extra, err := renderSettings(opts.Settings)
	if err != nil {
		return nil, err
	}
	binDir, err := defaultBinFinder().findBinDir(ctx)
	if err != nil {
		return nil, err
	}
	owner, err := serverUser()
	if err != nil {
		return nil, err
	}

	base := os.TempDir()
	if !traversable(base, owner) {
		base = "/tmp"
	}
	if !traversable(base, owner) {
		return nil, fmt.Errorf("pgtest: user %q cannot reach the temporary directory %s; set TMPDIR to a directory it can enter", owner.name, os.TempDir())
	}
	reapOrphans(base)

	dir, err := os.MkdirTemp(base, tempPattern)
	if err != nil {
		return nil, fmt.Errorf("pgtest: create temporary directory: %w", err)
	}
	c := &Cluster{
		binDir:  binDir,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logFile: filepath.Join(dir, "server.log"),
		host:    localhost,
		owner:   owner,
	}
	if err := c.setup(ctx, extra); err != nil {
		cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		if stopErr := c.Stop(cleanupCtx); stopErr != nil {
			err = fmt.Errorf("%w (cleanup also failed: %v)", err, stopErr)
		}
		cancel()
		return nil, err
	}
	return c, nil
}

// setup runs initdb, writes the configuration and starts the server.
func (c *Cluster) setup(ctx context.Context, extra string) error {
	if err := os.WriteFile(filepath.Join(c.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := chownTo(c.dir, c.owner); err != nil {
		return fmt.Errorf("pgtest: hand %s over to user %q: %w", c.dir, c.owner.name, err)
	}
	out, err := c.run(ctx, "initdb", "-D", c.dataDir, "-U", superuser, "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if err != nil {
		return fmt.Errorf("pgtest: initdb failed: %w\n%s", err, out)
	}

	confPath := filepath.Join(c.dataDir, "postgresql.conf")
	origConf, err := os.ReadFile(confPath)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	sockDir := filepath.Join(c.dataDir, "sock")
	if err := os.Mkdir(sockDir, 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := chownTo(sockDir, c.owner); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	// sun_path holds 108 bytes including the terminating NUL; without a
	// usable socket directory, run with TCP only (pg_ctl does not need it).
	if len(sockDir)+len("/.s.PGSQL.65535") >= 108 {
		sockDir = ""
	}

	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("pgtest: find a free port: %w", err)
		}
		conf := string(origConf) + "\n# --- walflow pgtest ---\n" + baseSettings(port, sockDir) + extra
		// WriteFile truncates in place, so ownership is preserved.
		if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		c.port = port
		logStart := fileSize(c.logFile)
		lastErr = c.StartServer(ctx)
		if lastErr == nil {
			return nil
		}
		if ctx.Err() != nil || !strings.Contains(strings.ToLower(c.logSince(logStart)), "address already in use") {
			return lastErr
		}
	}
	return lastErr
}

// baseSettings are the postgresql.conf lines every cluster gets.
func baseSettings(port int, sockDir string) string {
	return fmt.Sprintf(`listen_addresses = '%s'
port = %d
unix_socket_directories = %s
wal_level = logical
max_wal_senders = 20
max_replication_slots = 20
fsync = off
full_page_writes = off
synchronous_commit = off
max_connections = 200
shared_buffers = 128MB
wal_sender_timeout = 60s
logging_collector = off
`, localhost, port, quoteConf(sockDir))
}

// renderSettings validates user settings and renders them as conf lines in
// a stable order.
func renderSettings(settings map[string]string) (string, error) {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		v := settings[k]
		if !settingName.MatchString(k) {
			return "", fmt.Errorf("pgtest: invalid setting name %q", k)
		}
		if managedSettings[strings.ToLower(k)] {
			return "", fmt.Errorf("pgtest: setting %q is managed by pgtest and cannot be overridden", k)
		}
		if strings.ContainsAny(v, "\n\r\x00") {
			return "", fmt.Errorf("pgtest: value of setting %q contains a line break or NUL", k)
		}
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(v))
	}
	return b.String(), nil
}

// quoteConf quotes a postgresql.conf value.
func quoteConf(v string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", "''") + "'"
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(localhost, "0"))
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}

// Port returns the TCP port the server listens on.
func (c *Cluster) Port() int { return c.port }

// Host returns the address the server listens on, always "127.0.0.1".
func (c *Cluster) Host() string { return c.host }

// BinDir returns the directory holding the server binaries (initdb, pg_ctl,
// postgres and usually client tools such as pg_recvlogical).
func (c *Cluster) BinDir() string { return c.binDir }

// DataDir returns the cluster's data directory.
func (c *Cluster) DataDir() string { return c.dataDir }

// Binary returns the path of the PostgreSQL program name, looking first in
// [Cluster.BinDir] and then in PATH.
func (c *Cluster) Binary(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, filepath.Separator) {
		return "", fmt.Errorf("pgtest: invalid program name %q", name)
	}
	if p := filepath.Join(c.binDir, name); isExecutable(p) {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("pgtest: %s not found in %s or PATH; %s", name, c.binDir, installHint())
}

// DSN returns a connection URL for database as the superuser, e.g.
// postgres://postgres@127.0.0.1:5432/db?sslmode=disable.
func (c *Cluster) DSN(database string) string {
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable",
		superuser, net.JoinHostPort(c.host, strconv.Itoa(c.port)), url.PathEscape(database))
}

// Exec runs sql (which may hold several statements) in database as the
// superuser on a new connection.
func (c *Cluster) Exec(ctx context.Context, database, sql string) error {
	conn, err := pgx.Connect(ctx, c.DSN(database))
	if err != nil {
		return fmt.Errorf("pgtest: connect to %q: %w", database, err)
	}
	_, err = conn.Exec(ctx, sql)
	closeConn(conn)
	if err != nil {
		return fmt.Errorf("pgtest: exec in %q: %w", database, err)
	}
	return nil
}

// closeConn closes conn even if the caller's context is done.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = conn.Close(ctx)
	cancel()
}

// validateDBName checks that name can be a PostgreSQL database name.
func validateDBName(name string) error {
	switch {
	case name == "":
		return errors.New("pgtest: empty database name")
	case len(name) > 63:
		return fmt.Errorf("pgtest: database name %q is longer than 63 bytes", name)
	case !utf8.ValidString(name) || strings.ContainsRune(name, 0):
		return fmt.Errorf("pgtest: invalid database name %q", name)
	}
	return nil
}

// CreateDatabase creates database name. The name is quoted, so any valid
// PostgreSQL identifier of at most 63 bytes works.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) error {
	if err := validateDBName(name); err != nil {
		return err
	}
	return c.Exec(ctx, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// DropDatabase drops database name if it exists. It first drops the logical
// replication slots of that database (terminating the WAL senders that use
// them) and terminates every other backend connected to it, retrying while
// terminated WAL senders release their slots (for at most a minute when ctx
// has no deadline).
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	if err := validateDBName(name); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		// Bound the retries below when the caller set no deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("pgtest: connect: %w", err)
	}
	defer closeConn(conn)

	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	drop := "DROP DATABASE IF EXISTS " + pgx.Identifier{name}.Sanitize()
	if version >= 130000 {
		drop += " WITH (FORCE)"
	}

	const retryDelay = 50 * time.Millisecond
	for {
		err := dropOnce(ctx, conn, name, drop)
		if err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		retryable := errors.As(err, &pgErr) && pgErr.Code == pgerrcode.ObjectInUse
		if !retryable || ctx.Err() != nil {
			return fmt.Errorf("pgtest: drop database %q: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: drop database %q: %w (last error: %v)", name, ctx.Err(), err)
		case <-time.After(retryDelay):
		}
	}
}

// dropOnce makes one attempt at dropping a database and its slots. It fails
// with SQLSTATE 55006 while a terminated WAL sender still holds a slot.
func dropOnce(ctx context.Context, conn *pgx.Conn, name, drop string) error {
	steps := []string{
		`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
		  WHERE database = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()`,
		`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		  WHERE database = $1 AND NOT active`,
		`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		  WHERE datname = $1 AND pid <> pg_backend_pid()`,
	}
	for _, q := range steps {
		if _, err := conn.Exec(ctx, q, name); err != nil {
			return err
		}
	}
	// Slots that were active above are only released once their WAL sender
	// has exited; report them as "in use" so that the caller retries.
	var left int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left); err != nil {
		return err
	}
	if left > 0 {
		return &pgconn.PgError{Code: pgerrcode.ObjectInUse, Message: fmt.Sprintf("%d replication slot(s) still in use", left)}
	}
	_, err := conn.Exec(ctx, drop)
	return err
}

// Restart stops the server with mode ("fast" or "immediate"; "immediate"
// simulates a crash) and starts it again on the same port and data directory.
func (c *Cluster) Restart(ctx context.Context, mode string) error {
	if err := c.StopServer(ctx, mode); err != nil {
		return err
	}
	return c.StartServer(ctx)
}

// StopServer stops the server with mode "smart", "fast" (the default when
// mode is empty) or "immediate", keeping the data directory so that
// [Cluster.StartServer] can bring it back.
func (c *Cluster) StopServer(ctx context.Context, mode string) error {
	if mode == "" {
		mode = "fast"
	}
	switch mode {
	case "smart", "fast", "immediate":
	default:
		return fmt.Errorf("pgtest: invalid shutdown mode %q (want fast or immediate)", mode)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errors.New("pgtest: cluster already removed by Stop")
	}
	return c.pgCtlStop(ctx, mode)
}

// pgCtlStop runs pg_ctl stop; c.mu must be held.
func (c *Cluster) pgCtlStop(ctx context.Context, mode string) error {
	out, err := c.run(ctx, "pg_ctl", "-D", c.dataDir, "-m", mode, "-w", "-t", ctlTimeout(ctx), "stop")
	if err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop -m %s failed: %w\n%s\n--- server log ---\n%s", mode, err, out, c.LogTail(logTailLines))
	}
	return nil
}

// StartServer starts a server previously stopped with [Cluster.StopServer],
// on the same port and data directory, and waits until it accepts
// connections.
func (c *Cluster) StartServer(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return errors.New("pgtest: cluster already removed by Stop")
	}
	out, err := c.run(ctx, "pg_ctl", "-D", c.dataDir, "-l", c.logFile, "-w", "-t", ctlTimeout(ctx), "start")
	if err != nil {
		return fmt.Errorf("pgtest: starting PostgreSQL on %s:%d failed: %w\n%s\n--- last %d lines of %s ---\n%s",
			c.host, c.port, err, strings.TrimSpace(out), logTailLines, c.logFile, c.LogTail(logTailLines))
	}
	return nil
}

// Stop shuts the server down (fast shutdown, falling back to immediate
// shutdown and then to killing the postmaster) and removes the temporary
// directory. It is idempotent: later calls return nil.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	c.removed = true

	var errs []error
	if pid := c.postmasterPID(); pid > 0 && processAlive(pid) {
		if err := c.pgCtlStop(ctx, "fast"); err != nil {
			errs = append(errs, err)
			if err := c.pgCtlStop(ctx, "immediate"); err != nil {
				errs = append(errs, err)
				if err := stopProcess(pid); err != nil {
					errs = append(errs, err)
				} else {
					errs = nil // the server is gone after all
				}
			} else {
				errs = nil
			}
		}
		// pg_ctl stop returns once the postmaster removed its pid file, a moment before
		// the process exits (on a loaded machine, noticeably later): Stop returns only
		// once it is gone, so its port and memory are free.
		if len(errs) == 0 && !waitGone(pid, 10*time.Second) {
			errs = append(errs, fmt.Errorf("pgtest: postmaster %d still running 10 s after pg_ctl stop", pid))
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: remove %s: %w", c.dir, err))
	}
	return errors.Join(errs...)
}

// stopProcess makes a postmaster exit: SIGQUIT, then SIGKILL.
func stopProcess(pid int) error {
	_ = quitProcess(pid)
	if waitGone(pid, 5*time.Second) {
		return nil
	}
	_ = killProcess(pid)
	if waitGone(pid, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("pgtest: postmaster %d does not exit", pid)
}

// waitGone polls until pid has exited or timeout passes.
func waitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// postmasterPID reads the pid from postmaster.pid, or returns 0.
func (c *Cluster) postmasterPID() int {
	return readPIDFile(filepath.Join(c.dataDir, "postmaster.pid"))
}

// readPIDFile returns the number on the first line of path, or 0.
func readPIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// LogTail returns the last n lines of the server log (fewer if the log is
// shorter), for error messages.
func (c *Cluster) LogTail(n int) string {
	b, err := os.ReadFile(c.logFile)
	if err != nil || n <= 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSince returns the server log from byte offset off on.
func (c *Cluster) logSince(off int64) string {
	b, err := os.ReadFile(c.logFile)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

// fileSize returns the size of path, or 0.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// ctlTimeout returns pg_ctl's -t value: the time left in ctx, at most 60 s.
func ctlTimeout(ctx context.Context) string {
	d := maxCtlWait
	if deadline, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(deadline))
	}
	return strconv.Itoa(max(1, int((d+time.Second-1)/time.Second)))
}

// run runs a server program from BinDir as the server user, in the
// temporary directory, and returns its combined output.
func (c *Cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.Dir = c.dir
	cmd.Env = c.env()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 5 * time.Second
	runAs(cmd, c.owner)
	err := cmd.Run()
	return out.String(), err
}

// env is the environment for server programs: ours without PG* variables,
// which could redirect them elsewhere.
func (c *Cluster) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		if c.owner != nil && (strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "USER=") || strings.HasPrefix(kv, "LOGNAME=")) {
			continue
		}
		env = append(env, kv)
	}
	if c.owner != nil {
		env = append(env, "HOME="+c.dir, "USER="+c.owner.name, "LOGNAME="+c.owner.name)
	}
	return env
}

// reapOrphans removes clusters under base left behind by test processes
// that died without calling Stop: directories whose owner process no longer
// exists. Their postmasters are shut down when they can be identified with
// certainty; otherwise removing the data directory makes PostgreSQL shut
// itself down within a minute. Errors are ignored.
func reapOrphans(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, tempPattern))
	for _, dir := range dirs {
		owner := readPIDFile(filepath.Join(dir, ownerFile))
		if owner <= 0 || owner == os.Getpid() || processAlive(owner) {
			continue
		}
		dataDir := filepath.Join(dir, "data")
		if pid := readPIDFile(filepath.Join(dataDir, "postmaster.pid")); pid > 0 && processAlive(pid) && isPostmasterOf(pid, dataDir) {
			_ = stopProcess(pid)
		}
		_ = os.RemoveAll(dir)
	}
}
