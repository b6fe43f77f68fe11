package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// WantTruncated fails the test unless err is the error of a read after position after from
// a ledger whose tail is tail: it wraps ErrTruncated, is a *TruncatedError with those
// positions, and its message names the requested and the oldest available positions.
func WantTruncated(t testing.TB, what string, err error, after, tail event.Position) {
	t.Helper()
	if !errors.Is(err, ledger.ErrTruncated) {
		t.Fatalf("%s = %v, want an error wrapping ErrTruncated", what, err)
	}
	var te *ledger.TruncatedError
	if !errors.As(err, &te) || te.After != after || te.Tail != tail {
		t.Fatalf("%s = %#v, want a *TruncatedError{After: %d, Tail: %d}", what, te, after, tail)
	}
	msg := err.Error()
	for _, want := range []string{fmt.Sprintf("after position %d", after), fmt.Sprintf("oldest position still available is %d", tail+1), "resubscribe from the head"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("%s: message %q does not say %q", what, msg, want)
		}
	}
}

// mustTruncate truncates and checks the new tail.
func mustTruncate(t testing.TB, l ledger.Ledger, through, wantTail event.Position) {
	t.Helper()
	if err := l.Truncate(context.Background(), through); err != nil {
		t.Fatalf("Truncate(%d): %v", through, err)
	}
	if st := l.State(); st.Tail != wantTail {
		t.Fatalf("Truncate(%d): Tail = %d, want %d", through, st.Tail, wantTail)
	}
}

func testTruncate(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	writeN(t, l, 10, 5, 3, 1, 4) // 12 events, LSNs 10..14
	before := l.State()
	mustTruncate(t, l, 5, 5)
	after := l.State()
	if after.Head != before.Head || after.LastCommitLSN != before.LastCommitLSN || after.LastEndLSN != before.LastEndLSN {
		t.Fatalf("State after Truncate = %+v, want %+v with Tail 5", after, before)
	}
	for _, from := range []event.Position{0, 1, 4} {
		_, err := l.Read(ctx, from, 10)
		WantTruncated(t, fmt.Sprintf("Read(%d)", from), err, from, 5)
		_, err = l.ReadKeys(ctx, []string{"a", "b"}, from, 10)
		WantTruncated(t, fmt.Sprintf("ReadKeys(%d)", from), err, from, 5)
	}
	// A read with a zero limit, or of no keys, still says the position is gone.
	_, err := l.Read(ctx, 0, 0)
	WantTruncated(t, "Read(0, limit 0)", err, 0, 5)
	_, err = l.ReadKeys(ctx, nil, 0, 10)
	WantTruncated(t, "ReadKeys(no keys, 0)", err, 0, 5)
	es, err := l.Read(ctx, 5, 100)
	if err != nil {
		t.Fatalf("Read at the tail: %v", err)
	}
	samePositions(t, "Read at the tail", es, Span(6, 12))
	es, err = l.Read(ctx, 7, 2)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "Read(7, 2)", es, Span(8, 9))

	// Truncating at or before the tail does nothing.
	mustTruncate(t, l, 3, 5)
	mustTruncate(t, l, 5, 5)
	mustTruncate(t, l, 0, 5)

	// Replays are still recognised, and positions go on where they were.
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 13}); !errors.Is(err, ledger.ErrOutOfOrder) {
		t.Fatalf("BeginTx of a replayed transaction after Truncate = %v, want ErrOutOfOrder", err)
	}
	ps := WriteTx(t, l, 20, Event(20, 0, "a", 1), Event(20, 1, "b", 2))
	if !slices.Equal(ps, Span(13, 14)) {
		t.Fatalf("positions after Truncate = %v, want [13 14]", ps)
	}
	mustSync(t, l)
	es, err = l.Read(ctx, 5, 100)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "Read after appending", es, Span(6, 14))
	for _, e := range es {
		if e.Position == 13 && (e.Name != "a" || e.LSN != 20) {
			t.Fatalf("event 13 = %s at %s, want the new a at 20", e.Name, e.LSN)
		}
	}
	mustTruncate(t, l, 13, 13)
	es, err = l.Read(ctx, 13, 100)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "Read after the second Truncate", es, Span(14, 14))
	// Acknowledgements and the origin keep the tail, and the tail keeps them.
	if err := l.SetAcked(ctx, 21); err != nil {
		t.Fatal(err)
	}
	if err := l.SetOrigin(ctx, ledger.Origin{Slot: "s"}); err != nil {
		t.Fatal(err)
	}
	mustTruncate(t, l, 14, 14)
	want := ledger.State{Head: 14, Tail: 14, LastCommitLSN: 20, LastEndLSN: 21, AckedLSN: 21, Origin: ledger.Origin{Slot: "s"}}
	if st := l.State(); st != want {
		t.Fatalf("State = %+v, want %+v", st, want)
	}
}

