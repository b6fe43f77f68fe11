package projector_test

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/retry"
	"github.com/walflow/walflow/statestore"
	"github.com/walflow/walflow/statestore/disk"
	statememory "github.com/walflow/walflow/statestore/memory"
	"github.com/walflow/walflow/statestore/pg"
	"github.com/walflow/walflow/statestore/statestoretest"
)

// sfAccounts is how many accounts the events of the stateful tests spread over.
const sfAccounts = 7

// sfLedger returns a memory ledger holding n events: inserts into accounts, in
// transactions of 100, event i (from 0) for account i%sfAccounts with amount i%13+1.
func sfLedger(t *testing.T, n int) *memory.Ledger {
	t.Helper()
	led := memory.New(&memory.Options{Indexer: func(e *event.Event, dst []string) []string { return append(dst, e.Name) }})
	t.Cleanup(func() { _ = led.Close() })
	sfAppend(t, led, 0, n)
	return led
}

// sfAppend appends events from to to (exclusive), numbered as sfLedger does.
func sfAppend(t *testing.T, led *memory.Ledger, from, to int) {
	t.Helper()
	ctx := t.Context()
	for start := from; start < to; start += 100 {
		lsn := event.LSN(1000 + 10*start)
		if err := led.BeginTx(ctx, event.TxMeta{CommitLSN: lsn, CommitTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		for i := start; i < min(start+100, to); i++ {
			e := event.Event{Name: "accounts", Type: event.Insert, LSN: lsn, Ordinal: uint32(i - start), Timestamp: time.Now(),
				NewRecord: event.Record{
					{Name: "account", Value: event.Text(25, strconv.Itoa(i%sfAccounts))},
					{Name: "amount", Value: event.Text(20, strconv.Itoa(i%13+1))},
				}}
			if err := led.Append(ctx, &e); err != nil {
				t.Fatal(err)
			}
		}
		if err := led.CommitTx(ctx, lsn+1); err != nil {
			t.Fatal(err)
		}
	}
	if err := led.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

// sfExpected is the state of the counting projector after events 0 to n-1.
func sfExpected(n int) map[string][2]int64 {
	want := map[string][2]int64{}
	for i := range n {
		k := strconv.Itoa(i % sfAccounts)
		v := want[k]
		v[0]++
		v[1] += int64(i%13 + 1)
		want[k] = v
	}
	return want
}

// counter is a counting stateful projector: per account, the number of events and the sum
// of their amounts, in 16 bytes.
type counter struct {
	calls atomic.Int64
	// onCall, when set, runs after each event applied, with the number of calls so far.
	onCall func(n int64)
}

func (c *counter) handle(_ context.Context, st *projector.State, e event.Event) error {
	acc, _ := e.NewRecord.Get("account")
	amt, _ := e.NewRecord.Get("amount")
	id, _ := acc.Text()
	s, _ := amt.Text()
	a, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return err
	}
	v := make([]byte, 16)
	if old, ok := st.Get(id); ok {
		copy(v, old)
	}
	binary.BigEndian.PutUint64(v, binary.BigEndian.Uint64(v)+1)
	binary.BigEndian.PutUint64(v[8:], binary.BigEndian.Uint64(v[8:])+uint64(a))
	st.Set(id, v)
	n := c.calls.Add(1)
	if c.onCall != nil {
		c.onCall(n)
	}
	return nil
}

func decodeState(t *testing.T, st *projector.State) map[string][2]int64 {
	t.Helper()
	got := map[string][2]int64{}
	for id, v := range st.All() {
		if len(v) != 16 {
			t.Fatalf("entity %q has %d bytes, want 16", id, len(v))
		}
		got[id] = [2]int64{int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))}
	}
	return got
}

func checkState(t *testing.T, st *projector.State, n int) {
	t.Helper()
	got, want := decodeState(t, st), sfExpected(n)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("state after %d events:\n got %v\nwant %v", n, got, want)
	}
}

// sfRun is one "process": a SavepointStore on storage, a counting projector "counts" and
// a Runner.
type sfRun struct {
	t      *testing.T
	store  *projector.SavepointStore
	c      *counter
	r      *projector.Runner
	cancel context.CancelFunc
	done   chan error
}

type sfOpts struct {
	cfg      projector.SavepointConfig
	batch    int
	onCall   func(n int64)
	handle   projector.StateHandlerFunc // default the counter's
	fallback []projector.Projector
	retry    retry.Policy
	proj     *projector.Projector // default counts, on accounts
	parent   context.Context      // of Run's context; default Background
}

