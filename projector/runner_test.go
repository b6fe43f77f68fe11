package projector_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/retry"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// bundle is a memory ledger the test appends to, and a fresh PostgreSQL database for the
// positions and the read models.
type bundle struct {
	t   *testing.T
	led *memory.Ledger
	db  *pgxpool.Pool
	lsn event.LSN
}

func setup(t *testing.T) *bundle {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	db, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	led := memory.New(&memory.Options{Indexer: func(e *event.Event, dst []string) []string { return append(dst, e.Name) }})
	t.Cleanup(func() { _ = led.Close() })
	return &bundle{t: t, led: led, db: db}
}

// add appends one transaction of n inserts into table.
func (b *bundle) add(table string, n int) {
	b.t.Helper()
	evs := make([]event.Event, n)
	for i := range evs {
		evs[i] = event.Event{Name: table, Type: event.Insert, NewRecord: event.Record{{Name: "amount", Value: event.Text(20, "1")}}}
	}
	b.commit(evs)
}

// commit appends evs as one transaction, giving them its LSN, their ordinals and a time.
func (b *bundle) commit(evs []event.Event) {
	b.t.Helper()
	ctx := b.t.Context()
	b.lsn += 100
	if err := b.led.BeginTx(ctx, event.TxMeta{CommitLSN: b.lsn, CommitTime: time.Now()}); err != nil {
		b.t.Fatal(err)
	}
	for i := range evs {
		e := evs[i]
		e.LSN, e.Ordinal, e.Timestamp = b.lsn, uint32(i), time.Now()
		if err := b.led.Append(ctx, &e); err != nil {
			b.t.Fatal(err)
		}
	}
	if err := b.led.CommitTx(ctx, b.lsn+1); err != nil {
		b.t.Fatal(err)
	}
	if err := b.led.Sync(ctx); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bundle) exec(sql string, args ...any) {
	b.t.Helper()
	if _, err := b.db.Exec(b.t.Context(), sql, args...); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

func (b *bundle) int(sql string, args ...any) int64 {
	b.t.Helper()
	var n int64
	if err := b.db.QueryRow(b.t.Context(), sql, args...).Scan(&n); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// runner is a running Runner and how to stop it.
type runner struct {
	*projector.Runner
	stop func()
}

// run starts a runner; stop (also called at cleanup) cancels it and checks Run's result.
func (b *bundle) run(cfg projector.Config) *runner {
	b.t.Helper()
	if cfg.Ledger == nil {
		cfg.Ledger = b.led
	}
	if cfg.DB == nil {
		cfg.DB = b.db
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(b.t)
	}
	r, err := projector.New(cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				b.t.Errorf("Run: %v", err)
			}
		})
	}
	b.t.Cleanup(stop)
	return &runner{Runner: r, stop: stop}
}

// until waits, on the runner's change notifications, until cond holds.
func until(t *testing.T, r *projector.Runner, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		ch := r.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("waiting for %s: not within 30s; status %+v", what, r.Status())
		}
	}
}

func status(r *projector.Runner, name string) projector.Status {
	for _, s := range r.Status() {
		if s.Name == name {
			return s
		}
	}
	return projector.Status{}
}

// recorder is a Handle that records the positions it receives.
type recorder struct {
	mu  sync.Mutex
	pos []event.Position
}

func (rc *recorder) handle(_ context.Context, e event.Event) error {
	rc.mu.Lock()
	rc.pos = append(rc.pos, e.Position)
	rc.mu.Unlock()
	return nil
}

func (rc *recorder) positions() []event.Position {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]event.Position(nil), rc.pos...)
}

// checkRun fails unless got is exactly from+1 .. to.
func checkRun(t *testing.T, got []event.Position, from, to event.Position) {
	t.Helper()
	if len(got) != int(to-from) {
		t.Fatalf("received %d events, want %d (positions %d to %d)", len(got), to-from, from+1, to)
	}
	for i, p := range got {
		if p != from+1+event.Position(i) {
			t.Fatalf("event %d has position %d, want %d", i, p, from+1+event.Position(i))
		}
	}
}