// testTruncateReadKeys checks ReadKeys against a model after each of several truncations.
func testTruncateReadKeys(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	written := writeN(t, l, 10, 40, 4, 1, 3, 9) // 40 transactions, 164 events
	head := event.Position(len(written))
	model := map[string][]event.Position{}
	for _, e := range written {
		for _, k := range Indexer(e, nil) {
			model[k] = append(model[k], e.Position)
		}
	}
	keySets := [][]string{{"a"}, {"b", "c"}, {"a", "b", "c"}, {"a/1"}, {"a/1", "b/1", "c/1"}, {"c/6", "a"}, {"nope"}}
	for _, tail := range []event.Position{1, 2, 17, 60, 61, head - 3, head} {
		mustTruncate(t, l, tail, tail)
		for _, keys := range keySets {
			if tail > 0 {
				_, err := l.ReadKeys(ctx, keys, tail-1, 1000)
				WantTruncated(t, fmt.Sprintf("ReadKeys(%q, %d)", keys, tail-1), err, tail-1, tail)
			}
			var all []event.Position
			for _, k := range keys {
				all = append(all, model[k]...)
			}
			slices.Sort(all)
			all = slices.Compact(all)
			for _, after := range []event.Position{tail, tail + 1, tail + 5, head} {
				for _, limit := range []int{1, 3, 1000} {
					es, err := l.ReadKeys(ctx, keys, after, limit)
					if err != nil {
						t.Fatalf("ReadKeys(%q, %d, %d) with tail %d: %v", keys, after, limit, tail, err)
					}
					var want []event.Position
					for _, p := range all {
						if p > after && len(want) < limit {
							want = append(want, p)
						}
					}
					samePositions(t, fmt.Sprintf("ReadKeys(%q, %d, %d) with tail %d", keys, after, limit, tail), es, want)
				}
			}
		}
	}
}

