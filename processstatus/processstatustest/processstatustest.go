package processstatustest

import (
	"context"
	"maps"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/processstatus"
)

// OpenFunc prepares a fresh, empty storage for one test and returns a function that opens a
// store on it. Each call of that function opens a new store on the same storage, as a
// restarted process would; the backend releases them when the test ends.
type OpenFunc func(t *testing.T) (open func() processstatus.Store)

// Features says what a backend does.
type Features struct {
	// Durable: a store opened later loads what an earlier one saved (and flushed). False for
	// processstatus.NoStore.
	Durable bool
}

// Run runs the conformance suite.
func Run(t *testing.T, f Features, open OpenFunc) {
	tests := []struct {
		name string
		fn   func(*testing.T, Features, OpenFunc)
	}{
		{"Empty", testEmpty},
		{"SaveLoad", testSaveLoad},
		{"Overwrite", testOverwrite},
		{"Reset", testReset},
		{"ConcurrentLoad", testConcurrentLoad},
		{"TrackerRestart", testTrackerRestart},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, f, open)
		})
	}
}

// flush flushes s when it buffers.
func flush(t *testing.T, s processstatus.Store) {
	t.Helper()
	if f, ok := s.(processstatus.Flusher); ok {
		if err := f.Flush(t.Context()); err != nil {
			t.Fatalf("Flush: %v", err)
		}
	}
}

func load(t *testing.T, s processstatus.Store) processstatus.Snapshot {
	t.Helper()
	snap, err := s.Load(t.Context())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return snap
}

func wantSnapshot(t *testing.T, what string, got processstatus.Snapshot, entities map[string]int64, pos event.Position) {
	t.Helper()
	if len(got.Entities) != len(entities) || !maps.Equal(got.Entities, entities) || got.Position != pos {
		t.Errorf("%s: Load = %v at position %d, want %v at position %d", what, got.Entities, got.Position, entities, pos)
	}
}

func save(t *testing.T, s processstatus.Store, entity string, micros int64) {
	t.Helper()
	if err := s.Save(t.Context(), entity, micros); err != nil {
		t.Fatalf("Save(%q, %d): %v", entity, micros, err)
	}
}

func savePosition(t *testing.T, s processstatus.Store, pos event.Position) {
	t.Helper()
	if err := s.SavePosition(t.Context(), pos); err != nil {
		t.Fatalf("SavePosition(%d): %v", pos, err)
	}
}

func testEmpty(t *testing.T, f Features, open OpenFunc) {
	s := open(t)()
	snap := load(t, s)
	if snap.Entities == nil {
		t.Errorf("Load of an empty store: Entities is nil, want an empty map")
	}
	wantSnapshot(t, "empty store", snap, map[string]int64{}, 0)
}

func testSaveLoad(t *testing.T, f Features, open OpenFunc) {
	opener := open(t)
	s := opener()
	save(t, s, "posts", 1_700_000_000_000_001)
	save(t, s, "comments", -5)
	savePosition(t, s, 42)
	flush(t, s)
	want := map[string]int64{"posts": 1_700_000_000_000_001, "comments": -5}
	var pos event.Position = 42
	if !f.Durable {
		want, pos = map[string]int64{}, 0
	}
	wantSnapshot(t, "same store", load(t, s), want, pos)
	wantSnapshot(t, "reopened store", load(t, opener()), want, pos)
}

func testOverwrite(t *testing.T, f Features, open OpenFunc) {
	opener := open(t)
	s := opener()
	save(t, s, "posts", 10)
	savePosition(t, s, 5)
	flush(t, s)
	save(t, s, "posts", 30)
	save(t, s, "posts", 20) // the store keeps what it is given; the tracker only raises
	savePosition(t, s, 9)
	flush(t, s)
	want := map[string]int64{"posts": 20}
	var pos event.Position = 9
	if !f.Durable {
		want, pos = map[string]int64{}, 0
	}
	wantSnapshot(t, "reopened store", load(t, opener()), want, pos)
}

