package ledgertest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// DirCases is a backend that keeps its ledger in a directory, as the in-process tests
// [Reopen], [InterruptedTx], [TruncateReopen] and [OpenErrors] drive it. Each backend calls
// them from its own tests of those names; its hooks check what only its files can show.
type DirCases struct {
	// OpenFunc opens the ledger in dir, creating it when missing, with [Indexer] as its
	// indexer, and with chunks (and segments, where the backend has them) small enough that
	// a transaction of a hundred events spans many.
	OpenFunc func(ctx context.Context, dir string) (ledger.Ledger, error)
	// CrashFunc drops l as a killed process would: what was written and not synced stays
	// in the directory as it lies, the directory's lock is released, and l is not used
	// again.
	CrashFunc func(l ledger.Ledger)
	// LosesUnsynced says that a crash loses every transaction committed after the last
	// Sync, so [InterruptedTx] writes one before the interrupted transaction and checks
	// that it is gone. A backend that keeps some of them (in a segment that a later write
	// sealed and synced) leaves it unset.
	LosesUnsynced bool
	// ReopenedFunc, when set, checks the files [Reopen] left in dir after it wrote 50
	// events in 20 transactions and closed the ledger.
	ReopenedFunc func(t *testing.T, dir string)
	// CrashedFunc checks the files [InterruptedTx] left in dir after the crash: a synced
	// head of 2 and a hundred or more events past it.
	CrashedFunc func(t *testing.T, dir string)
	// RecoveredFunc checks the files [InterruptedTx] left in dir after Open recovered the
	// crashed ledger and Close closed it: the events at positions 1 and 2 (keys a, a/1, b,
	// b/2) and nothing past them.
	RecoveredFunc func(t *testing.T, dir string)
	// TruncatedFunc checks the files [TruncateReopen] left in dir after it wrote written
	// (positions 1..120), truncated through tail and closed the ledger: nothing at or
	// before tail (or nothing more than the backend's unit of removal holds) and
	// everything after it.
	TruncatedFunc func(t *testing.T, dir string, tail event.Position, written []*event.Event)
	// TruncatedAllFunc checks the files in dir after [TruncateReopen] truncated every
	// event of the open ledger l. It may close l.
	TruncatedAllFunc func(t *testing.T, dir string, l ledger.Ledger)
}

// open opens the ledger in dir, failing t when it cannot.
func (d DirCases) open(t *testing.T, dir string) ledger.Ledger {
	t.Helper()
	l, err := d.OpenFunc(context.Background(), dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

// ReadAll returns every event of l that a reader sees.
func ReadAll(t testing.TB, l ledger.Ledger) []event.Event {
	t.Helper()
	es, err := l.Read(context.Background(), 0, 1<<30)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return es
}

// Span returns the positions from..to, empty (not nil) when to is before from.
func Span(from, to event.Position) []event.Position {
	ps := []event.Position{}
	for p := from; p <= to; p++ {
		ps = append(ps, p)
	}
	return ps
}

// WriteTxs writes n transactions of size events each from lsn, of the tables a and b in
// turn with ids cycling through 5, Syncs, and returns the events.
func WriteTxs(t testing.TB, l ledger.Ledger, lsn event.LSN, n, size int) []*event.Event {
	t.Helper()
	var all []*event.Event
	for i := range n {
		var es []*event.Event
		for j := range size {
			es = append(es, Event(lsn+event.LSN(i), uint32(j), []string{"a", "b"}[j%2], (i+j)%5))
		}
		WriteTx(t, l, lsn+event.LSN(i), es...)
		all = append(all, es...)
	}
	mustSync(t, l)
	return all
}

// Reopen writes, syncs, acknowledges and closes a ledger, then checks that reopening it
// gives the same state, events and index, refuses a commit LSN already written, and goes on
// from the next position.
func Reopen(t *testing.T, d DirCases) {
	ctx := context.Background()
	dir := t.TempDir()
	l := d.open(t, dir)
	for i := range 20 {
		lsn := event.LSN(100 + i)
		var es []*event.Event
		for j := range 1 + i%4 {
			es = append(es, Event(lsn, uint32(j), []string{"a", "b"}[j%2], i))
		}
		WriteTx(t, l, lsn, es...)
	}
	o := ledger.Origin{SystemID: "7340422612718047236", Timeline: 2, Database: "app", Slot: "walflow_1"}
	if err := l.SetOrigin(ctx, o); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.SetAcked(ctx, 110); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	all := ReadAll(t, l)
	byKey, err := l.ReadKeys(ctx, []string{"b", "a/3"}, 5, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); !errors.Is(err, ledger.ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}
	if d.ReopenedFunc != nil {
		d.ReopenedFunc(t, dir)
	}

	l = d.open(t, dir)
	defer l.Close()
	want := ledger.State{Head: 50, LastCommitLSN: 119, LastEndLSN: 120, AckedLSN: 110, Origin: o}
	if st != want || l.State() != want {
		t.Fatalf("State before Close %+v, after reopening %+v; want %+v", st, l.State(), want)
	}
	if got := ReadAll(t, l); !reflect.DeepEqual(got, all) {
		t.Fatal("events differ after reopening")
	}
	got, err := l.ReadKeys(ctx, []string{"b", "a/3"}, 5, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, byKey) || len(got) == 0 {
		t.Fatalf("ReadKeys differs after reopening: %d events, then %d", len(byKey), len(got))
	}
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 119}); !errors.Is(err, ledger.ErrOutOfOrder) {
		t.Fatalf("BeginTx(119) after reopening = %v, want ErrOutOfOrder", err)
	}
	if ps := WriteTx(t, l, 200, Event(200, 0, "a", 1)); ps[0] != 51 {
		t.Fatalf("first position after reopening = %d, want 51", ps[0])
	}
}

