package index_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmem "github.com/walflow/walflow/index/memory"
	"github.com/walflow/walflow/ledger"
	ledgermem "github.com/walflow/walflow/ledger/memory"
)

// role runs Run or Follow on a runner until stopped.
type role struct {
	cancel context.CancelFunc
	done   chan error
}

func start(r *index.Runner, follow bool) *role {
	ctx, cancel := context.WithCancel(context.Background())
	ro := &role{cancel: cancel, done: make(chan error, 1)}
	go func() {
		if follow {
			ro.done <- r.Follow(ctx)
		} else {
			ro.done <- r.Run(ctx)
		}
	}()
	return ro
}

func (ro *role) stop(t *testing.T) {
	t.Helper()
	ro.cancel()
	if err := <-ro.done; err != nil {
		t.Fatalf("Run or Follow: %v", err)
	}
}

// taggedPosts appends n posts in transactions of 5, where post i has the tags "w(i%3) v(i%5)"
// in an order that is not bytewise, and every fourth none; it records each position's values,
// sorted, in want.
func taggedPosts(t *testing.T, l ledger.Ledger, from, n int, want map[event.Position][]string) {
	t.Helper()
	var evs []*event.Event
	var vals [][]string
	for i := from; i < from+n; i++ {
		if i%4 == 3 {
			evs = append(evs, insert("posts", row("id", fmt.Sprint(i))))
			vals = append(vals, nil)
		} else {
			v := []string{fmt.Sprintf("w%d", i%3), fmt.Sprintf("v%d", i%5)}
			evs = append(evs, insert("posts", row("id", fmt.Sprint(i), "tags", strings.Join(v, " "))))
			slices.Sort(v)
			vals = append(vals, v)
		}
		if len(evs) == 5 || i == from+n-1 {
			for j, p := range write(t, l, evs...) {
				want[p] = vals[j]
			}
			evs, vals = evs[:0], vals[:0]
		}
	}
}

// TestFollowSwitchRoles runs two runners on one shared store, one computing and one
// following, and swaps their roles four times while events are written: each runner's
// subscribers see every position once, in order, with its values, and both read the same
// index.
func TestFollowSwitchRoles(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	store := indexmem.New()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 40, want) // history, before anything subscribes
	var runners [2]*index.Runner
	var subs, valued [2]*index.Subscription
	for i := range runners {
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{tags, index.Type("types")},
			Batch: 7, FollowInterval: 5 * time.Millisecond, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		runners[i] = r
	}
	// Runner 0 computes first; runner 1 follows, and subscribes once it has loaded the
	// checkpoint, so that neither is sent the history.
	roles := [2]*role{start(runners[0], false), nil}
	if err := runners[0].Wait(ctx, "tags", 40); err != nil {
		t.Fatal(err)
	}
	roles[1] = start(runners[1], true)
	if err := runners[1].Wait(ctx, "tags", 40); err != nil {
		t.Fatal(err)
	}
	for i, r := range runners {
		var err error
		if subs[i], err = r.Subscribe(ctx, []string{"tags"}, &index.SubscribeOpts{Buffer: 10000, Empty: true}); err != nil {
			t.Fatal(err)
		}
		if valued[i], err = r.Subscribe(ctx, []string{"tags"}, &index.SubscribeOpts{Buffer: 10000}); err != nil {
			t.Fatal(err)
		}
	}
	sts, err := runners[1].Status(ctx)
	if err != nil || !sts[0].Following || sts[0].Phase == index.Stopped {
		t.Fatalf("follower's Status = %+v, %v; want Following, not stopped", sts, err)
	}
	computing := 0
	for round := range 5 {
		taggedPosts(t, led, 40+round*60, 60, want)
		if round == 4 {
			break
		}
		// Swap mid-stream: the computing runner stops (it loses its lock), then the
		// follower stops following and computes, and the other follows.
		c, f := computing, 1-computing
		roles[c].stop(t)
		roles[f].stop(t)
		roles[f] = start(runners[f], false)
		roles[c] = start(runners[c], true)
		computing = f
	}
	head := led.State().Head
	for _, r := range runners {
		for _, name := range []string{"tags", "types"} {
			if err := r.Wait(ctx, name, head); err != nil {
				t.Fatalf("Wait(%s, %d): %v", name, head, err)
			}
		}
	}
	sts, err = runners[computing].Status(ctx)
	if err != nil || sts[0].Following {
		t.Fatalf("computing runner's Status = %+v, %v; want not Following", sts, err)
	}
	for i := range runners {
		next := event.Position(41)
		for next <= head {
			select {
			case n := <-subs[i].Notifications():
				got := slices.Sorted(slices.Values(n.Values))
				if n.Position != next || !slices.Equal(got, want[n.Position]) {
					t.Fatalf("runner %d: notification %+v; want position %d with values %v", i, n, next, want[next])
				}
				next++
			case <-ctx.Done():
				t.Fatalf("runner %d: notified through %d of %d", i, next-1, head)
			}
		}
		for p := event.Position(41); p <= head; p++ {
			if want[p] == nil {
				continue
			}
			select {
			case n := <-valued[i].Notifications():
				if n.Position != p {
					t.Fatalf("runner %d without Empty: notification at %d; want %d", i, n.Position, p)
				}
			case <-ctx.Done():
				t.Fatalf("runner %d without Empty: no notification for %d", i, p)
			}
		}
		for _, s := range []*index.Subscription{subs[i], valued[i]} {
			select {
			case n := <-s.Notifications():
				t.Fatalf("runner %d: extra notification %+v", i, n)
			default:
			}
		}
		// Reads see the whole index on both.
		wantW1 := []event.Position{}
		for p := event.Position(1); p <= head; p++ {
			if slices.Contains(want[p], "w1") {
				wantW1 = append(wantW1, p)
			}
		}
		evs, err := runners[i].Read(ctx, "tags", "w1", 0, 1000)
		if err != nil || !slices.Equal(positionsOf(evs), wantW1) {
			t.Fatalf("runner %d: Read(tags, w1) = %v, %v; want %v", i, positionsOf(evs), err, wantW1)
		}
	}
	for _, ro := range roles {
		ro.stop(t)
	}
}

