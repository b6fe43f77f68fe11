package pg_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/indextest"
	"github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/pgtest"
	ledgermem "github.com/walflow/walflow/ledger/memory"
)

// TestRunnerFenced: a Runner whose store another Store wrote behind its back stops with
// ErrFenced at its next write, and writes nothing; a new Runner resumes from the stored
// state.
func TestRunnerFenced(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pool(t, pgtest.NewDatabase(t))
	led := ledgermem.New(nil)
	defer led.Close()
	appendRows(ctx, led, postRow("1", "7"))
	newRunner := func(s *pg.Store) *index.Runner {
		r, err := index.New(index.Config{Ledger: led, Store: s, Indexers: []index.Indexer{index.Field("user_id", "user_id")}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a := open(t, db, nil)
	ra := newRunner(a)
	done := make(chan error, 1)
	go func() { done <- ra.Run(ctx) }()
	if err := ra.Wait(ctx, "user_id", led.State().Head); err != nil {
		t.Fatal(err)
	}

	// Another node's store takes the indexer over and writes it.
	b := open(t, db, nil)
	st, ok, err := b.State(ctx, "user_id")
	if err != nil || !ok {
		t.Fatalf("State: %+v, %v, %v", st, ok, err)
	}
	if err := b.Write(ctx, index.Batch{Indexer: "user_id", State: st}); err != nil {
		t.Fatal(err)
	}
	appendRows(ctx, led, postRow("2", "8"))
	select {
	case err := <-done:
		if !errors.Is(err, pg.ErrFenced) {
			t.Fatalf("Run after another store's write: %v; want ErrFenced", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run went on after another store wrote its indexer")
	}
	if got, _, _ := b.State(ctx, "user_id"); got != st {
		t.Fatalf("state after the fenced runner = %+v; want %+v", got, st)
	}
	if d := indextest.Dump(t, b, "user_id"); len(d) != 1 {
		t.Fatalf("entries after the fenced runner = %v; want only the first event's", d)
	}

	// A runner on the other store resumes from the stored state.
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	rb := newRunner(b)
	go func() { done <- rb.Run(rctx) }()
	if err := rb.Wait(ctx, "user_id", led.State().Head); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []index.Entry{{Value: "7", Position: 1}, {Value: "8", Position: 2}}
	if d := indextest.Dump(t, b, "user_id"); !slices.Equal(d, want) {
		t.Fatalf("entries = %v; want %v", d, want)
	}
}

// TestRunnerFencedWhileLive: a live Runner, writing nothing while no event comes, stops
// with ErrFenced when another Store resets its indexer (walflow index rebuild in a
// cluster), and a Runner started again rebuilds the index.
func TestRunnerFencedWhileLive(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db := pool(t, pgtest.NewDatabase(t))
	led := ledgermem.New(nil)
	defer led.Close()
	appendRows(ctx, led, postRow("1", "7"), postRow("2", "8"))
	a := open(t, db, nil)
	r, err := index.New(index.Config{Ledger: led, Store: a, Indexers: []index.Indexer{index.Field("user_id", "user_id")}, FollowInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	if err := r.Wait(ctx, "user_id", led.State().Head); err != nil {
		t.Fatal(err)
	}
	// The runner is live; no event comes. Another store resets the indexer.
	if err := open(t, db, nil).Reset(ctx, "user_id"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, pg.ErrFenced) {
			t.Fatalf("Run after another store's reset: %v; want ErrFenced", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a live Run went on after another store reset its indexer")
	}
	if _, ok, _ := open(t, db, nil).State(ctx, "user_id"); ok {
		t.Fatal("the fenced runner wrote the reset indexer's state")
	}

	// Run again: it finds the index reset and rebuilds it. (The runner's own checkpoint
	// is still the old one until Run loads the stored state: the store tells.)
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { done <- r.Run(rctx) }()
	b := open(t, db, nil)
	for {
		st, ok, err := b.State(ctx, "user_id")
		if err != nil {
			t.Fatal(err)
		}
		if ok && st.Checkpoint == led.State().Head {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []index.Entry{{Value: "7", Position: 1}, {Value: "8", Position: 2}}
	if d := indextest.Dump(t, a, "user_id"); !slices.Equal(d, want) {
		t.Fatalf("entries = %v; want %v", d, want)
	}
}
