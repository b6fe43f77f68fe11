package index_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmem "github.com/walflow/walflow/index/memory"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/retry"
)

// tags is a custom indexer with zero, one or many values: the words of a post's tags
// column, each once.
var tags = index.Indexer{
	Name:    "tags",
	Version: "1",
	Func: func(e *event.Event, dst []string) []string {
		v, ok := e.ID("tags")
		if !ok {
			return dst
		}
		s, _ := v.Text()
		return append(dst, strings.Fields(s)...)
	},
}

func TestCustomIndexerValues(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), indexmem.New()
	write(t, led,
		insert("posts", row("id", "1", "tags", "")),         // no value
		insert("posts", row("id", "2", "tags", "go")),       // one
		insert("posts", row("id", "3", "tags", "go db go")), // many, one duplicate
		insert("users", row("id", "4")),                     // no column
		insert("posts", row("id", "5", "tags", "db")),
	)
	r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{tags}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	waitAll(t, r, led, "tags")
	for value, want := range map[string][]event.Position{"go": {2, 3}, "db": {3, 5}, "": nil, "rust": nil} {
		evs, err := r.Read(ctx, "tags", value, 0, 100)
		if err != nil {
			t.Fatalf("Read(tags, %q): %v", value, err)
		}
		if got := positionsOf(evs); !slices.Equal(got, want) && (len(got) != 0 || len(want) != 0) {
			t.Errorf("Read(tags, %q) = positions %v; want %v", value, got, want)
		}
	}
	want := []index.Entry{{Value: "db", Position: 3}, {Value: "db", Position: 5}, {Value: "go", Position: 2}, {Value: "go", Position: 3}}
	if d := dump(t, store, "tags"); !slices.Equal(d, want) {
		t.Fatalf("entries = %v; want %v (each value once per event)", d, want)
	}
}

func TestReadAfterLimit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	writeUsers(t, led, 200, 7) // user u has positions u+1, u+8, ...
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{index.Field("user_id", "user_id")}, Batch: 13})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	waitAll(t, r, led, "user_id")
	var all []event.Position
	for p := event.Position(4); p <= 200; p += 7 {
		all = append(all, p)
	}
	for _, c := range []struct {
		after event.Position
		limit int
		want  []event.Position
	}{
		{0, 1000, all},
		{0, 3, all[:3]},
		{4, 2, all[1:3]},
		{5, 2, all[1:3]},
		{all[len(all)-1], 10, nil},
		{0, 0, nil},
	} {
		evs, err := r.Read(ctx, "user_id", "3", c.after, c.limit)
		if err != nil {
			t.Fatalf("Read(after %d, limit %d): %v", c.after, c.limit, err)
		}
		if got := positionsOf(evs); !slices.Equal(got, c.want) && (len(got) != 0 || len(c.want) != 0) {
			t.Errorf("Read(after %d, limit %d) = %v; want %v", c.after, c.limit, got, c.want)
		}
		for _, e := range evs {
			if v, _ := e.NewRecord.Get("user_id"); v.String() != "3" {
				t.Errorf("event %d has user_id %s", e.Position, v)
			}
		}
	}
	// Paging with after = the last position read gives every event once.
	var paged []event.Position
	for after := event.Position(0); ; {
		evs, err := r.Read(ctx, "user_id", "3", after, 4)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			break
		}
		paged = append(paged, positionsOf(evs)...)
		after = evs[len(evs)-1].Position
	}
	if !slices.Equal(paged, all) {
		t.Fatalf("paged read = %v; want %v", paged, all)
	}
	if _, err := r.Read(ctx, "nope", "3", 0, 1); err == nil || !strings.Contains(err.Error(), `no indexer is named "nope"`) {
		t.Fatalf("Read of an unknown indexer: %v", err)
	}
}