// TestFollowNeedsSharedStore: Follow refuses a store without EntriesSince, and a runner
// runs or follows, not both at once.
func TestFollowNeedsSharedStore(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	r, err := index.New(index.Config{Ledger: led, Store: struct{ index.Store }{indexmem.New()}, Indexers: []index.Indexer{tags}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Follow(ctx); err == nil || !strings.Contains(err.Error(), "SharedStore") {
		t.Fatalf("Follow on a store that is not shared = %v; want an error naming SharedStore", err)
	}
	r, err = index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{tags}})
	if err != nil {
		t.Fatal(err)
	}
	ro := start(r, true)
	for {
		// Nothing is stored: the follower reports that it follows, and waits for a writer.
		sts, err := r.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sts[0].Following && !sts[0].Stored && sts[0].Phase == index.CatchingUp {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("follower's Status = %+v", sts)
		case <-time.After(time.Millisecond):
		}
	}
	if err := r.Run(ctx); !errors.Is(err, index.ErrRunning) {
		t.Fatalf("Run while following = %v; want ErrRunning", err)
	}
	ro.stop(t)
	if _, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{tags}, FollowInterval: -1}); err == nil {
		t.Fatal("New with a negative FollowInterval succeeded")
	}
}

// TestFollowRebuild: a follower whose writer rebuilds an indexer (new version) takes the
// rebuilt checkpoint and follows it from there.
func TestFollowRebuild(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	store := indexmem.New()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 30, want)
	newRunner := func(version string) *index.Runner {
		ix := tags
		ix.Version = version
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{ix}, FollowInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	w1, f := newRunner("1"), newRunner("1")
	ro := start(w1, false)
	if err := w1.Wait(ctx, "tags", 30); err != nil {
		t.Fatal(err)
	}
	fo := start(f, true)
	if err := f.Wait(ctx, "tags", 30); err != nil {
		t.Fatal(err)
	}
	ro.stop(t)
	// A writer of version 2 resets the store and indexes everything again; the follower,
	// still configured with version 1, follows what is stored.
	w2 := newRunner("2")
	ro = start(w2, false)
	taggedPosts(t, led, 30, 10, want)
	if err := f.Wait(ctx, "tags", 40); err != nil {
		t.Fatal(err)
	}
	evs, err := f.Read(ctx, "tags", "w0", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var wantW0 []event.Position
	for p := event.Position(1); p <= 40; p++ {
		if slices.Contains(want[p], "w0") {
			wantW0 = append(wantW0, p)
		}
	}
	if !slices.Equal(positionsOf(evs), wantW0) {
		t.Fatalf("follower's Read after the rebuild = %v; want %v", positionsOf(evs), wantW0)
	}
	ro.stop(t)
	fo.stop(t)
}

// lagging is a view of a ledger that ends at a head the test sets, as a node's view of a
// shared ledger lags the writer's.
type lagging struct {
	*ledgermem.Ledger
	head atomic.Uint64
}

func (l *lagging) State() ledger.State {
	st := l.Ledger.State()
	st.Head = min(st.Head, event.Position(l.head.Load()))
	return st
}

func (l *lagging) Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error) {
	evs, err := l.Ledger.Read(ctx, after, limit)
	for len(evs) > 0 && evs[len(evs)-1].Position > event.Position(l.head.Load()) {
		evs = evs[:len(evs)-1]
	}
	return evs, err
}