func startProcess(t *testing.T, led *memory.Ledger, storage statestore.Storage, o sfOpts) *sfRun {
	t.Helper()
	o.cfg.Storage = storage
	o.cfg.Logger = testLogger(t)
	store, err := projector.NewSavepointStore(o.cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &counter{onCall: o.onCall}
	h := o.handle
	if h == nil {
		h = c.handle
	}
	tmpl := projector.Projector{Name: "counts", Entities: []string{"public.accounts"}}
	if o.proj != nil {
		tmpl = *o.proj
	}
	p, err := store.Stateful(tmpl, h)
	if err != nil {
		t.Fatal(err)
	}
	r, err := projector.New(projector.Config{Ledger: led, Store: store, Projectors: append([]projector.Projector{p}, o.fallback...),
		BatchSize: o.batch, Logger: testLogger(t), Retry: o.retry, SleepFunc: func(context.Context, time.Duration) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(cmp.Or(o.parent, context.Background()))
	s := &sfRun{t: t, store: store, c: c, r: r, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- r.Run(ctx) }()
	t.Cleanup(s.stop)
	return s
}

// stop cancels the runner and waits for Run to return.
func (s *sfRun) stop() {
	s.cancel()
	if err, ok := <-s.done; ok {
		close(s.done)
		if err != nil {
			s.t.Errorf("Run: %v", err)
		}
	}
}

func (s *sfRun) waitLive() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.t.Context(), 30*time.Second)
	defer cancel()
	if err := s.r.WaitLive(ctx, "counts"); err != nil {
		s.t.Fatalf("wait until live: %v; status %+v", err, s.r.Status())
	}
}

func latestPosition(t *testing.T, storage statestore.Storage) event.Position {
	t.Helper()
	sp, err := storage.LatestSavepoint(t.Context(), "counts")
	if err != nil {
		t.Fatal(err)
	}
	return sp.Position
}

// stopAtRandom starts a process, crashes it once its handler has seen a random number of
// events (its storage takes no write from then on, so the stop saves nothing, as a killed
// process would not), and waits until it stopped. It returns the number of handler calls.
func stopAtRandom(t *testing.T, led *memory.Ledger, storage statestore.Storage, o sfOpts, total int) (calls int64, at int64) {
	t.Helper()
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	at = int64(total/10 + rng.IntN(total*8/10))
	t.Logf("seed %d: stopping after %d events", seed, at)
	var once sync.Once
	stopped := make(chan struct{})
	o.onCall = func(n int64) {
		if n == at {
			once.Do(func() { close(stopped) })
		}
	}
	crashable := statestoretest.NewCrashable(storage)
	p := startProcess(t, led, crashable, o)
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler was not called often enough")
	}
	crashable.Crash()
	p.stop()
	return p.c.calls.Load(), at
}

func TestStatefulCrashReplaysOnlyTheTail(t *testing.T) {
	t.Parallel()
	const total, every, batch = 10000, 1000, 100
	led := sfLedger(t, total)
	storage := statememory.New()
	o := sfOpts{cfg: projector.SavepointConfig{Every: every, Interval: -1}, batch: batch}
	calls1, _ := stopAtRandom(t, led, storage, o, total)
	// A crash: the next process starts from the latest savepoint.
	saved := latestPosition(t, storage)
	if saved == 0 || int64(saved) > calls1 {
		t.Fatalf("latest savepoint at %d after %d events", saved, calls1)
	}

	p2 := startProcess(t, led, storage, o)
	p2.waitLive()
	calls2 := p2.c.calls.Load()
	if calls2 != total-int64(saved) {
		t.Fatalf("the restarted projector handled %d events, want the %d after its savepoint at %d", calls2, total-int64(saved), saved)
	}
	replayed := calls1 + calls2 - total
	t.Logf("first run handled %d events, savepoint at %d, second run %d: %d replayed", calls1, saved, calls2, replayed)
	if replayed < 0 || replayed >= every+batch {
		t.Fatalf("%d events replayed; want fewer than Every+BatchSize = %d", replayed, every+batch)
	}
	checkState(t, p2.store.State("counts"), total)
	if s := p2.r.Status()[0]; s.Position != total {
		t.Fatalf("position %d, want %d", s.Position, total)
	}
}

// A clean stop flushes: the next start replays nothing.
func TestStatefulCleanStopReplaysNothing(t *testing.T) {
	t.Parallel()
	const total = 10000
	led := sfLedger(t, total)
	storage := statememory.New()
	o := sfOpts{cfg: projector.SavepointConfig{Every: 1000, Interval: -1}, batch: 100}
	var once sync.Once
	stopped := make(chan struct{})
	at := int64(1 + rand.IntN(total-1))
	o.onCall = func(n int64) {
		if n == at {
			once.Do(func() { close(stopped) })
		}
	}
	p1 := startProcess(t, led, storage, o)
	<-stopped
	p1.stop()
	calls1 := p1.c.calls.Load()
	if got := latestPosition(t, storage); int64(got) != calls1 {
		t.Fatalf("after a clean stop the latest savepoint is at %d; the projector had applied %d events", got, calls1)
	}
	o.onCall = nil
	p2 := startProcess(t, led, storage, o)
	p2.waitLive()
	if calls2 := p2.c.calls.Load(); calls1+calls2 != total {
		t.Fatalf("handled %d then %d events; want %d in all, none replayed", calls1, calls2, total)
	}
	checkState(t, p2.store.State("counts"), total)
}