func TestTypeIndexer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	write(t, led, insert("posts", row("id", "1")), insert("posts", row("id", "2")))
	write(t, led, update("posts", nil, row("id", "1")), del("posts", row("id", "2")))
	write(t, led, &event.Event{Name: "posts", Type: event.Truncate})
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{index.Type("types"), index.Table("tables")}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	waitAll(t, r, led, "types", "tables")
	for typ, want := range map[string][]event.Position{"insert": {1, 2}, "update": {3}, "delete": {4}, "truncate": {5}} {
		evs, err := r.Read(ctx, "types", typ, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if got := positionsOf(evs); !slices.Equal(got, want) {
			t.Errorf("Read(types, %s) = %v; want %v", typ, got, want)
		}
	}
	if ps, _ := r.Positions(ctx, "tables", "posts", 0, 10); len(ps) != 5 {
		t.Errorf("Positions(tables, posts) = %v; want 5 positions", ps)
	}
}

// TestRebuildAfterReset deletes an indexer's data while the runner is stopped: the next run
// rebuilds it identically, and leaves the other indexer alone.
func TestRebuildAfterReset(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), indexmem.New()
	writeUsers(t, led, 500, 13)
	var userCalls, typeCalls atomic.Int64
	newRunner := func() *index.Runner {
		r, err := index.New(index.Config{
			Ledger: led, Store: store, Batch: 64, Logger: testLogger(t),
			Indexers: []index.Indexer{counted(index.Field("user_id", "user_id"), &userCalls), counted(index.Type("types"), &typeCalls)},
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := newRunner()
	stop := run(t, r)
	waitAll(t, r, led, "user_id", "types")
	stop()
	before := dump(t, store, "user_id")
	if len(before) != 500 {
		t.Fatalf("%d entries; want 500", len(before))
	}
	if err := store.Reset(ctx, "user_id"); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.Status(ctx); st[0].Stored || st[0].Lag != 500 || !st[1].Stored || st[1].Lag != 0 {
		t.Fatalf("status of the stopped runner after the reset = %+v", st)
	}
	userCalls.Store(0)
	typeCalls.Store(0)
	r = newRunner()
	run(t, r)
	waitAll(t, r, led, "user_id", "types")
	if after := dump(t, store, "user_id"); !slices.Equal(after, before) {
		t.Fatalf("rebuilt index differs: %d entries, want %d", len(after), len(before))
	}
	if n := userCalls.Load(); n != 500 {
		t.Errorf("user_id's Func was called %d times during the rebuild; want 500", n)
	}
	if n := typeCalls.Load(); n != 0 {
		t.Errorf("types' Func was called %d times; want 0, since its index was kept", n)
	}
}

// TestRestartResumes stops and starts the runner between writes: each event is indexed
// once, and the entries have no duplicates.
func TestRestartResumes(t *testing.T) {
	t.Parallel()
	led, store := newLedger(t), indexmem.New()
	var calls atomic.Int64
	ix := counted(index.Field("user_id", "user_id"), &calls)
	total := 0
	for round := range 4 {
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{ix}, Batch: 7})
		if err != nil {
			t.Fatal(err)
		}
		n := 30 + round*11
		writeUsers(t, led, n, 5)
		total += n
		stop := run(t, r)
		waitAll(t, r, led, "user_id")
		stop()
	}
	if n := calls.Load(); n != int64(total) {
		t.Fatalf("Func was called %d times for %d events", n, total)
	}
	d := dump(t, store, "user_id")
	if len(d) != total {
		t.Fatalf("%d entries for %d events", len(d), total)
	}
}

func TestVersionChangeRebuilds(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), indexmem.New()
	write(t, led, insert("posts", row("id", "1", "user_id", "7", "author_id", "9")))
	for _, c := range []struct {
		column, want string
	}{{"user_id", "7"}, {"author_id", "9"}} {
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{index.Field("owner", c.column)}})
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, r)
		waitAll(t, r, led, "owner")
		stop()
		want := []index.Entry{{Value: c.want, Position: 1}}
		if d := dump(t, store, "owner"); !slices.Equal(d, want) {
			t.Fatalf("owner on column %s: entries %v; want %v", c.column, d, want)
		}
		if st, _, _ := store.State(ctx, "owner"); st.Version != "field:"+c.column {
			t.Fatalf("stored version %q", st.Version)
		}
	}
}