func testTruncateClamps(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx := context.Background()
	mustTruncate(t, l, 10, 0) // an empty ledger has nothing to remove
	if st := l.State(); st != (ledger.State{}) {
		t.Fatalf("State after truncating an empty ledger = %+v, want zero", st)
	}
	writeN(t, l, 10, 3, 2) // 6 events
	// Committed but unsynced, and open, transactions are past the head: Truncate stops at it.
	WriteTx(t, l, 50, Event(50, 0, "a", 1), Event(50, 1, "a", 2))
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 60}); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(ctx, Event(60, 0, "b", 1)); err != nil {
		t.Fatal(err)
	}
	mustTruncate(t, l, 1000, 6)
	if es, err := l.Read(ctx, 6, 10); err != nil || len(es) != 0 {
		t.Fatalf("Read at a tail equal to the head = %v, %v; want nothing", positions(es), err)
	}
	if es, err := l.ReadKeys(ctx, []string{"a", "b"}, 6, 10); err != nil || len(es) != 0 {
		t.Fatalf("ReadKeys at a tail equal to the head = %v, %v; want nothing", positions(es), err)
	}
	if err := l.CommitTx(ctx, 61); err != nil {
		t.Fatal(err)
	}
	mustSync(t, l)
	es, err := l.Read(ctx, 6, 10)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "Read after syncing", es, Span(7, 9))
	es, err = l.ReadKeys(ctx, []string{"a", "b"}, 6, 10)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "ReadKeys after syncing", es, Span(7, 9))
	// An abort after a Truncate reuses its positions, as before.
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: 70}); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(ctx, Event(70, 0, "gone", 1)); err != nil {
		t.Fatal(err)
	}
	mustTruncate(t, l, 100, 9)
	if err := l.AbortTx(ctx); err != nil {
		t.Fatal(err)
	}
	if ps := WriteTx(t, l, 80, Event(80, 0, "c", 1)); ps[0] != 10 {
		t.Fatalf("position after an abort = %d, want 10", ps[0])
	}
	mustSync(t, l)
	es, err = l.ReadKeys(ctx, []string{"gone", "c"}, 9, 10)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "ReadKeys after the abort", es, Span(10, 10))
}

// testTruncateConcurrent truncates while one writer appends and readers read from the tail:
// a read either fails with ErrTruncated (its position was removed meanwhile) or returns
// whole transactions at gap-free positions, and the tail never passes the head.
func testTruncateConcurrent(t *testing.T, newLedger NewFunc) {
	l := open(t, newLedger)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const txs = 300
	size := func(lsn event.LSN) int { return 1 + int(lsn*7%5) }
	var done atomic.Bool
	errc := make(chan error, 8)
	var wg sync.WaitGroup
	check := func(es []event.Event, after event.Position) error {
		for i, e := range es {
			if e.Position <= after || (i > 0 && e.Position <= es[i-1].Position) {
				return fmt.Errorf("event at %d after %d", e.Position, after)
			}
		}
		return nil
	}
	// Truncater: keeps a few events, more or less, behind the head.
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- func() error {
			for i := 0; !done.Load(); i++ {
				st := l.State()
				if st.Tail > st.Head {
					return fmt.Errorf("state %+v has Tail > Head", st)
				}
				if err := l.Truncate(ctx, st.Head-min(st.Head, event.Position(i%7))); err != nil {
					return fmt.Errorf("truncate: %w", err)
				}
				time.Sleep(time.Duration(i%3) * 100 * time.Microsecond)
			}
			return nil
		}()
	}()
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- func() error {
				for !done.Load() {
					after := l.State().Tail
					var es []event.Event
					var err error
					if r%2 == 0 {
						es, err = l.Read(ctx, after, 1<<30)
						if err == nil {
							// Read from the tail returns gap-free positions up to a head.
							for i, e := range es {
								if e.Position != after+event.Position(i)+1 {
									return fmt.Errorf("Read(%d): event %d at position %d", after, i, e.Position)
								}
							}
						}
					} else {
						es, err = l.ReadKeys(ctx, []string{"a", "b", "c/3"}, after, 1<<30)
					}
					if errors.Is(err, ledger.ErrTruncated) {
						continue
					}
					if err != nil {
						return err
					}
					if err := check(es, after); err != nil {
						return err
					}
				}
				return nil
			}()
		}()
	}
	k := 0
	for i := range txs {
		lsn := event.LSN(1000 + i)
		var es []*event.Event
		for j := range size(lsn) {
			es = append(es, Event(lsn, uint32(j), table(k), k))
			k++
		}
		WriteTx(t, l, lsn, es...)
		if i%3 == 2 || i == txs-1 {
			mustSync(t, l)
		}
	}
	done.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := l.State()
	if st.Head != event.Position(k) {
		t.Fatalf("Head = %d, want %d", st.Head, k)
	}
	es, err := l.Read(ctx, st.Tail, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	samePositions(t, "Read from the final tail", es, Span(st.Tail+1, st.Head))
}
