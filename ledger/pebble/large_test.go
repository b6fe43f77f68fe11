package pebble

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
)

// largeChildEnv names the directory the child process of TestLargeTransaction writes to.
const largeChildEnv = "WALFLOW_LEDGER_LARGE_CHILD"

// The race detector multiplies memory and time, so under -race the transaction is smaller
// and the bound looser; the full-size figure is checked by the plain build and by
// internal/faulttest, whose pipeline child is built without the race detector.
var (
	largeEvents  = event.Position(1_000_000)
	largeMaxPeak = 160 << 20 // bytes of peak RSS allowed
)

func init() {
	if raceEnabled {
		largeEvents, largeMaxPeak = 200_000, 400<<20
	}
}

// largeChild appends one transaction of largeEvents events, commits and syncs it, and
// prints its peak RSS in bytes.
func largeChild(dir string) {
	ctx := context.Background()
	fail := func(err error) {
		fmt.Println("error", err)
		os.Exit(1)
	}
	l, err := Open(ctx, dir, &Options{Indexer: ledgertest.Indexer})
	if err != nil {
		fail(err)
	}
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 1}); err != nil {
		fail(err)
	}
	e := ledgertest.Event(1, 0, "comments", 0)
	for i := range int(largeEvents) {
		e.Ordinal = uint32(i)
		e.NewRecord[0].Value = event.Text(23, strconv.Itoa(i%1000))
		if err := l.Append(ctx, e); err != nil {
			fail(err)
		}
	}
	if err := l.CommitTx(ctx, 2); err != nil {
		fail(err)
	}
	if err := l.Sync(ctx); err != nil {
		fail(err)
	}
	if err := l.Close(); err != nil {
		fail(err)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fail(err)
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				fail(err)
			}
			fmt.Println("peak", kb<<10)
			os.Exit(0)
		}
	}
	fail(fmt.Errorf("no VmHWM in /proc/self/status"))
}

// TestLargeTransaction appends a transaction of a million events in a child process and
// checks that its peak RSS stays small: a transaction is streamed, never held in memory.
func TestLargeTransaction(t *testing.T) {
	if dir := os.Getenv(largeChildEnv); dir != "" {
		largeChild(dir)
		return
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Fatal("TestLargeTransaction measures peak RSS from /proc/self/status, which this system lacks: run it on Linux")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLargeTransaction$")
	cmd.Env = append(os.Environ(), largeChildEnv+"="+dir)
	cmd.Stderr = os.Stderr
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	elapsed := time.Since(start)
	var peak int
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "peak "); ok {
			peak, _ = strconv.Atoi(v)
		}
	}
	if peak == 0 {
		t.Fatalf("child printed no peak RSS: %s", out)
	}
	t.Logf("%d events in one transaction: %v, peak RSS %d MiB", largeEvents, elapsed.Round(time.Millisecond), peak>>20)
	if peak > largeMaxPeak {
		t.Fatalf("peak RSS %d MiB, want at most %d MiB", peak>>20, largeMaxPeak>>20)
	}
	l := mustOpen(t, dir, &Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	if st := l.State(); st.Head != largeEvents {
		t.Fatalf("head %d, want %d", st.Head, largeEvents)
	}
	es, err := l.ReadKeys(context.Background(), []string{"comments/999"}, largeEvents-2000, 10)
	if err != nil || len(es) != 2 || es[1].Position != largeEvents {
		t.Fatalf("ReadKeys at the end = %d events, %v", len(es), err)
	}
}