// failingStorage fails every SaveSavepoint once armed: a process that dies before it can
// save again.
type failingStorage struct {
	statestore.Storage
	fail atomic.Bool
}

func (f *failingStorage) SaveSavepoint(ctx context.Context, runID string, sp statestore.Savepoint) error {
	if f.fail.Load() {
		return errors.New("disk on fire")
	}
	return f.Storage.SaveSavepoint(ctx, runID, sp)
}

func TestStatefulFailingSavesThenCrash(t *testing.T) {
	t.Parallel()
	const total, every, batch = 5000, 500, 50
	led := sfLedger(t, total)
	mem := statememory.New()
	fs := &failingStorage{Storage: mem}
	o := sfOpts{cfg: projector.SavepointConfig{Every: every, Interval: -1}, batch: batch}
	var once sync.Once
	stopped := make(chan struct{})
	o.onCall = func(n int64) {
		if n == 1234 {
			fs.fail.Store(true) // from here on, savepoints fail; the stop's save too
		}
		if n == 3456 {
			once.Do(func() { close(stopped) })
		}
	}
	p1 := startProcess(t, led, fs, o)
	<-stopped
	p1.stop()
	if err := p1.store.Flush(t.Context()); err == nil {
		t.Fatal("Flush succeeded on a failing storage")
	}
	if got := latestPosition(t, mem); got != 1000 {
		t.Fatalf("latest savepoint at %d, want 1000 (the last one before saves failed)", got)
	}
	fs.fail.Store(false)
	o.onCall = nil
	p2 := startProcess(t, led, fs, o)
	p2.waitLive()
	if calls2 := p2.c.calls.Load(); calls2 != total-1000 {
		t.Fatalf("the restarted projector handled %d events, want %d", calls2, total-1000)
	}
	checkState(t, p2.store.State("counts"), total)
}

