package faulttest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/disk"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// pollEvery is how often the tests look again at something they wait for.
const pollEvery = 20 * time.Millisecond

func testLogger(t *testing.T, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// connect opens a connection closed when the test ends.
func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec1(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func dbName(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

// currentLSN returns a WAL position at or past every commit made so far, and makes sure
// the WAL up to it is flushed, so the walsender can send it. pg_current_wal_lsn() alone is
// the write position, which can trail a commit made with synchronous_commit = off (as the
// test clusters run): waiting for it could stop short of the last transactions.
func currentLSN(t *testing.T, conn *pgx.Conn) event.LSN {
	t.Helper()
	var s string
	if err := conn.QueryRow(t.Context(), "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		t.Fatalf("read the current WAL position: %v", err)
	}
	// A synchronous commit flushes the WAL before it, up to and past s.
	if _, err := conn.Exec(t.Context(), "BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT"); err != nil {
		t.Fatalf("flush the WAL: %v", err)
	}
	lsn, err := event.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// poll calls f every pollEvery until it reports done, and fails the test with what f last
// said when timeout passes first or f returns an error.
func poll(t *testing.T, timeout time.Duration, what string, f func() (done bool, state string, err error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		done, state, err := f()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not done after %s (%s)", what, timeout, state)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("waiting for %s: %v", what, t.Context().Err())
		case <-tick.C:
		}
	}
}

// waitSlotIdle waits until no walsender uses the slot (or it does not exist yet), so that
// a new pipeline can take it: a killed pipeline's walsender notices the closed connection
// only after a moment.
func waitSlotIdle(t *testing.T, conn *pgx.Conn, slot string) {
	t.Helper()
	poll(t, 60*time.Second, "slot "+slot+" to be released", func() (bool, string, error) {
		var active bool
		err := conn.QueryRow(t.Context(), "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
		if errors.Is(err, pgx.ErrNoRows) {
			return true, "", nil
		}
		return err == nil && !active, "still active", err
	})
}

// waitHead waits until the ledger's head reaches at least pos.
func waitHead(t *testing.T, l ledger.Ledger, pos event.Position, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for l.State().Head < pos {
		if err := l.Wait(ctx, l.State().Head); err != nil {
			t.Fatalf("waiting for ledger position %d (head %d): %v", pos, l.State().Head, err)
		}
	}
}

// scanLedger opens the disk ledger in dir with the indexer the pipeline used and calls f
// for each event in position order, checking that positions are gap-free from 1. It
// returns the number of events.
func scanLedger(t *testing.T, dir string, tables []channel.Table, f func(e *event.Event)) int {
	t.Helper()
	router, err := channel.NewRouter(tables)
	if err != nil {
		t.Fatal(err)
	}
	l, err := disk.Open(t.Context(), dir, &disk.Options{Indexer: router.Channels})
	if err != nil {
		t.Fatalf("open the ledger: %v", err)
	}
	defer l.Close()
	return scanEvents(t.Context(), t, l, f)
}

// scanEvents calls f for each event of l in position order, checking that positions are
// gap-free from 1 up to the ledger's head. It returns the number of events.
func scanEvents(ctx context.Context, t *testing.T, l ledger.Ledger, f func(e *event.Event)) int {
	t.Helper()
	var after event.Position
	for {
		evs, err := l.Read(ctx, after, 10000)
		if err != nil {
			t.Fatalf("read the ledger after %d: %v", after, err)
		}
		if len(evs) == 0 {
			break
		}
		for i := range evs {
			if evs[i].Position != after+1 {
				t.Fatalf("event after position %d has position %d", after, evs[i].Position)
			}
			after = evs[i].Position
			f(&evs[i])
		}
	}
	if head := l.State().Head; after != head {
		t.Fatalf("read %d events, but the ledger's head is %d", after, head)
	}
	return int(after)
}

// idOf returns an event's integer id column.
func idOf(t *testing.T, e *event.Event, column string) int64 {
	t.Helper()
	v, ok := e.ID(column)
	if !ok {
		t.Fatalf("event %d (%s %s) has no %s column", e.Position, e.Type, e.Name, column)
	}
	return intValue(t, e, v)
}

func intField(t *testing.T, e *event.Event, column string) int64 {
	t.Helper()
	v, ok := e.NewRecord.Get(column)
	if !ok {
		t.Fatalf("event %d (%s %s) has no %s column", e.Position, e.Type, e.Name, column)
	}
	return intValue(t, e, v)
}

func intValue(t *testing.T, e *event.Event, v event.Value) int64 {
	t.Helper()
	s, ok := v.Text()
	if !ok {
		t.Fatalf("event %d (%s %s): value is %s, want an integer", e.Position, e.Type, e.Name, v.Kind())
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("event %d (%s %s): %v", e.Position, e.Type, e.Name, err)
	}
	return n
}

// buildPipeline builds internal/testcmd/pipeline into a temporary directory, without -race
// so that it starts fast and its memory use is what users get.
func buildPipeline(t *testing.T) string {
	t.Helper()
	return buildCommand(t, "github.com/walflow/walflow/internal/testcmd/pipeline", "pipeline")
}

// buildCommand builds the package into a temporary directory as name, without -race.
func buildCommand(t *testing.T, pkg, name string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goBin, err = filepath.Join(root, "bin", "go"), nil
		}
	}
	if err != nil {
		t.Fatalf("the go command is needed to build the %s child process: %v; put it in PATH", name, err)
	}
	bin := filepath.Join(t.TempDir(), name)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, pkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// pipeline starts and stops the child process on one database, ledger and slot.
type pipeline struct {
	t       *testing.T
	bin     string
	args    []string
	logDir  string
	runs    int
	current *child
}

// childState is what the child's last state line said.
type childState struct {
	Head               event.Position
	Commit, End, Acked event.LSN
	Lines              int
}

// opReport is what the child's last line about an operator said.
type opReport struct {
	Position event.Position
	Halted   bool
}

// child is one run of the pipeline process.
type child struct {
	n       int
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	logPath string
	ready   chan struct{}
	exited  chan struct{}
	changed chan struct{} // receives a value after each state line (coalesced)

	mu      sync.Mutex
	state   childState
	ops     map[string]opReport // from the operator lines
	vmhwm   int64               // KiB, from the vmhwm line
	bad     []string
	waitErr error // set before exited is closed
}

func newPipeline(t *testing.T, bin, dsn, ledgerDir, slot, tables string) *pipeline {
	p := &pipeline{t: t, bin: bin, logDir: t.TempDir(), args: []string{
		"-dsn", dsn, "-ledger", ledgerDir, "-slot", slot, "-tables", tables,
		"-status-interval", "200ms", "-exit-on-eof",
	}}
	t.Cleanup(func() {
		if c := p.current; c != nil {
			select {
			case <-c.exited:
			default:
				_ = c.cmd.Process.Kill()
				<-c.exited
			}
		}
		if t.Failed() {
			for i := 1; i <= p.runs; i++ {
				p.logTail(i, 40)
			}
		}
	})
	return p
}

// log returns run n's stderr.
func (p *pipeline) log(n int) string {
	b, _ := os.ReadFile(filepath.Join(p.logDir, fmt.Sprintf("run-%02d.log", n)))
	return string(b)
}

func (p *pipeline) logTail(n, lines int) {
	all := strings.Split(strings.TrimRight(p.log(n), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	p.t.Logf("--- pipeline run %d, last %d log lines ---\n%s", n, len(all), strings.Join(all, "\n"))
}

// start runs the child once more; the previous run must have exited.
func (p *pipeline) start() *child {
	t := p.t
	t.Helper()
	if c := p.current; c != nil {
		select {
		case <-c.exited:
		default:
			t.Fatalf("pipeline run %d is still running", c.n)
		}
	}
	p.runs++
	c := &child{n: p.runs, ready: make(chan struct{}), exited: make(chan struct{}), changed: make(chan struct{}, 1), ops: map[string]opReport{}}
	c.logPath = filepath.Join(p.logDir, fmt.Sprintf("run-%02d.log", c.n))
	logFile, err := os.Create(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(p.bin, p.args...)
	c.cmd.Stderr = logFile
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start the pipeline: %v", err)
	}
	p.current = c
	go func() {
		c.read(stdout)
		err := c.cmd.Wait()
		logFile.Close()
		c.mu.Lock()
		c.waitErr = err
		c.mu.Unlock()
		close(c.exited)
	}()
	return c
}

// read parses the child's stdout until it closes.
func (c *child) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		c.mu.Lock()
		switch {
		case line == "ready":
			select {
			case <-c.ready:
			default:
				close(c.ready)
			}
		case strings.HasPrefix(line, "state "):
			var s childState
			var commit, end, acked string
			if _, err := fmt.Sscanf(line, "state head=%d commit=%s end=%s acked=%s", &s.Head, &commit, &end, &acked); err != nil {
				c.bad = append(c.bad, line)
				break
			}
			var errs [3]error
			s.Commit, errs[0] = event.ParseLSN(commit)
			s.End, errs[1] = event.ParseLSN(end)
			s.Acked, errs[2] = event.ParseLSN(acked)
			if err := errors.Join(errs[:]...); err != nil {
				c.bad = append(c.bad, line)
				break
			}
			s.Lines = c.state.Lines + 1
			c.state = s
		case strings.HasPrefix(line, "operator "):
			var name string
			var r opReport
			if _, err := fmt.Sscanf(line, "operator %s position=%d halted=%t", &name, &r.Position, &r.Halted); err != nil {
				c.bad = append(c.bad, line)
				break
			}
			c.ops[name] = r
		case strings.HasPrefix(line, "vmhwm "):
			if _, err := fmt.Sscanf(line, "vmhwm %d", &c.vmhwm); err != nil {
				c.bad = append(c.bad, line)
			}
		default:
			c.bad = append(c.bad, line)
		}
		c.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}

// State returns what the child last reported.
func (c *child) State() childState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Operators returns what the child last reported of each operator.
func (c *child) Operators() map[string]opReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.ops)
}

// exitError describes how the child ended, with the end of its log.
func (p *pipeline) exitError(c *child) string {
	c.mu.Lock()
	err := c.waitErr
	c.mu.Unlock()
	b, _ := os.ReadFile(c.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return fmt.Sprintf("pipeline run %d exited: %v\n%s", c.n, err, strings.Join(lines, "\n"))
}

// waitReady waits until the child streams.
func (p *pipeline) waitReady(c *child, timeout time.Duration) {
	p.t.Helper()
	select {
	case <-c.ready:
	case <-c.exited:
		p.t.Fatalf("before streaming: %s", p.exitError(c))
	case <-time.After(timeout):
		p.t.Fatalf("pipeline run %d did not stream within %s", c.n, timeout)
	}
}

// waitState waits until the child's reported state satisfies ok.
func (p *pipeline) waitState(c *child, timeout time.Duration, what string, ok func(childState) bool) childState {
	p.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if s := c.State(); ok(s) {
			return s
		}
		select {
		case <-c.changed:
		case <-c.exited:
			if s := c.State(); ok(s) {
				return s
			}
			p.t.Fatalf("waiting for %s: %s", what, p.exitError(c))
		case <-deadline.C:
			p.t.Fatalf("waiting for %s: not reached within %s; last state %+v", what, timeout, c.State())
		}
	}
}

// waitChild waits until cond, called after each line the child prints, reports done.
func (p *pipeline) waitChild(c *child, timeout time.Duration, what string, cond func() (done bool, state string)) {
	p.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		done, state := cond()
		if done {
			return
		}
		select {
		case <-c.changed:
		case <-c.exited:
			if done, _ := cond(); done {
				return
			}
			p.t.Fatalf("waiting for %s: %s", what, p.exitError(c))
		case <-deadline.C:
			p.t.Fatalf("waiting for %s: not reached within %s; %s", what, timeout, state)
		}
	}
}

// kill SIGKILLs the child and waits for it to be gone.
func (p *pipeline) kill(c *child) {
	p.t.Helper()
	select {
	case <-c.exited:
		p.t.Fatalf("killing: %s", p.exitError(c))
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		p.t.Fatalf("kill pipeline run %d: %v", c.n, err)
	}
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("pipeline run %d survived SIGKILL for 30s", c.n)
	}
}

// stop asks the child to stop with SIGTERM, checks that it exits 0 and returns its peak
// resident set size in KiB.
func (p *pipeline) stop(c *child) int64 {
	p.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("signal pipeline run %d: %v", c.n, err)
	}
	select {
	case <-c.exited:
	case <-time.After(60 * time.Second):
		p.t.Fatalf("pipeline run %d did not stop within 60s of SIGTERM", c.n)
	}
	c.mu.Lock()
	waitErr, bad, vmhwm := c.waitErr, c.bad, c.vmhwm
	c.mu.Unlock()
	if waitErr != nil {
		p.t.Fatalf("graceful stop: %s", p.exitError(c))
	}
	if len(bad) > 0 {
		p.t.Fatalf("pipeline run %d printed unexpected lines: %q", c.n, bad)
	}
	if vmhwm == 0 {
		p.t.Fatalf("pipeline run %d did not report its peak RSS", c.n)
	}
	return vmhwm
}
