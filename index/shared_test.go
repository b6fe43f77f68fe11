package index_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmem "github.com/walflow/walflow/index/memory"
	"github.com/walflow/walflow/ledger"
)

// watched is a shared store that counts State calls and Reset calls, and can reset the
// indexer in the middle of an EntriesSince call.
type watched struct {
	*indexmem.Store
	states, resets atomic.Int64
	resetInRead    atomic.Bool   // the next EntriesSince resets the indexer first
	didResetInRead chan struct{} // closed once it did
}

func newWatched() *watched {
	return &watched{Store: indexmem.New(), didResetInRead: make(chan struct{})}
}

func (s *watched) State(ctx context.Context, indexer string) (index.State, bool, error) {
	s.states.Add(1)
	return s.Store.State(ctx, indexer)
}

func (s *watched) Reset(ctx context.Context, indexer string) error {
	s.resets.Add(1)
	return s.Store.Reset(ctx, indexer)
}

func (s *watched) EntriesSince(ctx context.Context, indexer string, after, through event.Position, fn func(index.Entry) error) error {
	if s.resetInRead.CompareAndSwap(true, false) {
		if err := s.Store.Reset(ctx, indexer); err != nil {
			return err
		}
		defer close(s.didResetInRead)
	}
	return s.Store.EntriesSince(ctx, indexer, after, through, fn)
}

// storeTags writes, as a writer would, the tags entries of positions after..through and
// the state at through.
func storeTags(t *testing.T, s index.Store, want map[event.Position][]string, after, through event.Position) {
	t.Helper()
	var es []index.Entry
	for p := after + 1; p <= through; p++ {
		for _, v := range want[p] {
			es = append(es, index.Entry{Value: v, Position: p})
		}
	}
	st := index.State{Checkpoint: through, Version: tags.Version}
	if err := s.Write(context.Background(), index.Batch{Indexer: "tags", Entries: es, State: st}); err != nil {
		t.Fatal(err)
	}
}

// wantW0 is the positions up to upTo whose tags include w0.
func wantW0(want map[event.Position][]string, upTo event.Position) []event.Position {
	var out []event.Position
	for p := event.Position(1); p <= upTo; p++ {
		if slices.Contains(want[p], "w0") {
			out = append(out, p)
		}
	}
	return out
}

// followSubscribed starts a runner following store over led, waits until it has seen the
// stored checkpoint through, and subscribes to it (every position, empty ones included).
// The caller stops the returned role.
func followSubscribed(t *testing.T, ctx context.Context, led ledger.Ledger, store index.Store, through event.Position) (*index.Runner, *role, *index.Subscription) {
	t.Helper()
	r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{tags}, FollowInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ro := start(r, true)
	if err := r.Wait(ctx, "tags", through); err != nil {
		ro.stop(t)
		t.Fatal(err)
	}
	sub, err := r.Subscribe(ctx, nil, &index.SubscribeOpts{Buffer: 1000, Empty: true})
	if err != nil {
		ro.stop(t)
		t.Fatal(err)
	}
	return r, ro, sub
}

// receive checks that sub is sent the positions from..to, each once and in order, with
// the values want gives them.
func receive(t *testing.T, ctx context.Context, sub *index.Subscription, want map[event.Position][]string, from, to event.Position) {
	t.Helper()
	for p := from; p <= to; p++ {
		select {
		case n := <-sub.Notifications():
			if got := slices.Sorted(slices.Values(n.Values)); n.Position != p || !slices.Equal(got, want[p]) {
				t.Fatalf("notification at %d with %v; want position %d with %v", n.Position, got, p, want[p])
			}
		case <-ctx.Done():
			t.Fatalf("no notification for %d", p)
		}
	}
}

