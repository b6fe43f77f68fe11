package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

	"github.com/walflow/walflow/internal/pgtest"
)

// contender is a running internal/testcmd/contender process.
type contender struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   string

	mu    sync.Mutex
	lines []string
	seen  chan struct{} // closed and replaced at each line
	done  chan struct{}
}

func buildContender(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "contender")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/walflow/walflow/internal/testcmd/contender").CombinedOutput()
	if err != nil {
		t.Fatalf("go build contender: %v\n%s", err, out)
	}
	return bin
}

func startContender(t *testing.T, bin, name string, args ...string) *contender {
	t.Helper()
	c := &contender{name: name, log: filepath.Join(t.TempDir(), name+".log"), seen: make(chan struct{}), done: make(chan struct{})}
	logf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, append([]string{"-name", name}, args...)...)
	c.cmd.Stderr = logf
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			close(c.seen)
			c.seen = make(chan struct{})
			c.mu.Unlock()
		}
		_ = c.cmd.Wait()
		_ = logf.Close()
		close(c.done)
	}()
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGCONT)
		_ = c.stdin.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(c.log)
			t.Logf("--- %s stdout ---\n%s\n--- %s stderr ---\n%s", c.name, strings.Join(c.snapshot(), "\n"), c.name, b)
		}
	})
	return c
}

func (c *contender) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// count is how many lines start with prefix.
func (c *contender) count(prefix string) int {
	n := 0
	for _, l := range c.snapshot() {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// last is the number after the last line that starts with prefix, or 0.
func (c *contender) last(prefix string) int32 {
	var v int32
	for _, l := range c.snapshot() {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(rest))
			v = int32(n)
		}
	}
	return v
}

// waitAny waits until one of cs has written n lines starting with prefix, and returns it.
func waitAny(t *testing.T, ctx context.Context, prefix string, n int, cs ...*contender) *contender {
	t.Helper()
	for {
		var waits []chan struct{}
		for _, c := range cs {
			c.mu.Lock()
			waits = append(waits, c.seen)
			c.mu.Unlock()
			if c.count(prefix) >= n {
				return c
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %q ×%d from %d contenders: %v", prefix, n, len(cs), ctx.Err())
		case <-waits[0]:
		case <-time.After(20 * time.Millisecond): // the others' lines
		}
	}
}

func slotHolder(t *testing.T, ctx context.Context, conn *pgx.Conn, slot string) int32 {
	t.Helper()
	var pid *int32
	if err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if pid == nil {
		return 0
	}
	return *pid
}

// TestElectorTakeover runs contender processes for one slot: SIGKILL of the leader (its
// kernel closes the connection, PostgreSQL frees the slot at once) and SIGSTOP of the next
// (a frozen process or dead machine: PostgreSQL keeps its walsender for wal_sender_timeout,
// here the server's 60s, so the standby must end it once the leader's registry entry
// expires). Each time a standby takes over; the measured takeover times are logged.
func TestElectorTakeover(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	bin := buildContender(t)
	lc := startOneServer(t, ctx)
	dsn := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	slot := conn.Config().Database // slots are cluster-wide: one per test database
	args := []string{"-dsn", dsn, "-slot", slot, "-nats", strings.Join(lc.URLs(), ","), "-sender-timeout", "-1s"}
	insert := func(id int) {
		t.Helper()
		if _, err := conn.Exec(ctx, "INSERT INTO t VALUES ($1)", id); err != nil {
			t.Fatal(err)
		}
	}

	a, b := startContender(t, bin, "a", args...), startContender(t, bin, "b", args...)
	leader := waitAny(t, ctx, "leading", 1, a, b)
	standby := a
	if leader == a {
		standby = b
	}
	waitAny(t, ctx, "claim", 1, standby)
	insert(1)
	waitAny(t, ctx, "event 1", 1, leader)
	if n := standby.count("leading"); n != 0 {
		t.Fatalf("standby %s leads too", standby.name)
	}

	// SIGKILL: the process dies, its connection closes.
	killed := time.Now()
	if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitAny(t, ctx, "leading", 1, standby)
	t.Logf("takeover after SIGKILL of the leader: %s", time.Since(killed).Round(time.Millisecond))
	if got, want := slotHolder(t, ctx, conn, slot), standby.last("leading"); got != want {
		t.Fatalf("slot held by pid %d, want the new leader's %d", got, want)
	}
	insert(2)
	waitAny(t, ctx, "event 2", 1, standby)

	// SIGSTOP: the process freezes with its connection open; PostgreSQL keeps the slot
	// active until the standby ends the walsender.
	frozen, next := standby, startContender(t, bin, "c", args...)
	waitAny(t, ctx, "claim", 1, next)
	frozenPID := slotHolder(t, ctx, conn, slot)
	stopped := time.Now()
	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitAny(t, ctx, "leading", 1, next)
	t.Logf("takeover after SIGSTOP of the leader (walsender ended by the standby): %s", time.Since(stopped).Round(time.Millisecond))
	if log, _ := os.ReadFile(next.log); !strings.Contains(string(log), "ending the slot's walsender") || !strings.Contains(string(log), fmt.Sprintf("active_pid=%d", frozenPID)) {
		t.Fatalf("the standby did not end the frozen leader's walsender %d:\n%s", frozenPID, log)
	}
	insert(3)
	waitAny(t, ctx, "event 3", 1, next)

	// The frozen leader wakes up: its connection is gone, so it contends again, as a
	// standby.
	claims := frozen.count("claim")
	if err := frozen.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitAny(t, ctx, "claim", claims+1, frozen)
	if got, want := slotHolder(t, ctx, conn, slot), next.last("leading"); got != want {
		t.Fatalf("after the old leader woke up, the slot is held by pid %d, want the new leader's %d", got, want)
	}
	if n := frozen.count("leading"); n != 1 {
		t.Fatalf("the woken leader led %d times, want once (before it froze)", n)
	}
	// Row 3 was committed after its walsender ended: the deposed leader never got it.
	if frozen.count("event 3") != 0 {
		t.Fatal("the deposed leader appended row 3, committed after it lost the slot")
	}
}

// TestTakeoverBySenderTimeout freezes the leader while the standby never ends walsenders
// itself (as when the leader still heartbeats but its network to PostgreSQL is cut): the
// per-connection wal_sender_timeout (pgwal.Standby.SenderTimeout, 5s) frees the slot. With
// the server's 60s, the wait below would time out.
func TestTakeoverBySenderTimeout(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	bin := buildContender(t)
	lc := startOneServer(t, ctx)
	dsn := pgtest.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	slot := conn.Config().Database
	args := []string{"-dsn", dsn, "-slot", slot, "-nats", strings.Join(lc.URLs(), ","), "-no-holder-check"}
	a, b := startContender(t, bin, "a", args...), startContender(t, bin, "b", args...)
	leader := waitAny(t, ctx, "leading", 1, a, b)
	standby := a
	if leader == a {
		standby = b
	}
	waitAny(t, ctx, "claim", 1, standby)
	stopped := time.Now()
	if err := leader.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 40*time.Second)
	defer cancel()
	waitAny(t, wctx, "leading", 1, standby)
	t.Logf("takeover after SIGSTOP of the leader, freed by wal_sender_timeout: %s", time.Since(stopped).Round(time.Millisecond))
	if log, _ := os.ReadFile(standby.log); strings.Contains(string(log), "ending the slot's walsender") {
		t.Fatal("the standby ended the walsender itself; this test is about wal_sender_timeout")
	}
	if _, err := conn.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	waitAny(t, ctx, "event 1", 1, standby)
}