// TestNotificationsInOrder subscribes before the runner starts: it receives every indexed
// event, in order, across catch-up and live indexing.
func TestNotificationsInOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	writeUsers(t, led, 300, 10) // history
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Batch: 16,
		Indexers: []index.Indexer{index.Field("user_id", "user_id"), tags}})
	if err != nil {
		t.Fatal(err)
	}
	users, err := r.Subscribe(ctx, []string{"user_id"}, &index.SubscribeOpts{Buffer: 1000})
	if err != nil {
		t.Fatal(err)
	}
	all, err := r.Subscribe(ctx, nil, &index.SubscribeOpts{Buffer: 2000, Empty: true})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	writeUsers(t, led, 300, 10) // live, while catching up or after
	write(t, led, insert("posts", row("id", "x", "tags", "a b")))
	var last event.Position
	for n := range 600 {
		select {
		case note := <-users.Notifications():
			want := strconv.Itoa(n % 10)
			if note.Indexer != "user_id" || note.Position != last+1 || !slices.Equal(note.Values, []string{want}) {
				t.Fatalf("notification %d = %+v; want user_id at %d with [%s]", n, note, last+1, want)
			}
			last = note.Position
		case <-ctx.Done():
			t.Fatalf("got %d notifications of 600", n)
		}
	}
	// all gets both indexers, each in order, with the empty ones.
	next := map[string]event.Position{"user_id": 1, "tags": 1}
	for next["user_id"] <= 601 || next["tags"] <= 601 {
		select {
		case note := <-all.Notifications():
			if note.Position != next[note.Indexer] {
				t.Fatalf("%s notification at %d; want %d", note.Indexer, note.Position, next[note.Indexer])
			}
			next[note.Indexer]++
			if note.Indexer == "tags" && (note.Position == 601) != (len(note.Values) == 2) {
				t.Fatalf("tags notification %+v", note)
			}
		case <-ctx.Done():
			t.Fatalf("all: next positions %v", next)
		}
	}
	if p := users.Position("user_id"); p != 600 {
		t.Fatalf("Position = %d; want 600", p)
	}
}

func TestSlowSubscriber(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	writeUsers(t, led, 50, 3)
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{index.Type("types")}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Subscribe(ctx, nil, &index.SubscribeOpts{Buffer: 5})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	waitAll(t, r, led, "types") // indexing is not held up by the subscriber
	<-s.Done()
	if !errors.Is(s.Err(), index.ErrSlowSubscriber) {
		t.Fatalf("Err = %v; want ErrSlowSubscriber", s.Err())
	}
	if p := s.Position("types"); p != 5 {
		t.Fatalf("Position = %d; want 5", p)
	}
	var got []event.Position
	for n := range s.Notifications() {
		got = append(got, n.Position)
	}
	if !slices.Equal(got, []event.Position{1, 2, 3, 4, 5}) {
		t.Fatalf("buffered notifications %v", got)
	}
}