func TestStatefulDiskstore(t *testing.T) {
	t.Parallel()
	const total, every, batch = 3000, 300, 64
	led := sfLedger(t, total)
	dir := t.TempDir()
	open := func() *disk.Store {
		s, err := disk.Open(t.Context(), dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ds := open()
	o := sfOpts{cfg: projector.SavepointConfig{Every: every, Interval: -1}, batch: batch}
	calls1, _ := stopAtRandom(t, led, ds, o, total)
	if err := ds.Close(); err != nil {
		t.Fatal(err)
	}
	ds = open()
	t.Cleanup(func() { _ = ds.Close() })
	saved := latestPosition(t, ds)
	o.onCall = nil
	p2 := startProcess(t, led, ds, o)
	p2.waitLive()
	calls2 := p2.c.calls.Load()
	if calls2 != total-int64(saved) {
		t.Fatalf("the restarted projector handled %d events, want the %d after its savepoint at %d", calls2, total-int64(saved), saved)
	}
	if replayed := calls1 + calls2 - total; replayed < 0 || replayed >= every+batch {
		t.Fatalf("%d events replayed; want fewer than %d", replayed, every+batch)
	}
	checkState(t, p2.store.State("counts"), total)
	// Live events after the restart are applied and flushed when Run stops.
	sfAppend(t, led, total, total+200)
	until(t, p2.r, "position 3200", func() bool { return p2.r.Status()[0].Position == total+200 })
	p2.stop()
	if got := latestPosition(t, ds); got != total+200 {
		t.Fatalf("latest savepoint at %d after a clean stop, want %d", got, total+200)
	}
	checkState(t, p2.store.State("counts"), total+200)
}

func TestStatefulKeep(t *testing.T) {
	t.Parallel()
	led := sfLedger(t, 1000)
	storage := statememory.New()
	p := startProcess(t, led, storage, sfOpts{cfg: projector.SavepointConfig{Every: 100, Interval: -1, Keep: 3}, batch: 50})
	p.waitLive()
	infos, err := storage.ListSavepoints(t.Context(), "counts")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 3 {
		t.Fatalf("%d savepoints kept, want 3: %+v", len(infos), infos)
	}
	for i, want := range []event.Position{800, 900, 1000} {
		if infos[i].Position != want || infos[i].Entities != sfAccounts+1 {
			t.Fatalf("savepoint %d is %+v, want position %d with %d entities (the accounts and the checkpoint)", i, infos[i], want, sfAccounts+1)
		}
	}
}

func TestStatefulInterval(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		storage := statememory.New()
		store, err := projector.NewSavepointStore(projector.SavepointConfig{Storage: storage, Every: -1, Interval: 10 * time.Second, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		c := &counter{}
		p, err := store.Stateful(projector.Projector{Name: "counts"}, c.handle)
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		cp, err := store.Load(ctx, "counts")
		if err != nil {
			t.Fatal(err)
		}
		pos := event.Position(0)
		apply := func(n int) {
			for range n {
				pos++
				e := event.Event{Position: pos, Name: "accounts", Type: event.Insert, NewRecord: event.Record{
					{Name: "account", Value: event.Text(25, "a")}, {Name: "amount", Value: event.Text(20, "2")}}}
				if err := p.Handle(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			cp.Position, cp.Seen = pos, pos
			if err := store.Save(ctx, "counts", cp); err != nil {
				t.Fatal(err)
			}
			cp.Version++
		}
		count := func() int {
			infos, err := storage.ListSavepoints(ctx, "counts")
			if err != nil {
				t.Fatal(err)
			}
			return len(infos)
		}
		apply(50)
		if n := count(); n != 0 {
			t.Fatalf("%d savepoints before Interval passed", n)
		}
		time.Sleep(9 * time.Second)
		apply(50)
		if n := count(); n != 0 {
			t.Fatalf("%d savepoints before Interval passed", n)
		}
		time.Sleep(time.Second)
		apply(1)
		if n := count(); n != 1 {
			t.Fatalf("%d savepoints once Interval passed, want 1", n)
		}
		sp, err := storage.LatestSavepoint(ctx, "counts")
		if err != nil {
			t.Fatal(err)
		}
		if sp.Position != 101 || !sp.Time().Equal(time.Now()) {
			t.Fatalf("savepoint at position %d, time %v; want 101 at %v", sp.Position, sp.Time(), time.Now())
		}
		// Saving the same position again after Interval saves nothing: nothing moved.
		time.Sleep(time.Minute)
		if err := store.Save(ctx, "counts", cp); err != nil {
			t.Fatal(err)
		}
		if n := count(); n != 1 {
			t.Fatalf("%d savepoints after an idle Interval, want 1", n)
		}
	})
}

func TestStatefulReset(t *testing.T) {
	t.Parallel()
	const total = 2000
	led := sfLedger(t, total)
	storage := statememory.New()
	p := startProcess(t, led, storage, sfOpts{cfg: projector.SavepointConfig{Every: 500, Interval: -1}, batch: 100})
	p.waitLive()
	checkState(t, p.store.State("counts"), total)
	if err := p.r.Reset(t.Context(), "counts"); err != nil {
		t.Fatal(err)
	}
	until(t, p.r, "the replay", func() bool { return p.c.calls.Load() == 2*total && p.r.Status()[0].Phase == projector.Live })
	checkState(t, p.store.State("counts"), total)
	infos, err := storage.ListSavepoints(t.Context(), "counts")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[1].Position != total {
		t.Fatalf("savepoints after the reset and replay: %+v", infos)
	}

	// Reset while the runner is stopped: the next start replays everything.
	p.stop()
	if err := p.r.Reset(t.Context(), "counts"); err != nil {
		t.Fatal(err)
	}
	if ok, err := storage.IsInitialized(t.Context(), "counts"); err != nil || ok {
		t.Fatalf("the run is initialized after Reset (%v, %v)", ok, err)
	}
	if n := p.store.State("counts").Len(); n != 0 {
		t.Fatalf("%d entities after Reset", n)
	}
	p2 := startProcess(t, led, storage, sfOpts{cfg: projector.SavepointConfig{Every: 500, Interval: -1}, batch: 100})
	p2.waitLive()
	if n := p2.c.calls.Load(); n != total {
		t.Fatalf("handled %d events after the reset, want %d", n, total)
	}
	checkState(t, p2.store.State("counts"), total)
}

func TestStatefulHaltSurvivesRestart(t *testing.T) {
	t.Parallel()
	const total, bad = 1000, 777
	led := sfLedger(t, total)
	storage := statememory.New()
	var broken atomic.Bool
	broken.Store(true)
	var fails atomic.Int64
	c := &counter{}
	handle := func(ctx context.Context, st *projector.State, e event.Event) error {
		// Change the state before failing: the change must be undone.
		st.Set("scratch", []byte("x"))
		if e.Position == bad && broken.Load() {
			st.Set("0", []byte("garbage"))
			fails.Add(1)
			return errors.New("cannot apply event 777")
		}
		st.Delete("scratch")
		return c.handle(ctx, st, e)
	}
	o := sfOpts{cfg: projector.SavepointConfig{Every: 100, Interval: -1}, batch: 50, handle: handle, retry: retry.Policy{MaxRetries: 2}}
	p := startProcess(t, led, storage, o)
	until(t, p.r, "the halt", func() bool { return p.r.Status()[0].Phase == projector.Halted })
	if f := fails.Load(); f != 3 {
		t.Fatalf("event %d failed %d times, want 3 (1 + 2 retries)", bad, f)
	}
	if s := p.r.Status()[0]; s.Position != bad-1 || s.FailedPosition != bad {
		t.Fatalf("halted status %+v", s)
	}
	checkState(t, p.store.State("counts"), bad-1)
	p.stop()

	// A new process loads the halt from the savepoint and stays halted.
	p2 := startProcess(t, led, storage, o)
	until(t, p2.r, "the halt", func() bool { return p2.r.Status()[0].Phase == projector.Halted })
	if s := p2.r.Status()[0]; s.Position != bad-1 || s.FailedPosition != bad || s.Error != "cannot apply event 777" {
		t.Fatalf("status after restart %+v", s)
	}
	checkState(t, p2.store.State("counts"), bad-1)
	if n := c.calls.Load(); n != bad-1 {
		t.Fatalf("handled %d events, want %d", n, bad-1)
	}

	// Fixed and restarted, it resumes at the failed event.
	broken.Store(false)
	if err := p2.r.Restart(t.Context(), "counts"); err != nil {
		t.Fatal(err)
	}
	p2.waitLive()
	checkState(t, p2.store.State("counts"), total)
	if n := c.calls.Load(); n != total {
		t.Fatalf("handled %d events in all, want %d (none twice)", n, total)
	}
	if _, ok := p2.store.State("counts").Get("scratch"); ok {
		t.Fatal("a failed event's change was kept")
	}
}

func TestStatefulRetryUndoesTheFailedAttempt(t *testing.T) {
	t.Parallel()
	const total = 500
	led := sfLedger(t, total)
	c := &counter{}
	var failed sync.Map
	handle := func(ctx context.Context, st *projector.State, e event.Event) error {
		if err := c.handle(ctx, st, e); err != nil {
			return err
		}
		if e.Position%97 == 0 {
			if _, again := failed.LoadOrStore(e.Position, true); !again {
				c.calls.Add(-1)
				return fmt.Errorf("event %d fails once, after changing the state", e.Position)
			}
		}
		return nil
	}
	p := startProcess(t, led, statememory.New(), sfOpts{cfg: projector.SavepointConfig{Every: 100, Interval: -1}, batch: 32, handle: handle})
	p.waitLive()
	checkState(t, p.store.State("counts"), total)
}

func TestStatefulFallback(t *testing.T) {
	t.Parallel()
	led := sfLedger(t, 300)
	fallback := projector.NewMemoryStore()
	rc := &recorder{}
	storage := statememory.New()
	p := startProcess(t, led, storage, sfOpts{cfg: projector.SavepointConfig{Fallback: fallback}, batch: 100,
		fallback: []projector.Projector{{Name: "plain", Handle: rc.handle}}})
	p.waitLive()
	if err := p.r.WaitLive(t.Context(), "plain"); err != nil {
		t.Fatal(err)
	}
	checkRun(t, rc.positions(), 0, 300)
	if names := fallback.Names(); len(names) != 1 || names[0] != "plain" {
		t.Fatalf("the fallback store holds %v, want only plain", names)
	}
	// The stored positions, as a standby reads them: the latest savepoint's for the
	// stateful projector, the fallback's for the other, none for an unknown name.
	p.stop()
	got, err := p.store.StoredPositions(t.Context(), []string{"counts", "plain", "unknown"})
	if want := latestPosition(t, storage); err != nil || len(got) != 2 || got["counts"] != want || got["plain"] != 300 || want != 300 {
		t.Fatalf("StoredPositions = %v, %v; want counts at its latest savepoint 300 (%d) and plain at 300", got, err, want)
	}
}

func TestStatefulRefused(t *testing.T) {
	t.Parallel()
	if _, err := projector.NewSavepointStore(projector.SavepointConfig{}); err == nil {
		t.Fatal("NewSavepointStore without Storage succeeded")
	}
	store, err := projector.NewSavepointStore(projector.SavepointConfig{Storage: statememory.New()})
	if err != nil {
		t.Fatal(err)
	}
	h := (&counter{}).handle
	for name, p := range map[string]projector.Projector{
		"HandleTx": {Name: "a", HandleTx: func(context.Context, pgx.Tx, event.Event) error { return nil }},
		"Handle":   {Name: "b", Handle: func(context.Context, event.Event) error { return nil }},
		"no name":  {},
		"bad name": {Name: "a\nb"},
	} {
		if _, err := store.Stateful(p, h); err == nil {
			t.Errorf("%s: Stateful succeeded", name)
		}
	}
	if _, err := store.Stateful(projector.Projector{Name: "ok"}, h); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Stateful(projector.Projector{Name: "ok"}, h); err == nil {
		t.Fatal("a second projector named ok was registered")
	}
	if _, err := store.Load(t.Context(), "other"); err == nil {
		t.Fatal("Load of an unregistered name without Fallback succeeded")
	}
}

func TestStatefulConflict(t *testing.T) {
	t.Parallel()
	storage := statememory.New()
	ctx := t.Context()
	newStore := func() *projector.SavepointStore {
		s, err := projector.NewSavepointStore(projector.SavepointConfig{Storage: storage, Every: 1, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Stateful(projector.Projector{Name: "counts"}, (&counter{}).handle); err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := newStore(), newStore()
	cpA, err := a.Load(ctx, "counts")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Save(ctx, "counts", projector.Checkpoint{Position: 5, Version: cpA.Version + 1}); !errors.Is(err, projector.ErrConflict) {
		t.Fatalf("Save with a wrong version: %v, want ErrConflict", err)
	}
	cpB, err := b.Load(ctx, "counts")
	if err != nil {
		t.Fatal(err)
	}
	// b saves a savepoint (Flush, since it applied nothing): a's latest is no longer its.
	cpB.Position = 3
	if err := b.Save(ctx, "counts", cpB); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cpA.Position = 4
	if err := a.Save(ctx, "counts", cpA); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); !errors.Is(err, projector.ErrConflict) {
		t.Fatalf("Flush over another process's savepoint: %v, want ErrConflict", err)
	}
	if got := latestPosition(t, storage); got != 3 {
		t.Fatalf("latest savepoint at %d, want b's at 3", got)
	}
}

func TestStateSetChecksIDs(t *testing.T) {
	t.Parallel()
	store, err := projector.NewSavepointStore(projector.SavepointConfig{Storage: statememory.New(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := store.Stateful(projector.Projector{Name: "ids"}, func(_ context.Context, st *projector.State, e event.Event) error {
		st.Set("fine", []byte("1"))
		st.Set(e.Name, []byte("2"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Load(t.Context(), "ids"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "a\x00b", "\xff"} {
		if err := p.Handle(t.Context(), event.Event{Position: 1, Name: id}); err == nil {
			t.Errorf("entity id %q accepted", id)
		}
	}
	if n := store.State("ids").Len(); n != 0 {
		t.Fatalf("%d entities kept from refused events", n)
	}
	if err := p.Handle(t.Context(), event.Event{Position: 1, Name: "ok"}); err != nil {
		t.Fatal(err)
	}
	if v, ok := store.State("ids").Get("ok"); !ok || string(v) != "2" {
		t.Fatalf("Get(ok) = %q, %v", v, ok)
	}
}

func TestStatefulStopMidBatch(t *testing.T) {
	t.Parallel()
	const total, batch = 3000, 100
	led := sfLedger(t, total)
	storage := statememory.New()
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &counter{}
	const at = 1650 // in the middle of a batch
	handle := func(ctx context.Context, st *projector.State, e event.Event) error {
		// A handler that gives up once the runner stops: the runner then drops the rest of
		// the batch, and the events of the batch applied so far are in the state but not
		// in the position it saves at stop.
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.handle(ctx, st, e); err != nil {
			return err
		}
		if c.calls.Load() == at {
			cancel()
		}
		return nil
	}
	p := startProcess(t, led, storage, sfOpts{cfg: projector.SavepointConfig{Every: 1000, Interval: -1}, batch: batch, handle: handle, parent: parent})
	<-parent.Done()
	p.stop()
	if got := p.r.Status()[0].Position; got != 1600 {
		t.Fatalf("the runner saved position %d at stop, want 1600 (the batch before the stop)", got)
	}
	// The state holds 50 events the position does not count: the flush at stop must not
	// save it.
	if got := latestPosition(t, storage); got != 1000 {
		t.Fatalf("latest savepoint at %d, want 1000", got)
	}
	// Running the same Runner again (a restart in the same process) restores the
	// savepoint, not the state in memory.
	p2 := &sfRun{t: t, store: p.store, c: c, r: p.r, done: make(chan error, 1)}
	ctx, cancel2 := context.WithCancel(context.Background())
	p2.cancel = cancel2
	go func() { p2.done <- p.r.Run(ctx) }()
	t.Cleanup(p2.stop)
	p2.waitLive()
	checkState(t, p.store.State("counts"), total)
	if n := c.calls.Load(); n != at+total-1000 {
		t.Fatalf("handled %d events in all, want %d (the first run's %d, then all after the savepoint at 1000)", n, at+total-1000, at)
	}
}

func mustStateful(t *testing.T, s *projector.SavepointStore, name string) projector.Projector {
	t.Helper()
	p, err := s.Stateful(projector.Projector{Name: name}, (&counter{}).handle)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStatefulHaltWithStateAhead(t *testing.T) {
	t.Parallel()
	storage := statememory.New()
	ctx := t.Context()
	newStore := func() (*projector.SavepointStore, projector.Projector) {
		s, err := projector.NewSavepointStore(projector.SavepointConfig{Storage: storage, Every: 2, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return s, mustStateful(t, s, "counts")
	}
	s, p := newStore()
	cp, err := s.Load(ctx, "counts")
	if err != nil {
		t.Fatal(err)
	}
	ev := func(pos event.Position) event.Event {
		return event.Event{Position: pos, Name: "accounts", NewRecord: event.Record{
			{Name: "account", Value: event.Text(25, "a")}, {Name: "amount", Value: event.Text(20, "1")}}}
	}
	for pos := range event.Position(2) {
		if err := p.Handle(ctx, ev(pos+1)); err != nil {
			t.Fatal(err)
		}
	}
	cp.Position, cp.Seen = 2, 2
	if err := s.Save(ctx, "counts", cp); err != nil { // a savepoint: Every is 2
		t.Fatal(err)
	}
	cp.Version++
	for pos := event.Position(3); pos <= 5; pos++ {
		if err := p.Handle(ctx, ev(pos)); err != nil {
			t.Fatal(err)
		}
	}
	// A halt at 4 whose position (3) does not count events 4 and 5, applied already.
	cp.Position, cp.Seen, cp.Halted, cp.Error, cp.FailedPosition = 3, 3, true, "boom", 4
	if err := s.Save(ctx, "counts", cp); err != nil {
		t.Fatal(err)
	}
	s2, _ := newStore()
	got, err := s2.Load(ctx, "counts")
	if err != nil {
		t.Fatal(err)
	}
	if got.Position != 2 || !got.Halted || got.Error != "boom" || got.FailedPosition != 4 {
		t.Fatalf("loaded %+v; want the halt recorded with the savepoint's position 2", got)
	}
	if v, _ := s2.State("counts").Get("a"); binary.BigEndian.Uint64(v) != 2 {
		t.Fatalf("the restored state counts %d events, want the savepoint's 2", binary.BigEndian.Uint64(v))
	}
}

// seqLedger returns a ledger of n events alternating between tables a and b, each with an
// id column counting from 1 per table; the ids of a come in swapped pairs (2, 1, 4, 3,
// ...), so that a's events wait in the reorder buffer while b's are applied.
func seqLedger(t *testing.T, n int) *memory.Ledger {
	t.Helper()
	led := memory.New(&memory.Options{Indexer: func(e *event.Event, dst []string) []string { return append(dst, e.Name) }})
	t.Cleanup(func() { _ = led.Close() })
	ctx := t.Context()
	for i := range n {
		lsn := event.LSN(1000 + 10*i)
		if err := led.BeginTx(ctx, event.TxMeta{CommitLSN: lsn, CommitTime: time.Now()}); err != nil {
			t.Fatal(err)
		}
		table, k := "a", i/2 // k-th event of its table, from 0
		id := k + 1
		if i%2 == 1 {
			table = "b"
		} else if k%2 == 0 {
			id = k + 2
		} else {
			id = k
		}
		e := event.Event{Name: table, Type: event.Insert, LSN: lsn, Timestamp: time.Now(),
			NewRecord: event.Record{{Name: "id", Value: event.Text(20, strconv.Itoa(id))}}}
		if err := led.Append(ctx, &e); err != nil {
			t.Fatal(err)
		}
		if err := led.CommitTx(ctx, lsn+1); err != nil {
			t.Fatal(err)
		}
	}
	if err := led.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return led
}

func TestStatefulSequence(t *testing.T) {
	t.Parallel()
	const total, every, batch = 4000, 400, 33
	led := seqLedger(t, total)
	storage := statememory.New()
	var calls atomic.Int64
	// The state is, per table, the last id applied: each must be the one before plus 1.
	handle := func(_ context.Context, st *projector.State, e event.Event) error {
		v, _ := e.NewRecord.Get("id")
		s, _ := v.Text()
		id, _ := strconv.Atoi(s)
		last := 0
		if old, ok := st.Get(e.Name); ok {
			last, _ = strconv.Atoi(string(old))
		}
		if id != last+1 {
			return fmt.Errorf("%s: id %d after %d", e.Name, id, last)
		}
		st.Set(e.Name, []byte(strconv.Itoa(id)))
		calls.Add(1)
		return nil
	}
	proj := projector.Projector{Name: "seq", Entities: []string{"a", "b"}, Sequence: &projector.SequenceConfig{}}
	o := sfOpts{cfg: projector.SavepointConfig{Every: every, Interval: -1}, batch: batch, handle: handle, proj: &proj}
	stopped := make(chan struct{})
	var once sync.Once
	o.parent = context.Background()
	o.handle = func(ctx context.Context, st *projector.State, e event.Event) error {
		err := handle(ctx, st, e)
		if calls.Load() == 2345 {
			once.Do(func() { close(stopped) })
		}
		return err
	}
	p := startProcess(t, led, storage, o)
	<-stopped
	p.stop()
	if p.r.Status()[0].Phase == projector.Halted {
		t.Fatalf("halted: %+v", p.r.Status()[0])
	}
	calls1 := calls.Load()
	sp, err := storage.LatestSavepoint(t.Context(), "seq")
	if err != nil {
		t.Fatal(err)
	}
	if sp.Position == 0 {
		t.Fatal("no savepoint after 2345 events")
	}
	p2 := startProcess(t, led, storage, o)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := p2.r.WaitLive(ctx, "seq"); err != nil {
		t.Fatalf("%v; status %+v", err, p2.r.Status())
	}
	for _, table := range []string{"a", "b"} {
		if v, _ := p2.store.State("seq").Get(table); string(v) != strconv.Itoa(total/2) {
			t.Fatalf("last id of %s is %s, want %d", table, v, total/2)
		}
	}
	if replayed := calls.Load() - total; replayed < 0 || replayed >= every+batch {
		t.Fatalf("%d events replayed (first run %d, savepoint at %d); want fewer than %d", replayed, calls1, sp.Position, every+batch)
	}
}

// A stateful projector counting orders per customer in memory, saved every 1000 events.
func ExampleSavepointStore() {
	ctx := context.Background()
	led := memory.New(&memory.Options{Indexer: func(e *event.Event, dst []string) []string { return append(dst, e.Name) }})
	defer led.Close()
	_ = led.BeginTx(ctx, event.TxMeta{CommitLSN: 100, CommitTime: time.Now()})
	for i, customer := range []string{"ann", "bob", "ann"} {
		_ = led.Append(ctx, &event.Event{Name: "orders", Type: event.Insert, LSN: 100, Ordinal: uint32(i),
			NewRecord: event.Record{{Name: "customer", Value: event.Text(25, customer)}}})
	}
	_ = led.CommitTx(ctx, 101)
	_ = led.Sync(ctx)

	store, err := projector.NewSavepointStore(projector.SavepointConfig{Storage: statememory.New(), Every: 1000})
	if err != nil {
		panic(err)
	}
	orders, err := store.Stateful(projector.Projector{Name: "orders-per-customer", Entities: []string{"public.orders"}},
		func(_ context.Context, st *projector.State, e event.Event) error {
			v, _ := e.NewRecord.Get("customer")
			customer, _ := v.Text()
			n := 0
			if old, ok := st.Get(customer); ok {
				n, _ = strconv.Atoi(string(old))
			}
			st.Set(customer, []byte(strconv.Itoa(n+1)))
			return nil
		})
	if err != nil {
		panic(err)
	}
	r, err := projector.New(projector.Config{Ledger: led, Store: store, Projectors: []projector.Projector{orders}})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	if err := r.WaitLive(ctx, "orders-per-customer"); err != nil {
		panic(err)
	}
	// Run saves the state at the position reached when it stops, so that the next start
	// replays nothing.
	stop()
	if err := <-done; err != nil {
		panic(err)
	}
	for customer, n := range store.State("orders-per-customer").All() {
		fmt.Printf("%s: %s\n", customer, n)
	}
	// Output:
	// ann: 2
	// bob: 1
}

func TestStatefulBesideHandleTx(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE applied (position bigint PRIMARY KEY)`)
	sfAppend(t, b.led, 0, 500)
	pg := projector.NewPostgresStore(b.db)
	if err := pg.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	base, err := projector.NewSavepointStore(projector.SavepointConfig{Storage: statememory.New(), Fallback: pg, Every: 100, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&projector.SavepointStore{}).Tx(); err == nil {
		t.Fatal("Tx without a transactional fallback succeeded")
	}
	store, err := base.Tx()
	if err != nil {
		t.Fatal(err)
	}
	c := &counter{}
	counts, err := base.Stateful(projector.Projector{Name: "counts", Entities: []string{"public.accounts"}}, c.handle)
	if err != nil {
		t.Fatal(err)
	}
	tx := func(ctx context.Context, tx pgx.Tx, e event.Event) error {
		_, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1)`, int64(e.Position))
		return err
	}
	r := b.run(projector.Config{Store: store, BatchSize: 50, Projectors: []projector.Projector{counts, {Name: "tx", HandleTx: tx}}})
	for _, name := range []string{"counts", "tx"} {
		if err := r.WaitLive(t.Context(), name); err != nil {
			t.Fatal(err)
		}
	}
	checkState(t, base.State("counts"), 500)
	if n := b.int(`SELECT count(*) FROM applied`); n != 500 {
		t.Fatalf("HandleTx applied %d events, want 500", n)
	}
	if n := b.int(`SELECT count(*) FROM walflow.projectors WHERE name = 'counts'`); n != 0 {
		t.Fatalf("the stateful projector has %d rows in walflow.projectors", n)
	}
	// The runner took both projectors' locks through the Fallback.
	if n := b.int(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid IN
		(SELECT pid FROM pg_stat_activity WHERE application_name = 'walflow projector locks' AND datname = current_database())`); n != 2 {
		t.Fatalf("the runner holds %d projector locks, want 2", n)
	}
}

func TestStatefulPgstore(t *testing.T) {
	t.Parallel()
	const total, every, batch = 2000, 200, 50
	b := setup(t)
	sfAppend(t, b.led, 0, total)
	storage, err := pg.New(pg.Config{DB: b.db})
	if err != nil {
		t.Fatal(err)
	}
	o := sfOpts{cfg: projector.SavepointConfig{Every: every, Interval: -1}, batch: batch}
	calls1, _ := stopAtRandom(t, b.led, storage, o, total)
	saved := latestPosition(t, storage)
	p2 := startProcess(t, b.led, storage, o)
	p2.waitLive()
	calls2 := p2.c.calls.Load()
	if calls2 != total-int64(saved) {
		t.Fatalf("the restarted projector handled %d events, want the %d after its savepoint at %d", calls2, total-int64(saved), saved)
	}
	if replayed := calls1 + calls2 - total; replayed < 0 || replayed >= every+batch {
		t.Fatalf("%d events replayed; want fewer than %d", replayed, every+batch)
	}
	checkState(t, p2.store.State("counts"), total)
}