func testReset(t *testing.T, f Features, open OpenFunc) {
	opener := open(t)
	s := opener()
	save(t, s, "posts", 10)
	savePosition(t, s, 5)
	flush(t, s)
	save(t, s, "comments", 11) // not flushed: Reset drops it too
	if err := s.Reset(t.Context()); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	wantSnapshot(t, "after Reset", load(t, s), map[string]int64{}, 0)
	flush(t, s)
	wantSnapshot(t, "reopened after Reset", load(t, opener()), map[string]int64{}, 0)

	save(t, s, "tags", 7)
	savePosition(t, s, 3)
	flush(t, s)
	want := map[string]int64{"tags": 7}
	var pos event.Position = 3
	if !f.Durable {
		want, pos = map[string]int64{}, 0
	}
	wantSnapshot(t, "saved after Reset", load(t, opener()), want, pos)
}

// testConcurrentLoad runs Load and Reset from other goroutines while one saves, as a status
// page and a tracker would (run it with -race).
func testConcurrentLoad(t *testing.T, f Features, open OpenFunc) {
	s := open(t)()
	ctx := t.Context()
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 50 {
			_ = s.Save(ctx, "e"+strconv.Itoa(i%5), int64(i))
			_ = s.SavePosition(ctx, event.Position(i))
			if i%10 == 0 {
				if fl, ok := s.(processstatus.Flusher); ok {
					if err := fl.Flush(ctx); err != nil {
						t.Errorf("Flush: %v", err)
					}
				}
			}
		}
	})
	wg.Go(func() {
		for range 20 {
			if _, err := s.Load(ctx); err != nil {
				t.Errorf("Load: %v", err)
			}
		}
	})
	wg.Wait()
	flush(t, s)
	snap := load(t, s)
	if f.Durable && (snap.Position != 49 || snap.Entities["e4"] != 49) {
		t.Errorf("after concurrent saves: Load = %v at position %d, want e4 = 49 at position 49", snap.Entities, snap.Position)
	}
}

// testTrackerRestart runs a tracker, stops it, and runs a new one on a reopened store: it
// resumes from the saved position with the saved timestamps, and reports nothing early.
func testTrackerRestart(t *testing.T, f Features, open OpenFunc) {
	opener := open(t)
	l := memory.New(nil)
	t.Cleanup(func() { l.Close() })
	ts := func(i int) int64 { return 1_700_000_000_000_000 + int64(i) }
	ledgertest.WriteTx(t, l, 100, Event(100, 0, "a", 1, ts(1))) // position 1
	ledgertest.WriteTx(t, l, 200, Event(200, 0, "b", 1, ts(2))) // position 2
	ledgertest.WriteTx(t, l, 300, Event(300, 0, "a", 2, ts(3))) // position 3
	ledgertest.WriteTx(t, l, 400, Event(400, 0, "b", 2, ts(4))) // position 4
	if err := l.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	wm := NewWatermarks()
	wm.Set("a", 1) // a's second write (position 3) is held back
	wm.Set("b", 4)

	run := func(tr *processstatus.Tracker) (stop func()) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- tr.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	tr1 := NewTracker(t, processstatus.Config{Ledger: l, Watermark: wm, ChangedFunc: wm.Changed, Store: opener()})
	stop := run(tr1)
	waitFor(t, "first tracker processes b through its second write", func() bool { return tr1.Processed("b", ts(4)) })
	if tr1.Processed("a", ts(3)) {
		t.Errorf("first tracker: a's held write reads processed")
	}
	if !tr1.Processed("a", ts(1)) {
		t.Errorf("first tracker: a's first write reads unprocessed")
	}
	if got := tr1.Position(); got != 2 {
		t.Errorf("first tracker: Position = %d, want 2 (position 3 is held)", got)
	}
	stop()

	// A second tracker on a reopened store, reading through a ledger that records where
	// reading starts.
	rec := &recordingLedger{Ledger: l}
	tr2 := NewTracker(t, processstatus.Config{Ledger: rec, Watermark: wm, ChangedFunc: wm.Changed, Store: opener()})
	stop = run(tr2)
	defer stop()
	waitFor(t, "second tracker reads the ledger", func() bool { _, ok := rec.firstAfter(); return ok })
	waitFor(t, "second tracker catches up", func() bool { return tr2.Processed("b", ts(4)) && tr2.Position() == 2 })
	wantFrom := event.Position(0)
	if f.Durable {
		wantFrom = 2
	}
	if got, ok := rec.firstAfter(); !ok || got != wantFrom {
		t.Errorf("second tracker: first Read after position %d (read: %v), want %d", got, ok, wantFrom)
	}
	if tr2.Processed("a", ts(3)) {
		t.Errorf("second tracker: a's held write reads processed")
	}
	wm.Set("a", 3)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := tr2.Wait(ctx, "a", ts(3)); err != nil {
		t.Fatalf("Wait for a's write once its watermark passed it: %v", err)
	}
	waitFor(t, "position reaches the head", func() bool { return tr2.Position() == 4 })
}