// TestFollowLaggingLedger: a follower whose ledger lags the writer's passes no event its
// ledger does not hold yet, so that its reads find every event they list.
func TestFollowLaggingLedger(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	store := indexmem.New()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 40, want)
	w, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{tags}})
	if err != nil {
		t.Fatal(err)
	}
	lag := &lagging{Ledger: led}
	lag.head.Store(20)
	f, err := index.New(index.Config{Ledger: lag, Store: store, Indexers: []index.Indexer{tags}, FollowInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer start(w, false).stop(t)
	if err := w.Wait(ctx, "tags", 40); err != nil {
		t.Fatal(err)
	}
	defer start(f, true).stop(t)
	if err := f.Wait(ctx, "tags", 20); err != nil {
		t.Fatal(err)
	}
	read := func(upTo event.Position) {
		t.Helper()
		var wantW0 []event.Position
		for p := event.Position(1); p <= upTo; p++ {
			if slices.Contains(want[p], "w0") {
				wantW0 = append(wantW0, p)
			}
		}
		evs, err := f.Read(ctx, "tags", "w0", 0, 100)
		if err != nil || !slices.Equal(positionsOf(evs), wantW0) {
			t.Fatalf("follower's Read(tags, w0) = %v, %v; want %v", positionsOf(evs), err, wantW0)
		}
	}
	read(20)
	if cp, _ := f.Checkpoint("tags"); cp != 20 {
		t.Fatalf("follower's checkpoint %d; want its ledger's head 20", cp)
	}
	lag.head.Store(40)
	if err := f.Wait(ctx, "tags", 40); err != nil {
		t.Fatal(err)
	}
	read(40)
}

// TestFollowRetentionJump: when retention removed events the writer had not indexed, the
// follower's checkpoint jumps with the writer's, and its subscribers hear only of the
// events indexed after the jump.
func TestFollowRetentionJump(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), indexmem.New()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 10, want)
	newRunner := func() *index.Runner {
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{tags}, FollowInterval: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	w, f := newRunner(), newRunner()
	ro := start(w, false)
	if err := w.Wait(ctx, "tags", 10); err != nil {
		t.Fatal(err)
	}
	ro.stop(t)
	defer start(f, true).stop(t)
	if err := f.Wait(ctx, "tags", 10); err != nil {
		t.Fatal(err)
	}
	sub, err := f.Subscribe(ctx, nil, &index.SubscribeOpts{Empty: true})
	if err != nil {
		t.Fatal(err)
	}
	// Retention removes 11 to 25 before the writer runs again.
	taggedPosts(t, led, 10, 15, want)
	if err := led.Truncate(ctx, 25); err != nil {
		t.Fatal(err)
	}
	defer start(w, false).stop(t)
	if err := f.Wait(ctx, "tags", 25); err != nil {
		t.Fatal(err)
	}
	if sts, err := f.Status(ctx); err != nil || sts[0].Since != 25 {
		t.Fatalf("follower's Status = %+v, %v; want since 25", sts, err)
	}
	taggedPosts(t, led, 25, 5, want)
	for p := event.Position(26); p <= 30; p++ {
		select {
		case n := <-sub.Notifications():
			if got := slices.Sorted(slices.Values(n.Values)); n.Position != p || !slices.Equal(got, want[p]) {
				t.Fatalf("notification %+v; want position %d with %v", n, p, want[p])
			}
		case <-ctx.Done():
			t.Fatalf("no notification for %d", p)
		}
	}
}
