package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// gatewayChild is a running internal/testcmd/gateway.
type gatewayChild struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	addr    string
	logPath string
	stats   chan childStats
	exited  chan struct{}
	waitErr error
}

// childStats is the child's stats line.
type childStats struct {
	Baseline     *childBaseline `json:"baseline"`
	Gateway      childGateway   `json:"gateway"`
	VmHWMKiB     int64          `json:"vmhwm_kib"`
	CPUSeconds   float64        `json:"cpu_seconds"`
	GCCycles     uint64         `json:"gc_cycles"`
	GCCPUSeconds float64        `json:"gc_cpu_seconds"`
	SchedP99Ms   float64        `json:"sched_p99_ms"`
	SchedMaxMs   float64        `json:"sched_max_ms"`
}

type childBaseline struct {
	Events     int     `json:"events"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	OutOfOrder int     `json:"out_of_order"`
	Unmatched  int     `json:"unmatched"`
	Error      string  `json:"error"`
	Channels   map[string]struct {
		Events int    `json:"events"`
		Hash   uint64 `json:"hash"`
	} `json:"channels"`
}

type childGateway struct {
	ConnectionsTotal uint64            `json:"connections_total"`
	MessagesSent     uint64            `json:"messages_sent"`
	Rejected         map[string]uint64 `json:"rejected"`
	Disconnects      map[string]uint64 `json:"disconnects"`
}

// startGateway starts the child on dsn with a baseline subscriber on chans, and waits for
// its address. It is killed when tb ends if it is still running then.
func startGateway(tb testing.TB, bin, dsn string, chans []string, opts fanoutOpts) *gatewayChild {
	tb.Helper()
	dir := tb.TempDir()
	args := []string{"-dsn", dsn, "-ledger", filepath.Join(dir, "ledger"), "-slot", "fanout",
		"-tables", "posts,comments=posts/{post_id}", "-channels", strings.Join(chans, ","),
		"-max-connections", "20000", "-buffer", strconv.Itoa(opts.Buffer), "-flush", opts.Flush.String()}
	if opts.MemProfile != "" {
		args = append(args, "-memprofile", opts.MemProfile)
	}
	if opts.CPUProfile != "" {
		args = append(args, "-cpuprofile", opts.CPUProfile)
	}
	c := &gatewayChild{cmd: exec.Command(bin, args...), logPath: filepath.Join(dir, "gateway.log"),
		stats: make(chan childStats, 1), exited: make(chan struct{})}
	c.cmd.Env = withoutPGEnv()
	logFile, err := os.Create(c.logPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer logFile.Close()
	c.cmd.Stderr = logFile
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		tb.Fatalf("start the gateway: %v", err)
	}
	addr := make(chan string, 1)
	go func() {
		defer close(c.exited)
		s := bufio.NewScanner(stdout)
		s.Buffer(nil, 1<<20)
		for s.Scan() {
			if a, ok := strings.CutPrefix(s.Text(), "listening "); ok {
				addr <- a
			} else if j, ok := strings.CutPrefix(s.Text(), "stats "); ok {
				var st childStats
				if err := json.Unmarshal([]byte(j), &st); err == nil && st.Baseline != nil {
					c.stats <- st
				}
			}
		}
		c.waitErr = c.cmd.Wait()
	}()
	tb.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
	select {
	case c.addr = <-addr:
		return c
	case <-c.exited:
		c.logTail(tb, 30)
		tb.Fatalf("the gateway exited before listening: %v", c.waitErr)
	case <-time.After(2 * time.Minute):
		c.logTail(tb, 30)
		tb.Fatal("the gateway did not listen within 2 minutes")
	}
	return nil
}

// stop closes the child's stdin, which stops it gracefully, and returns its stats.
func (c *gatewayChild) stop(tb testing.TB) childStats {
	tb.Helper()
	_ = c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(2 * time.Minute):
		_ = c.cmd.Process.Kill()
		<-c.exited
		c.logTail(tb, 30)
		tb.Fatal("the gateway did not stop within 2 minutes of the end of its stdin")
	}
	select {
	case st := <-c.stats:
		if c.waitErr != nil {
			tb.Logf("the gateway exited with %v after its stats", c.waitErr)
		}
		return st
	default:
		c.logTail(tb, 30)
		tb.Fatalf("the gateway exited without stats: %v", c.waitErr)
	}
	return childStats{}
}

func (c *gatewayChild) logTail(tb testing.TB, n int) {
	tb.Helper()
	b, _ := os.ReadFile(c.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	tb.Logf("--- gateway log, last %d lines ---\n%s", len(lines), strings.Join(lines, "\n"))
}

// buildGateway builds internal/testcmd/gateway into a temporary directory, without -race so
// that its memory and speed are what users get.
func buildGateway(tb testing.TB) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goBin, err = filepath.Join(root, "bin", "go"), nil
		}
	}
	if err != nil {
		tb.Fatalf("the go command is needed to build the gateway child process: %v; put it in PATH", err)
	}
	bin := filepath.Join(tb.TempDir(), "gateway")
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "github.com/walflow/walflow/internal/testcmd/gateway")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build the gateway: %v\n%s", err, out)
	}
	return bin
}

// pidStatus reads a memory figure of /proc/PID/status (VmHWM, VmRSS), in bytes.
func pidStatus(pid int, name string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse %s %q: %w", name, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s line in /proc/%d/status", name, pid)
}