// noMore checks that sub holds no further notification once the runner has polled the
// store a few more times.
func noMore(t *testing.T, ctx context.Context, sub *index.Subscription, s *watched) {
	t.Helper()
	for n := s.states.Load() + 5; s.states.Load() < n; {
		select {
		case n := <-sub.Notifications():
			t.Fatalf("extra notification at %d with %v", n.Position, n.Values)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// TestSharedLaggingHolderDoesNotReset: a runner that starts computing on a shared store
// whose checkpoint is past its view of the ledger, for longer than 10 seconds, neither
// resets the index every process reads nor reads events its ledger lacks; it computes
// once its ledger catches up.
func TestSharedLaggingHolderDoesNotReset(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	led, store := newLedger(t), newWatched()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 40, want)
	w, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{tags}})
	if err != nil {
		t.Fatal(err)
	}
	ro := start(w, false)
	if err := w.Wait(ctx, "tags", 40); err != nil {
		t.Fatal(err)
	}
	ro.stop(t)
	store.resets.Store(0) // w's first run reset the store it found empty
	lag := &lagging{Ledger: led}
	lag.head.Store(20)
	h, err := index.New(index.Config{Ledger: lag, Store: store, Indexers: []index.Indexer{tags},
		FollowInterval: 5 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// h follows, then takes over computing while its ledger still lags.
	fo := start(h, true)
	if err := h.Wait(ctx, "tags", 20); err != nil {
		t.Fatal(err)
	}
	fo.stop(t)
	read := func(upTo event.Position) {
		t.Helper()
		evs, err := h.Read(ctx, "tags", "w0", 0, 100)
		if err != nil || !slices.Equal(positionsOf(evs), wantW0(want, upTo)) {
			t.Fatalf("Read(tags, w0) = %v, %v; want %v", positionsOf(evs), err, wantW0(want, upTo))
		}
	}
	read(20) // between roles: nothing past the ledger's head
	ro = start(h, false)
	defer func() { ro.stop(t) }()
	for began := time.Now(); time.Since(began) < 11*time.Second; {
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if n := store.resets.Load(); n != 0 {
			t.Fatalf("the lagging runner reset the shared index %d times", n)
		}
		read(20)
	}
	if st, ok, err := store.Store.State(ctx, "tags"); err != nil || !ok || st.Checkpoint != 40 {
		t.Fatalf("stored state %+v, %v, %v; want checkpoint 40", st, ok, err)
	}
	taggedPosts(t, led, 40, 10, want)
	lag.head.Store(50)
	if err := h.Wait(ctx, "tags", 50); err != nil {
		t.Fatal(err)
	}
	read(50)
	if n := store.resets.Load(); n != 0 {
		t.Fatalf("the runner reset the shared index %d times", n)
	}
}

// TestSharedPositionsBetweenRoles: once a follower whose ledger lags stops following, its
// reads still list no position past its ledger's head.
func TestSharedPositionsBetweenRoles(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), indexmem.New()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 40, want)
	storeTags(t, store, want, 0, 40)
	lag := &lagging{Ledger: led}
	lag.head.Store(20)
	f, err := index.New(index.Config{Ledger: lag, Store: store, Indexers: []index.Indexer{tags}, FollowInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	fo := start(f, true)
	if err := f.Wait(ctx, "tags", 20); err != nil {
		t.Fatal(err)
	}
	fo.stop(t)
	ps, err := f.Positions(ctx, "tags", "w0", 0, 100)
	if err != nil || !slices.Equal(ps, wantW0(want, 20)) {
		t.Fatalf("Positions(tags, w0) = %v, %v; want %v", ps, err, wantW0(want, 20))
	}
	evs, err := f.Read(ctx, "tags", "w0", 0, 100)
	if err != nil || !slices.Equal(positionsOf(evs), wantW0(want, 20)) {
		t.Fatalf("Read(tags, w0) = %v, %v; want %v", positionsOf(evs), err, wantW0(want, 20))
	}
}

// TestSharedRebuildNotifiesOnce: when the shared index is reset and rebuilt while a
// runner follows it, the runner's subscribers are sent each position once: none the
// rebuild passes again, and every one past the last notified, also when the rebuild is
// first seen past it.
func TestSharedRebuildNotifiesOnce(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), newWatched()
	want := map[event.Position][]string{}
	storeTags(t, store, want, 0, 0)
	f, fo, sub := followSubscribed(t, ctx, led, store, 0)
	defer fo.stop(t)
	taggedPosts(t, led, 0, 30, want)
	storeTags(t, store, want, 0, 30)
	receive(t, ctx, sub, want, 1, 30)
	reset := func() {
		t.Helper()
		if err := store.Reset(ctx, "tags"); err != nil {
			t.Fatal(err)
		}
		for {
			sts, err := f.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !sts[0].Stored {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatal("the follower did not see the reset")
			case <-time.After(time.Millisecond):
			}
		}
	}
	settle := func(cp event.Position) {
		t.Helper()
		for {
			if got, _ := f.Checkpoint("tags"); got == cp {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the follower did not reach %d", cp)
			case <-time.After(time.Millisecond):
			}
		}
	}
	// A rebuild seen below the last notified position, then past it.
	taggedPosts(t, led, 30, 5, want)
	reset()
	storeTags(t, store, want, 0, 10)
	settle(10)
	storeTags(t, store, want, 10, 35)
	receive(t, ctx, sub, want, 31, 35)
	// A rebuild first seen past the last notified position.
	taggedPosts(t, led, 35, 5, want)
	reset()
	storeTags(t, store, want, 0, 40)
	receive(t, ctx, sub, want, 36, 40)
	noMore(t, ctx, sub, store)
}

// TestSharedResetDuringRead: a reset between a follower's read of the stored state and
// its read of the entries does not yield notifications without their values.
func TestSharedResetDuringRead(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), newWatched()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 20, want)
	storeTags(t, store, want, 0, 20)
	_, fo, sub := followSubscribed(t, ctx, led, store, 20)
	defer fo.stop(t)
	taggedPosts(t, led, 20, 10, want)
	store.resetInRead.Store(true)
	storeTags(t, store, want, 20, 30)
	select {
	case <-store.didResetInRead:
	case <-ctx.Done():
		t.Fatal("the follower did not read the entries")
	}
	storeTags(t, store, want, 0, 30) // the rebuild
	receive(t, ctx, sub, want, 21, 30)
	noMore(t, ctx, sub, store)
}

// TestSharedRebuildThenCompute: a runner that saw the index reset while it followed, and
// starts computing after another process rebuilt it past the last position it notified,
// notifies the positions the rebuild stored past it before computing on.
func TestSharedRebuildThenCompute(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), newWatched()
	want := map[event.Position][]string{}
	taggedPosts(t, led, 0, 20, want)
	storeTags(t, store, want, 0, 20)
	r, fo, sub := followSubscribed(t, ctx, led, store, 20)
	taggedPosts(t, led, 20, 10, want)
	storeTags(t, store, want, 20, 30)
	receive(t, ctx, sub, want, 21, 30)
	// Another process resets the index, which r sees, and rebuilds it through 35 once r
	// has stopped following.
	if err := store.Reset(ctx, "tags"); err != nil {
		t.Fatal(err)
	}
	for {
		if cp, _ := r.Checkpoint("tags"); cp == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the follower did not see the reset")
		case <-time.After(time.Millisecond):
		}
	}
	fo.stop(t)
	taggedPosts(t, led, 30, 5, want)
	storeTags(t, store, want, 0, 35)
	defer start(r, false).stop(t)
	taggedPosts(t, led, 35, 5, want)
	receive(t, ctx, sub, want, 31, 40)
	taggedPosts(t, led, 40, 5, want)
	receive(t, ctx, sub, want, 41, 45)
}
