package ledgertest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Dir is a ledger backend that keeps its ledger in a directory, as [RunDir] tests it.
type Dir struct {
	// Open opens the ledger in dir, creating it when missing, with [Indexer] as its
	// indexer. With small set, it writes in small chunks and segments (where the backend has
	// them), so that a crash cuts more transactions mid-way.
	Open func(ctx context.Context, dir string, small bool) (ledger.Ledger, error)
	// OnDisk, when set, checks the files a crashed and recovered ledger left in dir, after
	// it was closed: they must hold the events at positions 1..st.Head and no more, and
	// the index entries keys (a key's positions, ascending) and no others. It reports what
	// disagrees with t.Fatalf.
	OnDisk func(t *testing.T, dir string, st ledger.State, keys map[string][]event.Position)
	// RaceMaxRSS, when set, replaces the large transaction's peak RSS bound under the race
	// detector, whose shadow memory multiplies what the backend's own buffers (memtables)
	// use and varies with how far its background work falls behind.
	RaceMaxRSS int
}

// childEnv tells a test binary re-run by RunDir which child to be ("crash", "large" or
// "hold") and in which directory: "kind:dir".
const childEnv = "WALFLOW_LEDGERTEST_CHILD"

// RunDir runs the tests of a directory backend that need whole processes: a writer killed
// (SIGKILL) at random moments keeps every synced transaction and nothing partial; a
// million-event transaction streams through a bounded amount of memory; and a directory
// another process holds is refused with a [ledger.InUseError] naming it. Call it from a
// top-level test of its own: RunDir re-runs that test in child processes, in which it
// plays the child and exits.
func RunDir(t *testing.T, d Dir) {
	if v := os.Getenv(childEnv); v != "" {
		kind, dir, _ := strings.Cut(v, ":")
		runChild(d, kind, dir)
		return
	}
	t.Run("crash", func(t *testing.T) { t.Parallel(); testCrash(t, d) })
	t.Run("large_transaction", func(t *testing.T) { testLargeTx(t, d) })
	t.Run("in_use", func(t *testing.T) { t.Parallel(); testInUse(t, d) })
}

// child returns the command that re-runs the calling top-level test as a child of kind,
// working in dir.
func child(t *testing.T, kind, dir string) *exec.Cmd {
	top, _, _ := strings.Cut(t.Name(), "/")
	cmd := exec.Command(os.Args[0], "-test.run=^"+top+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+kind+":"+dir)
	cmd.Stderr = os.Stderr
	return cmd
}

func runChild(d Dir, kind, dir string) {
	ctx := context.Background()
	fail := func(err error) {
		fmt.Println("error", err)
		os.Exit(1)
	}
	l, err := d.Open(ctx, dir, kind == "crash")
	if err != nil {
		fail(err)
	}
	switch kind {
	case "crash":
		crashChild(ctx, l, fail)
	case "large":
		largeChild(ctx, l, fail)
	case "hold":
		fmt.Println("open")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		l.Close()
	default:
		fail(fmt.Errorf("ledgertest: unknown child %q", kind))
	}
	os.Exit(0)
}

// crashTxSize is the number of events of the transaction committed at lsn: every fifth
// is large, so that a kill often lands in the middle of one that spans many chunks.
func crashTxSize(lsn event.LSN) int {
	if lsn%5 == 0 {
		return 400
	}
	return 1 + int(lsn%13)
}

func crashEvent(lsn event.LSN, ordinal int) *event.Event {
	return Event(lsn, uint32(ordinal), []string{"a", "b", "c"}[ordinal%3], ordinal%50)
}

// crashChild appends transactions until it is killed, printing "synced LSN" for each
// transaction once Sync has returned.
func crashChild(ctx context.Context, l ledger.Ledger, fail func(error)) {
	lsn := l.State().LastCommitLSN
	var unsynced []event.LSN
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		lsn++
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			fail(err)
		}
		for j := range crashTxSize(lsn) {
			if err := l.Append(ctx, crashEvent(lsn, j)); err != nil {
				fail(err)
			}
		}
		if err := l.CommitTx(ctx, lsn+1); err != nil {
			fail(err)
		}
		unsynced = append(unsynced, lsn)
		if i%3 == 1 {
			continue // sync two transactions at once now and then
		}
		if err := l.Sync(ctx); err != nil {
			fail(err)
		}
		var b strings.Builder
		for _, s := range unsynced {
			fmt.Fprintf(&b, "synced %d\n", s)
		}
		os.Stdout.WriteString(b.String())
		unsynced = unsynced[:0]
	}
}