func TestSubscriptionContext(t *testing.T) {
	t.Parallel()
	led := newLedger(t)
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{index.Type("types")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Subscribe(t.Context(), []string{"nope"}, nil); err == nil {
		t.Fatal("Subscribe to an unknown indexer succeeded")
	}
	ctx, cancel := context.WithCancel(t.Context())
	s, err := r.Subscribe(ctx, []string{"types"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	<-s.Done()
	if s.Err() != nil {
		t.Fatalf("Err after cancel = %v; want nil", s.Err())
	}
	if _, ok := <-s.Notifications(); ok {
		t.Fatal("Notifications not closed")
	}
}

// TestTruncatedLedger: an indexer built after retention starts at the tail, an indexer
// that falls behind retention skips to the tail, and reads from before the tail fail like
// ledger reads.
func TestTruncatedLedger(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), indexmem.New()
	writeUsers(t, led, 100, 4)
	if err := led.Truncate(ctx, 40); err != nil {
		t.Fatal(err)
	}
	newRunner := func() *index.Runner {
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{index.Field("user_id", "user_id")}, Logger: testLogger(t), Batch: 8})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := newRunner()
	stop := run(t, r)
	waitAll(t, r, led, "user_id")
	stop()
	st, err := r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Since != 40 || st[0].Checkpoint != 100 {
		t.Fatalf("status %+v; want since 40, checkpoint 100", st[0])
	}
	if d := dump(t, store, "user_id"); len(d) != 60 || d[0].Position <= 40 {
		t.Fatalf("%d entries from %v; want 60 after the tail", len(d), d[0])
	}
	if _, err := r.Read(ctx, "user_id", "1", 39, 10); !errors.Is(err, ledger.ErrTruncated) {
		t.Fatalf("Read before the tail: %v; want ErrTruncated", err)
	}
	evs, err := r.Read(ctx, "user_id", "1", 40, 100)
	if err != nil || len(evs) != 15 || evs[0].Position != 42 {
		t.Fatalf("Read from the tail: %d events from %v, %v; want 15 from 42", len(evs), positionsOf(evs), err)
	}

	// Retention passes the stopped indexer's checkpoint.
	writeUsers(t, led, 100, 4)
	if err := led.Truncate(ctx, 150); err != nil {
		t.Fatal(err)
	}
	r = newRunner()
	run(t, r)
	waitAll(t, r, led, "user_id")
	st, _ = r.Status(ctx)
	if st[0].Since != 150 || st[0].Checkpoint != 200 || st[0].Lag != 0 {
		t.Fatalf("status %+v; want since 150, checkpoint 200", st[0])
	}
	evs, err = r.Read(ctx, "user_id", "1", 150, 100)
	if err != nil || len(evs) != 12 || evs[0].Position != 154 {
		t.Fatalf("Read from the new tail: %d events %v, %v; want 12 from 154", len(evs), positionsOf(evs), err)
	}
}

func TestFuncPanicStopsRun(t *testing.T) {
	t.Parallel()
	led := newLedger(t)
	writeUsers(t, led, 10, 2)
	bad := index.Indexer{Name: "bad", Func: func(e *event.Event, dst []string) []string {
		if e.Position == 4 {
			panic("boom")
		}
		return dst
	}}
	nul := index.Indexer{Name: "nul", Func: func(e *event.Event, dst []string) []string { return append(dst, "a\x00b") }}
	for _, c := range []struct {
		ix   index.Indexer
		want string
		at   event.Position
	}{{bad, "Func panicked on the event at position 4: boom", 4}, {nul, "contains a NUL byte", 1}} {
		rep := &haltReporter{}
		r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{c.ix, index.Type("types")}, Reporter: rep})
		if err != nil {
			t.Fatal(err)
		}
		err = r.Run(testContext(t))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("Run = %v; want an error containing %q", err, c.want)
		}
		// The reporter heard of the failing indexer, at its event, and of no other: the
		// indexer stopped with it is not failing.
		want := fmt.Sprintf("index %s@%d: %v", c.ix.Name, c.at, err)
		if len(rep.halts) != 1 || rep.halts[0] != want {
			t.Fatalf("reported halts = %q; want [%q]", rep.halts, want)
		}
	}
}

// haltReporter is a retry.Reporter that keeps the halts it is told.
type haltReporter struct {
	mu    sync.Mutex
	halts []string
}

func (r *haltReporter) Retry(context.Context, retry.Consumer, *event.Event, int, time.Duration, error) {
	panic("an index never retries")
}

func (r *haltReporter) Halted(_ context.Context, c retry.Consumer, e *event.Event, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.halts = append(r.halts, fmt.Sprintf("%s@%d: %v", c, e.Position, err))
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	led := newLedger(t)
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{index.Type("types")}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	waitAll(t, r, led, "types") // Run has loaded its state
	if err := r.Run(testContext(t)); !errors.Is(err, index.ErrRunning) {
		t.Fatalf("second Run = %v; want ErrRunning", err)
	}
}