func TestRehydrateThenLive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for range 5 {
		b.add("accounts", 50)
	}
	b.add("other", 10) // filtered out
	rc := &recorder{}
	cfg := projector.Config{BatchSize: 32, Projectors: []projector.Projector{{Name: "p", Entities: []string{"public.accounts"}, Handle: rc.handle}}}
	r := b.run(cfg)
	if err := r.WaitLive(t.Context(), "p"); err != nil {
		t.Fatal(err)
	}
	checkRun(t, rc.positions(), 0, 250)
	if s := status(r.Runner, "p"); s.Phase != projector.Live || s.Position != 260 || s.Lag != 0 {
		t.Fatalf("status %+v, want live at 260", s)
	}
	// Live.
	b.add("accounts", 20)
	until(t, r.Runner, "the live events", func() bool { return len(rc.positions()) == 270 })
	checkRun(t, rc.positions()[250:], 260, 280)
	r.stop()
	if got := b.int(`SELECT position FROM walflow.projectors WHERE name = 'p'`); got != 280 {
		t.Fatalf("stored position %d, want 280", got)
	}
	// A restart rehydrates only what it missed.
	b.add("accounts", 7)
	rc2 := &recorder{}
	cfg.Projectors[0].Handle = rc2.handle
	r2 := b.run(cfg)
	if err := r2.WaitLive(t.Context(), "p"); err != nil {
		t.Fatal(err)
	}
	checkRun(t, rc2.positions(), 280, 287)
}

// failingReads is a ledger whose first reads fail, like a disk with a passing fault.
type failingReads struct {
	projector.Ledger
	left atomic.Int32
}

func (l *failingReads) Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error) {
	if l.left.Add(-1) >= 0 {
		return nil, errors.New("read failed for the test")
	}
	return l.Ledger.Read(ctx, after, limit)
}

// TestReadFailureRetried: a projector whose ledger reads fail for a while starts again from
// its stored position, and applies every event once, instead of staying stopped.
func TestReadFailureRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.add("accounts", 30)
	led := &failingReads{Ledger: b.led}
	led.left.Store(3)
	var logs syncbuf.Buffer
	rc := &recorder{}
	r := b.run(projector.Config{Ledger: led, BatchSize: 8, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Projectors: []projector.Projector{{Name: "p", Handle: rc.handle}}})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := r.WaitLive(ctx, "p"); err != nil {
		t.Fatalf("WaitLive: %v; status %+v", err, status(r.Runner, "p"))
	}
	b.add("accounts", 5)
	until(t, r.Runner, "the live events", func() bool { return len(rc.positions()) == 35 })
	checkRun(t, rc.positions(), 0, 35)
	if s := status(r.Runner, "p"); s.Phase != projector.Live || s.Error != "" {
		t.Fatalf("status %+v, want live without an error", s)
	}
	if n := strings.Count(logs.String(), "read failed for the test"); n != 3 {
		t.Errorf("%d of the 3 failed reads logged:\n%s", n, logs.String())
	}
}

func TestHandleTxExactlyOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE applied (position bigint PRIMARY KEY, times int NOT NULL DEFAULT 1)`)
	for range 10 {
		b.add("accounts", 100)
	}
	handle := func(ctx context.Context, tx pgx.Tx, e event.Event) error {
		_, err := tx.Exec(ctx, `INSERT INTO applied (position) VALUES ($1) ON CONFLICT (position) DO UPDATE SET times = applied.times + 1`, int64(e.Position))
		return err
	}
	// Stop the first run in the middle of a batch: its transaction rolls back.
	var cancelled atomic.Bool
	reached := make(chan struct{})
	first := func(ctx context.Context, tx pgx.Tx, e event.Event) error {
		if e.Position == 437 && cancelled.CompareAndSwap(false, true) {
			close(reached)
			<-ctx.Done()
			return ctx.Err()
		}
		return handle(ctx, tx, e)
	}
	r := b.run(projector.Config{BatchSize: 50, Projectors: []projector.Projector{{Name: "tx", HandleTx: first}}})
	<-reached
	r.stop()
	stored := b.int(`SELECT position FROM walflow.projectors WHERE name = 'tx'`)
	if n := b.int(`SELECT count(*) FROM applied`); n != stored || stored != 400 {
		t.Fatalf("after the stop: %d events applied, stored position %d; want both 400", n, stored)
	}
	r2 := b.run(projector.Config{BatchSize: 50, Projectors: []projector.Projector{{Name: "tx", HandleTx: handle}}})
	if err := r2.WaitLive(t.Context(), "tx"); err != nil {
		t.Fatal(err)
	}
	if n, twice := b.int(`SELECT count(*) FROM applied`), b.int(`SELECT count(*) FROM applied WHERE times <> 1`); n != 1000 || twice != 0 {
		t.Fatalf("%d events applied, %d more than once; want 1000 and 0", n, twice)
	}
}

func TestRetryThenHalt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE applied (position bigint PRIMARY KEY)`)
	b.add("accounts", 10)
	var broken atomic.Bool
	broken.Store(true)
	var tries atomic.Int32
	failing := func(ctx context.Context, tx pgx.Tx, e event.Event) error {
		if e.Position == 6 && broken.Load() {
			tries.Add(1)
			return errors.New("account 6 is frozen")
		}
		_, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1)`, int64(e.Position))
		return err
	}
	var mu sync.Mutex
	var delays []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		delays = append(delays, d)
		mu.Unlock()
		return nil
	}
	other := &recorder{}
	cfg := projector.Config{
		SleepFunc: sleep,
		Projectors: []projector.Projector{
			{Name: "failing", HandleTx: failing, Retry: &retry.Policy{Min: time.Millisecond, MaxRetries: 3}},
			{Name: "other", Handle: other.handle},
		},
	}
	r := b.run(cfg)
	until(t, r.Runner, "the halt", func() bool { return status(r.Runner, "failing").Phase == projector.Halted })
	s := status(r.Runner, "failing")
	if s.Position != 5 || s.FailedPosition != 6 || !strings.Contains(s.Error, "account 6 is frozen") {
		t.Fatalf("status %+v, want halted at 6 after position 5", s)
	}
	if n := b.int(`SELECT count(*) FROM applied`); n != 5 {
		t.Fatalf("%d events applied before the halt, want 5", n)
	}
	mu.Lock()
	got := fmt.Sprint(delays)
	mu.Unlock()
	if got != "[1ms 2ms 4ms]" || tries.Load() != 4 {
		t.Fatalf("retried after %s, %d tries; want [1ms 2ms 4ms] and 4", got, tries.Load())
	}
	if err := r.WaitLive(t.Context(), "other"); err != nil {
		t.Fatalf("the other projector: %v", err)
	}
	if err := r.WaitLive(t.Context(), "failing"); err == nil || !strings.Contains(err.Error(), "halted") {
		t.Fatalf("WaitLive on a halted projector: %v", err)
	}
	// The halt is stored: a new runner leaves it halted.
	r.stop()
	r2 := b.run(cfg)
	until(t, r2.Runner, "the stored halt", func() bool { return status(r2.Runner, "failing").Phase == projector.Halted })
	broken.Store(false)
	if err := r2.Restart(t.Context(), "failing"); err != nil {
		t.Fatal(err)
	}
	if err := r2.WaitLive(t.Context(), "failing"); err != nil {
		t.Fatal(err)
	}
	if n := b.int(`SELECT count(*) FROM applied`); n != 10 {
		t.Fatalf("%d events applied after the restart, want 10", n)
	}
}

func TestDependsOn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for range 20 {
		b.add("accounts", 10)
	}
	// base applies slowly at first; summary reads base's model; report reads summary's.
	var baseApplied, summaryApplied atomic.Int64
	gate := make(chan struct{})
	var violations atomic.Int32
	base := func(_ context.Context, e event.Event) error {
		if e.Position == 50 {
			<-gate
		}
		baseApplied.Store(int64(e.Position))
		return nil
	}
	summary := func(_ context.Context, e event.Event) error {
		if baseApplied.Load() < int64(e.Position) {
			violations.Add(1)
		}
		summaryApplied.Store(int64(e.Position))
		return nil
	}
	report := func(_ context.Context, e event.Event) error {
		if summaryApplied.Load() < int64(e.Position) {
			violations.Add(1)
		}
		return nil
	}
	// Listed dependents first: the order of the list does not matter.
	r := b.run(projector.Config{BatchSize: 10, Projectors: []projector.Projector{
		{Name: "report", Handle: report, DependsOn: []string{"summary"}},
		{Name: "summary", Handle: summary, DependsOn: []string{"base"}},
		{Name: "base", Handle: base},
	}})
	var open sync.Once
	openGate := func() { open.Do(func() { close(gate) }) }
	t.Cleanup(openGate) // before the runner's stop, which waits for base's handler
	until(t, r.Runner, "base to reach its gate", func() bool { return status(r.Runner, "base").Position == 40 })
	for _, name := range []string{"summary", "report"} {
		// Standby: its lock is not taken yet (it is taken after base's).
		if s := status(r.Runner, name); (s.Phase != projector.Rehydrating && s.Phase != projector.Standby) || s.Position > 40 {
			t.Fatalf("%s went past the projector it depends on: %+v", name, s)
		}
	}
	// Watch the phases change: each goes live only after what it depends on. Status lists
	// dependents first, so a dependency read later in the same call cannot be behind.
	deps := map[string]string{"report": "summary", "summary": "base"}
	openGate()
	until(t, r.Runner, "all live", func() bool {
		phase := map[string]projector.Phase{}
		for _, s := range r.Status() {
			phase[s.Name] = s.Phase
		}
		for name, dep := range deps {
			if phase[name] == projector.Live && phase[dep] != projector.Live {
				t.Fatalf("%s is live before %s, which it depends on", name, dep)
			}
		}
		return phase["report"] == projector.Live && phase["summary"] == projector.Live && phase["base"] == projector.Live
	})
	for _, s := range r.Status() {
		if s.Position != 200 {
			t.Fatalf("status %+v, want position 200", s)
		}
	}
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d events reached a projector before the one it depends on had applied them", v)
	}
	// Live: still in dependency order.
	b.add("accounts", 30)
	until(t, r.Runner, "the live events", func() bool { return status(r.Runner, "report").Position == 230 })
	if v := violations.Load(); v != 0 {
		t.Fatalf("%d live events reached a projector before the one it depends on had applied them", v)
	}
}

func TestDependsOnRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	h := func(context.Context, event.Event) error { return nil }
	tests := []struct {
		name  string
		projs []projector.Projector
		want  string
	}{
		{"cycle", []projector.Projector{
			{Name: "a", Handle: h, DependsOn: []string{"b"}},
			{Name: "b", Handle: h, DependsOn: []string{"c"}},
			{Name: "c", Handle: h, DependsOn: []string{"a"}},
		}, "cycle (a depends on b depends on c depends on a)"},
		{"itself", []projector.Projector{{Name: "a", Handle: h, DependsOn: []string{"a"}}}, "names the projector itself"},
		{"unknown", []projector.Projector{{Name: "a", Handle: h, DependsOn: []string{"x"}}}, `"x", which is not a projector`},
		{"duplicate", []projector.Projector{{Name: "a", Handle: h}, {Name: "a", Handle: h}}, "two projectors are named"},
		{"two handlers", []projector.Projector{{Name: "a", Handle: h, HandleTx: func(context.Context, pgx.Tx, event.Event) error { return nil }}}, "both Handle and HandleTx"},
		{"sequence of updates", []projector.Projector{{Name: "a", Handle: h, Events: []event.Type{event.Update}, Sequence: &projector.SequenceConfig{}}}, "only insert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := projector.New(projector.Config{Ledger: b.led, DB: b.db, Projectors: tt.projs})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	_, err := projector.New(projector.Config{Ledger: b.led, Store: projector.NewMemoryStore(),
		Projectors: []projector.Projector{{Name: "a", HandleTx: func(context.Context, pgx.Tx, event.Event) error { return nil }}}})
	if err == nil || !strings.Contains(err.Error(), "HandleTx needs") {
		t.Fatalf("HandleTx with a memory store: %v", err)
	}
}

func TestReset(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.add("accounts", 30)
	rc := &recorder{}
	store := projector.NewMemoryStore()
	r := b.run(projector.Config{Store: store, Projectors: []projector.Projector{{Name: "p", Handle: rc.handle}}})
	if err := r.WaitLive(t.Context(), "p"); err != nil {
		t.Fatal(err)
	}
	if err := r.Reset(t.Context(), "p"); err != nil {
		t.Fatal(err)
	}
	until(t, r.Runner, "the replay", func() bool { return len(rc.positions()) == 60 })
	checkRun(t, rc.positions()[30:], 0, 30)
	if err := r.Reset(t.Context(), "nope"); !errors.Is(err, projector.ErrUnknown) {
		t.Fatalf("Reset of an unknown projector: %v", err)
	}
	r.stop()
	// Without a running Runner, Reset changes the store only.
	if err := r.Reset(t.Context(), "p"); err != nil {
		t.Fatal(err)
	}
	if cp, _ := store.Load(t.Context(), "p"); cp.Position != 0 {
		t.Fatalf("stored %+v after a reset", cp)
	}
}

// TestIdleProgressSaved checks that a projector whose events are rare still stores its
// position near the head (retention does not pass the stored position), at most every
// second.
func TestIdleProgressSaved(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.add("accounts", 5)
	rc := &recorder{}
	r := b.run(projector.Config{Projectors: []projector.Projector{{Name: "p", Entities: []string{"accounts"}, Handle: rc.handle}}})
	if err := r.WaitLive(t.Context(), "p"); err != nil {
		t.Fatal(err)
	}
	for _, head := range []event.Position{15, 25} {
		b.add("other", 10)
		until(t, r.Runner, fmt.Sprintf("the stored position to reach %d", head), func() bool { return status(r.Runner, "p").Position == head })
		if got := b.int(`SELECT position FROM walflow.projectors WHERE name = 'p'`); got != int64(head) {
			t.Fatalf("stored position %d, want %d", got, head)
		}
	}
	checkRun(t, rc.positions(), 0, 5)
}