// recordingLedger records the position of the first Read.
type recordingLedger struct {
	processstatus.Ledger
	mu    sync.Mutex
	after event.Position
	read  bool
}

func (r *recordingLedger) Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error) {
	r.mu.Lock()
	if !r.read {
		r.after, r.read = after, true
	}
	r.mu.Unlock()
	return r.Ledger.Read(ctx, after, limit)
}

func (r *recordingLedger) firstAfter() (event.Position, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.after, r.read
}

// NewTracker returns a tracker for cfg, failing the test on a configuration error.
func NewTracker(t testing.TB, cfg processstatus.Config) *processstatus.Tracker {
	t.Helper()
	tr, err := processstatus.New(cfg)
	if err != nil {
		t.Fatalf("processstatus.New: %v", err)
	}
	return tr
}

// waitFor polls cond until it holds, failing the test after 10 seconds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Event returns an insert into table of the row id, committed at lsn, whose updated_at
// column (timestamptz) holds micros.
func Event(lsn event.LSN, ordinal uint32, table string, id int, micros int64) *event.Event {
	e := ledgertest.Event(lsn, ordinal, table, id)
	ts := time.UnixMicro(micros).UTC().Format("2006-01-02 15:04:05.999999") + "+00"
	e.NewRecord = append(e.NewRecord, event.Field{Name: "updated_at", Value: event.Text(1184, ts)})
	e.Source.Columns = append(e.Source.Columns, event.Column{Name: "updated_at", Type: "timestamp with time zone", OID: 1184})
	return e
}

// Watermarks is a [processstatus.Watermark] a test moves by hand. An entity not set has the
// default watermark, 0 unless set with SetDefault. It is safe for concurrent use.
type Watermarks struct {
	mu      sync.Mutex
	def     event.Position
	m       map[string]event.Position
	changed chan struct{}
}

var _ processstatus.Watermark = (*Watermarks)(nil)

// NewWatermarks returns watermarks at 0 for every entity.
func NewWatermarks() *Watermarks {
	return &Watermarks{m: map[string]event.Position{}, changed: make(chan struct{})}
}

// Set moves entity's watermark to pos.
func (w *Watermarks) Set(entity string, pos event.Position) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m[entity] = pos
	w.notify()
}

// SetDefault moves the watermark of every entity not Set to pos.
func (w *Watermarks) SetDefault(pos event.Position) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.def = pos
	w.notify()
}

func (w *Watermarks) notify() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// CommittedThrough returns entity's watermark.
func (w *Watermarks) CommittedThrough(entity string) event.Position {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p, ok := w.m[entity]; ok {
		return p
	}
	return w.def
}

// Changed returns a channel closed at the next Set or SetDefault: Config.ChangedFunc.
func (w *Watermarks) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// HeadWatermark is a [processstatus.Watermark] with no operator: every entity's watermark
// is the ledger head, as for an entity no operator listens to.
type HeadWatermark struct {
	Ledger interface{ State() ledger.State }
}

// CommittedThrough returns the ledger head.
func (h HeadWatermark) CommittedThrough(string) event.Position { return h.Ledger.State().Head }