func TestStatusPhases(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	writeUsers(t, led, 20, 2)
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Indexers: []index.Indexer{index.Type("types")}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := r.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%+v", st[0]); st[0].Phase != index.Stopped || st[0].Lag != 20 || st[0].Stored {
		t.Fatalf("status before Run: %s", got)
	}
	stop := run(t, r)
	waitAll(t, r, led, "types")
	// Wait returns once the checkpoint is stored; the phase follows in the same update.
	st, _ = r.Status(ctx)
	if st[0].Phase != index.Live || st[0].Lag != 0 || st[0].Head != 20 || !st[0].Stored {
		t.Fatalf("status once caught up: %+v", st[0])
	}
	stop()
	st, _ = r.Status(ctx)
	if st[0].Phase != index.Stopped || st[0].Checkpoint != 20 {
		t.Fatalf("status after Run: %+v", st[0])
	}
}

// TestConcurrentReads reads, subscribes and asks for status while events are written and
// indexed (run with -race).
func TestConcurrentReads(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led := newLedger(t)
	r, err := index.New(index.Config{Ledger: led, Store: indexmem.New(), Batch: 5,
		Indexers: []index.Indexer{index.Field("user_id", "user_id"), index.Type("types")}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	sub, err := r.Subscribe(ctx, []string{"user_id"}, &index.SubscribeOpts{Buffer: 1 << 12})
	if err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		writeUsers(t, led, 1000, 3)
	}()
	var reads int
	for done := false; !done; {
		select {
		case <-wrote:
			done = true
		default:
		}
		evs, err := r.Read(ctx, "user_id", "2", 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(evs); i++ {
			if evs[i].Position <= evs[i-1].Position {
				t.Fatalf("Read out of order: %v", positionsOf(evs))
			}
		}
		if _, err := r.Status(ctx); err != nil {
			t.Fatal(err)
		}
		reads++
	}
	waitAll(t, r, led, "user_id", "types")
	evs, err := r.Read(ctx, "user_id", "2", 0, 1000)
	if err != nil || len(evs) != 333 {
		t.Fatalf("Read after writing: %d events, %v; want 333", len(evs), err)
	}
	var last event.Position
	for last < 1000 {
		select {
		case n := <-sub.Notifications():
			if n.Position <= last {
				t.Fatalf("notification at %d after %d", n.Position, last)
			}
			last = n.Position
		case <-ctx.Done():
			t.Fatalf("notifications stopped at %d", last)
		}
	}
	t.Logf("%d reads while writing", reads)
}

func TestManyValuesDeduplicated(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	led, store := newLedger(t), indexmem.New()
	var words []string
	for i := range 100 {
		words = append(words, strconv.Itoa(i%40))
	}
	write(t, led, insert("posts", row("id", "1", "tags", strings.Join(words, " "))))
	r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{tags}})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := r.Subscribe(ctx, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	n := <-sub.Notifications()
	if len(n.Values) != 40 || n.Values[0] != "0" || n.Values[39] != "39" {
		t.Fatalf("values %q; want 0 to 39 once each, in Func's order", n.Values)
	}
	if d := dump(t, store, "tags"); len(d) != 40 {
		t.Fatalf("%d entries; want 40", len(d))
	}
}

// private is a store that is not an index.SharedStore, as index/disk is not.
type private struct{ index.Store }

// TestLedgerReplaced: an index whose checkpoint is past the ledger's head belongs to
// another ledger, and is rebuilt (on a store that is not shared).
func TestLedgerReplaced(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store := private{indexmem.New()}
	for _, n := range []int{100, 10} {
		led := newLedger(t)
		writeUsers(t, led, n, 1)
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{index.Field("user_id", "user_id")}, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		stop := run(t, r)
		waitAll(t, r, led, "user_id")
		stop()
		evs, err := r.Read(ctx, "user_id", "0", 0, 1000)
		if err != nil || len(evs) != n {
			t.Fatalf("ledger of %d events: read %d, %v", n, len(evs), err)
		}
	}
}