// InterruptedTx crashes a ledger after a synced transaction, a committed but unsynced one
// (with [DirCases.LosesUnsynced]), and one of 200 events that spans many chunks, open or
// committed without Sync. It checks that Open removes the records and index entries of
// the unsynced transactions and reuses their positions, while what was synced stays.
func InterruptedTx(t *testing.T, d DirCases) {
	for _, tc := range []struct {
		name   string
		commit bool // commit the transaction, but do not Sync
	}{{"open", false}, {"committed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			l := d.open(t, dir)
			WriteTx(t, l, 10, Event(10, 0, "a", 1), Event(10, 1, "b", 2))
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			st := l.State()
			if d.LosesUnsynced {
				WriteTx(t, l, 15, Event(15, 0, "a", 3)) // committed, not synced
			}
			if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 20}); err != nil {
				t.Fatal(err)
			}
			for i := range 200 {
				if err := l.Append(ctx, Event(20, uint32(i), "partial", i)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.commit {
				if err := l.CommitTx(ctx, 21); err != nil {
					t.Fatal(err)
				}
			}
			d.CrashFunc(l)
			d.CrashedFunc(t, dir)

			l = d.open(t, dir)
			if got := l.State(); got != st {
				t.Fatalf("State after recovery = %+v, want %+v", got, st)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			d.RecoveredFunc(t, dir)

			l = d.open(t, dir)
			defer l.Close()
			ps := WriteTx(t, l, 15, Event(15, 0, "c", 3), Event(15, 1, "c", 4))
			if !slices.Equal(ps, []event.Position{3, 4}) {
				t.Fatalf("positions after recovery = %v, want [3 4]", ps)
			}
			if err := l.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"partial", "partial/0", "partial/1", "a/3"} {
				if es, err := l.ReadKeys(ctx, []string{k}, 0, 100); err != nil || len(es) != 0 {
					t.Fatalf("ReadKeys(%s) = %d events, %v; want none", k, len(es), err)
				}
			}
			es, err := l.ReadKeys(ctx, []string{"c", "a"}, 0, 100)
			if err != nil || len(es) != 3 || es[0].Position != 1 || es[1].Position != 3 {
				t.Fatalf("ReadKeys(c, a) = %d events, %v", len(es), err)
			}
		})
	}
}

// TruncateReopen truncates a synced ledger, checks its files, and checks that the tail
// survives reopening: reads below it fail with [ledger.ErrTruncated], reads after it
// return what they did before, the writer goes on after it, and a later Truncate of
// everything leaves only what the backend keeps for an empty ledger.
func TruncateReopen(t *testing.T, d DirCases) {
	ctx := context.Background()
	dir := t.TempDir()
	l := d.open(t, dir)
	written := WriteTxs(t, l, 100, 30, 4)
	if err := l.SetAcked(ctx, 120); err != nil {
		t.Fatal(err)
	}
	const tail = 75
	if err := l.Truncate(ctx, tail); err != nil {
		t.Fatal(err)
	}
	st := l.State()
	keys := []string{"a", "b/3", "a/1"}
	byKey, err := l.ReadKeys(ctx, keys, tail, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	d.TruncatedFunc(t, dir, tail, written)

	l = d.open(t, dir)
	defer l.Close()
	if got := l.State(); got != st || got.Tail != tail || got.AckedLSN != 120 {
		t.Fatalf("State after reopening = %+v, want %+v", got, st)
	}
	_, err = l.Read(ctx, tail-1, 10)
	WantTruncated(t, "Read below the tail after reopening", err, tail-1, tail)
	_, err = l.ReadKeys(ctx, keys, 0, 10)
	WantTruncated(t, "ReadKeys below the tail after reopening", err, 0, tail)
	got, err := l.ReadKeys(ctx, keys, tail, 1000)
	if err != nil || !reflect.DeepEqual(got, byKey) || len(got) == 0 {
		t.Fatalf("ReadKeys after reopening: %d events, %v; before, %d", len(got), err, len(byKey))
	}
	// The writer goes on after the tail, and a later Sync keeps it.
	WriteTxs(t, l, 200, 2, 3)
	if got := l.State(); got.Tail != tail || got.Head != 126 {
		t.Fatalf("State after appending = %+v", got)
	}
	if err := l.Truncate(ctx, 126); err != nil {
		t.Fatal(err)
	}
	d.TruncatedAllFunc(t, dir, l)
}

// OpenErrors checks that Open refuses a path that is a file, with an error naming it, an
// empty path, and a cancelled context.
func OpenErrors(t *testing.T, d DirCases) {
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.OpenFunc(ctx, file); err == nil || !strings.HasPrefix(err.Error(), "ledger: open "+file+": ") {
		t.Fatalf("Open(a file) = %v", err)
	}
	if _, err := d.OpenFunc(ctx, ""); err == nil {
		t.Fatal("Open(\"\"): no error")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.OpenFunc(cctx, t.TempDir()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with a cancelled context = %v", err)
	}
}