// testCrash kills a process that appends transactions at a random moment, three times,
// and checks after each that the ledger holds every transaction it reported synced, whole,
// at gap-free positions, and nothing else, with an index that agrees with the events.
func testCrash(t *testing.T, d Dir) {
	dir := t.TempDir()
	var synced []event.LSN
	for round := range 3 {
		cmd := child(t, "crash", dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// Kill after a few synced transactions, at a random moment.
		want := len(synced) + 10 + rand.IntN(10)
		timeout := time.After(60 * time.Second)
	read:
		for len(synced) < want {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("round %d: the child exited: %v", round, cmd.Wait())
				}
				v, found := strings.CutPrefix(line, "synced ")
				if !found {
					t.Fatalf("round %d: child: %s", round, line)
				}
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				synced = append(synced, event.LSN(n))
			case <-timeout:
				break read
			}
		}
		time.Sleep(time.Duration(rand.IntN(20_000)) * time.Microsecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		for line := range lines { // what the child printed before it died
			if v, found := strings.CutPrefix(line, "synced "); found {
				n, _ := strconv.ParseUint(v, 10, 64)
				synced = append(synced, event.LSN(n))
			}
		}
		_ = cmd.Wait() // killed: the error says so
		if len(synced) == 0 {
			t.Fatalf("round %d: the child synced nothing", round)
		}
		checkCrashed(t, d, dir, synced)
	}
}

// checkCrashed checks the ledger a killed child left in dir.
func checkCrashed(t *testing.T, d Dir, dir string, synced []event.LSN) {
	t.Helper()
	ctx := context.Background()
	l, err := d.Open(ctx, dir, true)
	if err != nil {
		t.Fatalf("open after the crash: %v", err)
	}
	st := l.State()
	all := ReadAll(t, l)
	if event.Position(len(all)) != st.Head {
		t.Fatalf("read %d events, head %d", len(all), st.Head)
	}
	// Whole transactions at gap-free positions, in LSN order.
	var lsns []event.LSN
	for i, e := range all {
		if e.Position != event.Position(i+1) {
			t.Fatalf("event %d at position %d", i, e.Position)
		}
		if i == 0 || e.LSN != all[i-1].LSN {
			if i > 0 && e.LSN <= all[i-1].LSN {
				t.Fatalf("LSN %s after %s", e.LSN, all[i-1].LSN)
			}
			lsns = append(lsns, e.LSN)
			if e.Ordinal != 0 {
				t.Fatalf("transaction %s starts at ordinal %d", e.LSN, e.Ordinal)
			}
		} else if e.Ordinal != all[i-1].Ordinal+1 {
			t.Fatalf("transaction %s: ordinal %d after %d", e.LSN, e.Ordinal, all[i-1].Ordinal)
		}
		if last := i == len(all)-1 || all[i+1].LSN != e.LSN; last && int(e.Ordinal) != crashTxSize(e.LSN)-1 {
			t.Fatalf("transaction %s ends at ordinal %d of %d", e.LSN, e.Ordinal, crashTxSize(e.LSN))
		}
		if want := crashEvent(e.LSN, int(e.Ordinal)); e.Name != want.Name || !slices.Equal(e.NewRecord, want.NewRecord) {
			t.Fatalf("event %d is not the one written", e.Position)
		}
	}
	if len(lsns) > 0 && lsns[len(lsns)-1] != st.LastCommitLSN {
		t.Fatalf("last transaction %s, state says %s", lsns[len(lsns)-1], st.LastCommitLSN)
	}
	for _, s := range synced {
		if _, found := slices.BinarySearch(lsns, s); !found {
			t.Fatalf("synced transaction %s is missing (last %s)", s, st.LastCommitLSN)
		}
	}
	// The index agrees with the events.
	keys := map[string][]event.Position{}
	for _, e := range all {
		for _, k := range Indexer(&e, nil) {
			keys[k] = append(keys[k], e.Position)
		}
	}
	for k, ps := range keys {
		es, err := l.ReadKeys(ctx, []string{k}, 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if got := positions(es); !slices.Equal(got, ps) {
			t.Fatalf("ReadKeys(%s) = %d events, want %d", k, len(got), len(ps))
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if d.OnDisk != nil {
		d.OnDisk(t, dir, st, keys)
	}
	t.Logf("recovered %d transactions, %d events; %d reported synced", len(lsns), len(all), len(synced))
}

// The race detector multiplies memory and time, so under -race the transaction is smaller;
// its bound stays, as a transaction held in memory until commit still passes it by far
// (the disk backend: 60 MiB streaming, 340 MiB holding 200,000 events); a backend whose
// buffers the detector inflates sets [Dir].RaceMaxRSS. The full size runs in the plain
// build and in internal/faulttest, whose pipeline child is built without the race detector.
var (
	largeEvents  = event.Position(1_000_000)
	largeMaxPeak = 160 << 20 // bytes of peak RSS allowed
)

func init() {
	if raceEnabled {
		largeEvents = 200_000
	}
}

// largeChild appends one transaction of largeEvents events, commits and syncs it, and
// prints its peak RSS in bytes.
func largeChild(ctx context.Context, l ledger.Ledger, fail func(error)) {
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 1}); err != nil {
		fail(err)
	}
	e := Event(1, 0, "comments", 0)
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
			return
		}
	}
	fail(errors.New("no VmHWM in /proc/self/status"))
}

