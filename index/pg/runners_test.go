package pg_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	ledgermem "github.com/walflow/walflow/ledger/memory"
)

// words indexes the words of a post's body.
var words = index.Indexer{Name: "words", Version: "1", Func: func(e *event.Event, dst []string) []string {
	v, ok := e.NewRecord.Get("body")
	if !ok {
		return dst
	}
	s, _ := v.Text()
	return append(dst, strings.Fields(s)...)
}}

// posts appends n posts, one transaction of 3 at a time, and records each position's words,
// sorted, in want.
func posts(t *testing.T, l ledger.Ledger, from, n int, want map[event.Position][]string) {
	t.Helper()
	for i := from; i < from+n; i += 3 {
		var evs []*event.Event
		var vals [][]string
		lsn := l.State().LastCommitLSN + 10
		for j := i; j < min(i+3, from+n); j++ {
			var v []string
			if j%4 != 3 {
				v = []string{fmt.Sprintf("w%d", j%3), fmt.Sprintf("v%d", j%5)}
			}
			evs = append(evs, &event.Event{Name: "posts", Type: event.Insert, LSN: lsn, Ordinal: uint32(len(evs)),
				NewRecord: event.Record{{Name: "id", Value: event.Text(25, fmt.Sprint(j))}, {Name: "body", Value: event.Text(25, strings.Join(v, " "))}}})
			slices.Sort(v)
			vals = append(vals, v)
		}
		for k, p := range ledgertest.WriteTx(t, l, lsn, evs...) {
			want[p] = vals[k]
		}
		if err := l.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRunnersShareStore runs two index runners, each with its own Store on one database:
// one computes and the other follows. Then the follower starts computing while the first
// has not stopped, as a node does that took the lock over from a holder that has not
// noticed yet: exactly one of them is fenced off, and it follows. At the end the index
// equals its recomputation, and both runners' subscribers saw every position once, in
// order.
func TestRunnersShareStore(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dsn := pgtest.NewDatabase(t)
	led := ledgermem.New(nil)
	t.Cleanup(func() { led.Close() })
	want := map[event.Position][]string{}
	posts(t, led, 0, 30, want)
	var runners [2]*index.Runner
	for i := range runners {
		r, err := index.New(index.Config{Ledger: led, Store: open(t, pool(t, dsn), nil), Indexers: []index.Indexer{words},
			Batch: 5, FollowInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		runners[i] = r
	}
	type result struct {
		i   int
		err error
	}
	done := make(chan result, 4)
	cancels := [2]context.CancelFunc{}
	start := func(i int, follow bool) {
		rctx, stop := context.WithCancel(ctx)
		cancels[i] = stop
		go func() {
			if follow {
				done <- result{i, runners[i].Follow(rctx)}
			} else {
				done <- result{i, runners[i].Run(rctx)}
			}
		}()
	}
	stop := func(i int) {
		cancels[i]()
		if r := <-done; r.err != nil {
			t.Fatalf("runner %d: %v", r.i, r.err)
		}
	}
	start(0, false)
	if err := runners[0].Wait(ctx, "words", 30); err != nil {
		t.Fatal(err)
	}
	start(1, true)
	if err := runners[1].Wait(ctx, "words", 30); err != nil {
		t.Fatal(err)
	}
	var subs [2]*index.Subscription
	for i, r := range runners {
		var err error
		if subs[i], err = r.Subscribe(ctx, nil, &index.SubscribeOpts{Buffer: 1000, Empty: true}); err != nil {
			t.Fatal(err)
		}
	}
	posts(t, led, 30, 30, want)
	if err := runners[1].Wait(ctx, "words", 60); err != nil {
		t.Fatal(err)
	}
	// Runner 1 takes over while runner 0 still runs.
	stop(1)
	start(1, false)
	if err := runners[1].Wait(ctx, "words", 60); err != nil { // its Run has loaded the state
		t.Fatal(err)
	}
	// Both index what comes next until the store fences one off.
	var fenced result
	for n := 60; fenced.err == nil; n += 3 {
		posts(t, led, n, 3, want)
		select {
		case fenced = <-done:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("neither runner was fenced off")
		}
	}
	if !errors.Is(fenced.err, pg.ErrFenced) {
		t.Fatalf("runner %d ended with %v; want ErrFenced", fenced.i, fenced.err)
	}
	start(fenced.i, true)
	posts(t, led, int(led.State().Head), 30, want)
	head := led.State().Head
	for _, r := range runners {
		if err := r.Wait(ctx, "words", head); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range subs {
		for p := event.Position(31); p <= head; p++ {
			select {
			case n := <-s.Notifications():
				if got := slices.Sorted(slices.Values(n.Values)); n.Position != p || !slices.Equal(got, want[p]) {
					t.Fatalf("runner %d: notification %+v; want position %d with %v", i, n, p, want[p])
				}
			case <-ctx.Done():
				t.Fatalf("runner %d: no notification for %d", i, p)
			}
		}
		select {
		case n := <-s.Notifications():
			t.Fatalf("runner %d: extra notification %+v", i, n)
		default:
		}
	}
	byValue := map[string][]event.Position{}
	for p := event.Position(1); p <= head; p++ {
		for _, v := range want[p] {
			byValue[v] = append(byValue[v], p)
		}
	}
	for v, ps := range byValue {
		for i, r := range runners {
			got, err := r.Positions(ctx, "words", v, 0, 1000)
			if err != nil || !slices.Equal(got, ps) {
				t.Fatalf("runner %d: Positions(words, %q) = %v, %v; want %v", i, v, got, err, ps)
			}
		}
	}
	stop(0)
	stop(1)
}
