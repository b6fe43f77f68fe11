package disk

import (
	"bufio"
	"context"
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
	"github.com/walflow/walflow/ledger/ledgertest"
)

// crashChildEnv names the directory the child process of TestCrashKill writes to.
const crashChildEnv = "WALFLOW_LEDGER_CRASH_CHILD"

// crashTxSize is the number of events of the transaction committed at lsn: every fifth
// is large, so that a kill often lands in the middle of one that spans many chunks.
func crashTxSize(lsn event.LSN) int {
	if lsn%5 == 0 {
		return 400
	}
	return 1 + int(lsn%13)
}

func crashEvent(lsn event.LSN, ordinal int) *event.Event {
	return ledgertest.Event(lsn, uint32(ordinal), []string{"a", "b", "c"}[ordinal%3], ordinal%50)
}

var crashOpts = &Options{Indexer: ledgertest.Indexer, ChunkBytes: 4096, SegmentBytes: 64 << 10}

// crashChild appends transactions until it is killed, printing "synced LSN" for each
// transaction once Sync has returned.
func crashChild(dir string) {
	ctx := context.Background()
	l, err := Open(ctx, dir, crashOpts)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	lsn := l.State().LastCommitLSN
	var unsynced []event.LSN
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		lsn++
		if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		for j := range crashTxSize(lsn) {
			if err := l.Append(ctx, crashEvent(lsn, j)); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
		if err := l.CommitTx(ctx, lsn+1); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		unsynced = append(unsynced, lsn)
		if i%3 == 1 {
			continue // sync two transactions at once now and then
		}
		if err := l.Sync(ctx); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		var b strings.Builder
		for _, s := range unsynced {
			fmt.Fprintf(&b, "synced %d\n", s)
		}
		os.Stdout.WriteString(b.String())
		unsynced = unsynced[:0]
	}
	os.Exit(0)
}

// TestCrashKill kills a process that appends transactions at a random moment, then
// checks that the ledger holds every transaction it reported synced, whole, at gap-free
// positions, and nothing else, with an index that agrees with the events.
func TestCrashKill(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	var synced []event.LSN
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKill$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		cmd.Stderr = os.Stderr
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
		cmd.Wait()
		if len(synced) == 0 {
			t.Fatalf("round %d: the child synced nothing", round)
		}
		checkCrashed(t, dir, synced)
	}
}

// checkCrashed checks the ledger a killed child left in dir.
func checkCrashed(t *testing.T, dir string, synced []event.LSN) {
	t.Helper()
	ctx := context.Background()
	before := rawScanTolerant(t, dir, true)
	l := mustOpen(t, dir, crashOpts)
	st := l.State()
	all := readAll(t, l)
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
	model := map[string][]event.Position{}
	for _, e := range all {
		for _, k := range ledgertest.Indexer(&e, nil) {
			model[k] = append(model[k], e.Position)
		}
	}
	for k, ps := range model {
		es, err := l.ReadKeys(ctx, []string{k}, 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]event.Position, 0, len(es))
		for _, e := range es {
			got = append(got, e.Position)
		}
		if !slices.Equal(got, ps) {
			t.Fatalf("ReadKeys(%s) = %d events, want %d", k, len(got), len(ps))
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r := rawScan(t, dir)
	if !slices.Equal(r.events, span(1, st.Head)) || len(r.commits) == 0 || r.commits[len(r.commits)-1] != st.Head {
		t.Fatalf("on disk after recovery: %d event records (head %d), last commit records %v", len(r.events), st.Head, r.commits[max(0, len(r.commits)-3):])
	}
	t.Logf("recovered %d transactions, %d events; %d reported synced; recovery removed %d events",
		len(lsns), len(all), len(synced), before.eventsPast(st.Head))
}

// span returns the positions from..to.
func span(from, to event.Position) []event.Position {
	ps := []event.Position{}
	for p := from; p <= to; p++ {
		ps = append(ps, p)
	}
	return ps
}