// testLargeTx appends a transaction of a million events in a child process and checks
// that its peak RSS stays small: a transaction is streamed, never held in memory.
func testLargeTx(t *testing.T, d Dir) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Fatal("the large transaction test measures peak RSS from /proc/self/status, which this system lacks: run it on Linux")
	}
	dir := t.TempDir()
	start := time.Now()
	out, err := child(t, "large", dir).Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	elapsed := time.Since(start)
	var peak int
	for line := range strings.Lines(string(out)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "peak "); ok {
			peak, _ = strconv.Atoi(v)
		}
	}
	if peak == 0 {
		t.Fatalf("child printed no peak RSS: %s", out)
	}
	t.Logf("%d events in one transaction: %v, peak RSS %d MiB", largeEvents, elapsed.Round(time.Millisecond), peak>>20)
	maxPeak := largeMaxPeak
	if raceEnabled && d.RaceMaxRSS > 0 {
		maxPeak = d.RaceMaxRSS
	}
	if peak > maxPeak {
		t.Fatalf("peak RSS %d MiB, want at most %d MiB", peak>>20, maxPeak>>20)
	}
	l, err := d.Open(context.Background(), dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if st := l.State(); st.Head != largeEvents {
		t.Fatalf("head %d, want %d", st.Head, largeEvents)
	}
	es, err := l.ReadKeys(context.Background(), []string{"comments/999"}, largeEvents-2000, 10)
	if err != nil || len(es) != 2 || es[1].Position != largeEvents {
		t.Fatalf("ReadKeys at the end = %d events, %v", len(es), err)
	}
}

// testInUse opens a ledger directory that another process holds, then one that this
// process holds, and checks that the error names the directory and the holding process.
func testInUse(t *testing.T, d Dir) {
	ctx := context.Background()
	t.Run("another process", func(t *testing.T) {
		dir := t.TempDir()
		cmd := child(t, "hold", dir)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			stdin.Close() // the child closes its ledger and exits
			if err := cmd.Wait(); err != nil {
				t.Errorf("the child: %v", err)
			}
		}()
		line, err := bufio.NewReader(out).ReadString('\n')
		if line != "open\n" {
			t.Fatalf("the child said %q (%v), not open", line, err)
		}
		_, err = d.Open(ctx, dir, false)
		var iu *ledger.InUseError
		if !errors.As(err, &iu) {
			t.Fatalf("Open of a directory another process holds = %v, not an InUseError", err)
		}
		if iu.Dir != dir || iu.PID != cmd.Process.Pid || !strings.HasPrefix(iu.Command, os.Args[0]+" -test.run=") {
			t.Errorf("InUseError{Dir: %q, PID: %d, Command: %q}, want the directory %q and the child %d (%s -test.run=...)", iu.Dir, iu.PID, iu.Command, dir, cmd.Process.Pid, os.Args[0])
		}
		want := fmt.Sprintf("ledger: the directory %s is in use by process %d (%s); a ledger directory serves one walflow at a time: stop that process first, or give this one another directory", dir, cmd.Process.Pid, iu.Command)
		if err.Error() != want {
			t.Errorf("Open of a directory another process holds:\n got %s\nwant %s", err, want)
		}
	})
	t.Run("this process", func(t *testing.T) {
		dir := t.TempDir()
		l, err := d.Open(ctx, dir, false)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, err = d.Open(ctx, dir, false)
		var iu *ledger.InUseError
		if !errors.As(err, &iu) || iu.Dir != dir || iu.PID != os.Getpid() || iu.Command == "" {
			t.Fatalf("Open of a directory this process holds = %v (%#v), want an InUseError naming %s and pid %d", err, iu, dir, os.Getpid())
		}
	})
	t.Run("not a lock failure", func(t *testing.T) {
		file := t.TempDir() + "/file"
		if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := d.Open(ctx, file, false)
		var iu *ledger.InUseError
		if err == nil || errors.As(err, &iu) {
			t.Fatalf("Open of a file = %v, want an error that is not an InUseError", err)
		}
	})
}
