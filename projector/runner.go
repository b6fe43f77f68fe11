package projector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/retry"
)

// BatchSizeDefault is the default Config.BatchSize.
const BatchSizeDefault = 100

// Ledger is what projectors read.
type Ledger interface {
	Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error)
	ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error)
	Wait(ctx context.Context, after event.Position) error
	State() ledger.State
}

// IndexReader is the part of a custom index's runner that projectors filtered by Index
// read; an *index.Runner is one.
type IndexReader interface {
	// Read returns up to limit events after position after that the indexer gave value.
	Read(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Event, error)
	// Checkpoint returns the last position the indexer has indexed, and fails for an
	// unknown indexer.
	Checkpoint(indexer string) (event.Position, error)
	// Wait blocks until the indexer has indexed every event up to pos.
	Wait(ctx context.Context, indexer string, pos event.Position) error
}

// Config configures a [Runner].
type Config struct {
	// Ledger is read by every projector. Required.
	Ledger Ledger
	// DB is the database HandleTx projectors write through, and where the default store
	// keeps positions. Required unless Store is set and no projector uses HandleTx.
	DB *pgxpool.Pool
	// Store keeps the positions. Default: a [PostgresStore] on DB (table
	// walflow.projectors). HandleTx projectors need a [TxPositionStore].
	Store PositionStore
	// Projectors to run. Names must be unique.
	Projectors []Projector
	// Indexes serves the projectors that filter by Index: the engine passes its custom
	// indexes (walflow.Engine.Indexes). Required when a projector sets Index.
	Indexes IndexReader
	// BatchSize is the most events a projector applies between two saves of its position
	// (in one transaction for HandleTx). Default 100.
	BatchSize int
	// Retry is the retry policy of projectors whose Retry is nil. The zero value is the
	// operators' default: 500ms, ×2, at most 10s, 5 retries, then the projector halts.
	Retry retry.Policy
	// Reporter receives retries and halts, named as [retry.Projector] consumers. Default: a
	// [retry.LogReporter] on Logger.
	Reporter retry.Reporter
	// SleepFunc waits between retries. Default: [retry.Sleep], a timer.
	SleepFunc retry.SleepFunc
	// Logger receives the runner's logs. Default: warnings and errors as text on stderr.
	Logger *slog.Logger
	// Locker keeps two processes from running the same projector (see [Locker]). Default:
	// Store when it is a Locker, as the default [PostgresStore] is, or the Fallback of a
	// [SavepointStore] when that is one; else none.
	Locker Locker
	// LockInterval is how often a runner with a Locker checks its lock session and tries
	// the locks it does not hold: a standby takes over within about this long of the
	// holder's end. Default 1s.
	LockInterval time.Duration
	// SharedLedger says that Ledger is one view of a ledger other processes read and
	// store positions of too, a view that may trail theirs: the shared stream of a walflow
	// cluster (ledger/jetstream), for which the engine sets it. A stored position of this
	// ledger past the view's head then means this process lags, not that the ledger was
	// replaced: the projector waits (Rehydrating) until the view reaches it, reloading it
	// and logging every [ledger.LagLogEvery] that it waits. Without it, a
	// projector waits at most [ledger.CatchUpWait] for the head, then halts with
	// [ErrForeignLedger]. A position that names another ledger halts it either way.
	// Default false.
	SharedLedger bool
}

// Phase is where a projector stands.
type Phase uint8

// Phases.
const (
	// Stopped: not started, or its Runner is not running.
	Stopped Phase = iota
	// Rehydrating: reading the events it missed, or waiting for its dependencies.
	Rehydrating
	// Live: it has read the whole ledger, and its dependencies are live.
	Live
	// Halted: stopped on a failure until restarted or reset.
	Halted
	// Standby: another process holds the projector's lock (see [Locker]); it starts when
	// it gets the lock.
	Standby
)

// String returns stopped, rehydrating, live, halted or standby.
func (p Phase) String() string {
	switch p {
	case Stopped:
		return "stopped"
	case Rehydrating:
		return "rehydrating"
	case Live:
		return "live"
	case Halted:
		return "halted"
	case Standby:
		return "standby"
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// MarshalText writes the phase's name.
func (p Phase) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a phase's name, as MarshalText writes it, so that a status decoded
// from JSON (a running walflow's /status) keeps its phases.
func (p *Phase) UnmarshalText(b []byte) error {
	for _, q := range []Phase{Stopped, Rehydrating, Live, Halted, Standby} {
		if q.String() == string(b) {
			*p = q
			return nil
		}
	}
	return fmt.Errorf("projector: unknown phase %q; want one of stopped, rehydrating, live, halted, standby", b)
}

// Status is a projector's state in its Runner.
type Status struct {
	Name  string `json:"name"`
	Phase Phase  `json:"phase"`
	// Position is the stored resume position: every event at or before it is applied, and
	// a restart reads again after it. Retention must not pass it. It may trail what the
	// projector has applied by a batch that is being saved, or by up to a second of events
	// it does not apply. For a projector in Standby it is the position stored by the
	// process that runs it, as read every LockInterval when the store is a
	// [PositionReader] (else 0).
	Position event.Position `json:"position"`
	// Seen is how far the projector has read; beyond Position in sequence mode while
	// events wait in the reorder buffer.
	Seen event.Position `json:"seen"`
	// Head is the ledger's head, and Lag is Head - Position.
	Head event.Position `json:"head"`
	Lag  uint64         `json:"lag_events"`
	// Buffered is the number of events in the reorder buffer (sequence mode).
	Buffered int `json:"buffered"`
	// Error is the failure that halted the projector.
	Error string `json:"error,omitempty"`
	// FailedPosition is the position of the event it halted on.
	FailedPosition event.Position `json:"failed_position,omitempty"`
}

// Runner runs projectors. Create it with [New], run it with [Runner.Run].
type Runner struct {
	cfg     Config
	log     *slog.Logger
	store   PositionStore
	txStore TxPositionStore
	pg      *PostgresStore // the default store, migrated by Run
	locker  Locker
	projs   []*proj
	byName  map[string]*proj
	order   []int

	chMu    sync.Mutex
	changed chan struct{} // closed and replaced when a projector moves or changes phase

	runMu   sync.Mutex
	runDone chan struct{} // nil while Run is not running
	reqs    chan request
}

// proj is one projector's live state.
type proj struct {
	spec
	deps []*proj

	done     atomic.Uint64 // position through which every event is applied, saved or not
	stored   atomic.Uint64 // position as stored: a restart resumes after it
	seen     atomic.Uint64
	buffered atomic.Int64
	phase    atomic.Uint32

	mu     sync.Mutex
	err    string
	failed event.Position

	// Owned by Run's goroutine.
	cancel context.CancelFunc
	exited chan struct{}
	locked bool // this process holds its lock (always, without a Locker)
}

type request struct {
	name  string
	reset bool // else restart
	done  chan error
}

// New validates the projectors and returns a Runner. It refuses duplicate names, unknown or
// cyclic dependencies, and HandleTx without a database or a transactional store. It starts
// nothing.
func New(cfg Config) (*Runner, error) {
	if cfg.Ledger == nil {
		return nil, errors.New("projector: Config.Ledger is nil; pass the ledger to read (Engine.Ledger())")
	}
	cfg.BatchSize = cmp.Or(cfg.BatchSize, BatchSizeDefault)
	cfg.LockInterval = cmp.Or(cfg.LockInterval, LockIntervalDefault)
	if cfg.LockInterval < 0 {
		return nil, fmt.Errorf("projector: Config.LockInterval is %s; give a positive interval (0 means the default, %s)", cfg.LockInterval, LockIntervalDefault)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	log := cfg.Logger.With(slog.String("component", "projector"))
	if cfg.Reporter == nil {
		cfg.Reporter = retry.LogReporter{Logger: cfg.Logger}
	}
	if cfg.SleepFunc == nil {
		cfg.SleepFunc = retry.Sleep
	}
	r := &Runner{cfg: cfg, log: log, store: cfg.Store, byName: map[string]*proj{}, changed: make(chan struct{}), reqs: make(chan request)}
	if r.store == nil {
		if cfg.DB == nil {
			return nil, errors.New("projector: neither Config.Store nor Config.DB is set; pass a pgxpool.Pool to keep positions in walflow.projectors, or a store")
		}
		r.pg = NewPostgresStore(cfg.DB)
		r.store = r.pg
	}
	r.txStore, _ = r.store.(TxPositionStore)
	r.locker = cfg.Locker
	if r.locker == nil {
		switch st := r.store.(type) {
		case Locker:
			r.locker = st
		case interface{ Locker() Locker }:
			r.locker = st.Locker()
		}
	}
	var specs []spec
	for _, p := range cfg.Projectors {
		s, err := p.spec(cfg.Retry)
		if err != nil {
			return nil, err
		}
		if _, dup := r.byName[s.Name]; dup {
			return nil, fmt.Errorf("projector: two projectors are named %q; names key stored positions and must be unique", s.Name)
		}
		if s.Index != "" {
			if cfg.Indexes == nil {
				return nil, fmt.Errorf("projector %s: Index %s needs Config.Indexes (the engine's Indexes, with the indexer in Config.Indexers)", s.Name, s.Index)
			}
			if _, err := cfg.Indexes.Checkpoint(s.Index); err != nil {
				return nil, fmt.Errorf("projector %s: %w", s.Name, err)
			}
		}
		if s.HandleTx != nil && (cfg.DB == nil || r.txStore == nil) {
			return nil, fmt.Errorf("projector %s: HandleTx needs Config.DB and a store that saves in a transaction (the default PostgreSQL store does)", s.Name)
		}
		pr := &proj{spec: s}
		r.byName[s.Name] = pr
		r.projs = append(r.projs, pr)
		specs = append(specs, s)
	}
	ord, err := order(specs)
	if err != nil {
		return nil, err
	}
	r.order = ord
	for _, p := range r.projs {
		for _, d := range p.DependsOn {
			p.deps = append(p.deps, r.byName[d])
		}
	}
	return r, nil
}

// Run runs every projector until ctx ends, dependencies first. A halted projector stays
// halted until restarted or reset; its failure does not stop Run, nor the others (those
// depending on it wait). With a [Locker] a projector starts only once this process holds
// its lock, and stands by until then. It returns nil when ctx ends, after each projector
// saved its position.
func (r *Runner) Run(ctx context.Context) error {
	r.runMu.Lock()
	if r.runDone != nil {
		r.runMu.Unlock()
		return errors.New("projector: Run called while the runner runs")
	}
	runDone := make(chan struct{})
	r.runDone = runDone
	r.runMu.Unlock()
	defer func() {
		r.runMu.Lock()
		r.runDone = nil
		r.runMu.Unlock()
		close(runDone)
	}()
	if r.pg != nil {
		if err := r.pg.Migrate(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	var wg sync.WaitGroup
	start := func(p *proj) {
		if !p.locked {
			r.setPhase(p, Standby)
			return
		}
		pctx, cancel := context.WithCancel(ctx)
		p.cancel, p.exited = cancel, make(chan struct{})
		exited := p.exited
		r.setPhase(p, Rehydrating)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(exited)
			defer cancel()
			r.runProj(pctx, p)
		}()
	}
	var locks chan *proj
	lockDone := make(chan struct{})
	if r.locker == nil {
		close(lockDone)
		for _, p := range r.projs {
			p.locked = true
		}
	} else {
		locks = make(chan *proj)
		for _, p := range r.projs {
			p.locked = false
		}
		// The locks outlive ctx until the projectors have stopped and saved, so that no
		// other process starts one while this one still saves its position.
		lockCtx, stopLocks := context.WithCancel(context.WithoutCancel(ctx))
		defer func() {
			stopLocks()
			<-lockDone
		}()
		go func() {
			defer close(lockDone)
			r.keepLocks(lockCtx, locks)
		}()
	}
	for _, i := range r.order {
		start(r.projs[i])
	}
	for {
		select {
		case taken := <-locks:
			if taken == nil {
				// Another process may hold the locks by now: stop at once, dependents first.
				for _, i := range slices.Backward(r.order) {
					p := r.projs[i]
					if p.locked {
						p.locked = false
						p.cancel()
						<-p.exited
						r.setPhase(p, Standby)
					}
				}
				continue
			}
			r.log.InfoContext(ctx, "projector lock taken; starting it", slog.String("projector", taken.Name))
			taken.locked = true
			start(taken)
		case <-ctx.Done():
			wg.Wait()
			r.flush(ctx)
			for _, p := range r.projs {
				if Phase(p.phase.Load()) != Halted {
					r.setPhase(p, Stopped)
				}
			}
			return nil
		case req := <-r.reqs:
			req.done <- r.control(ctx, req, start)
		}
	}
}

// flushTimeout bounds the flush of the store when Run stops.
const flushTimeout = 10 * time.Second

// flush writes what a [Flusher] store holds back, once Run's projectors have stopped. Run's
// context is done by then, so the flush gets its own deadline.
func (r *Runner) flush(ctx context.Context) {
	f, ok := r.store.(Flusher)
	if !ok {
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
	defer cancel()
	if err := f.Flush(fctx); err != nil {
		r.log.WarnContext(ctx, "projectors' store cannot save their progress at stop; the next start replays the events after their latest save", slog.Any("error", err))
	}
}

// control carries out a Reset or Restart inside Run.
func (r *Runner) control(ctx context.Context, req request, start func(*proj)) error {
	p := r.byName[req.name]
	// Stop it first: a reset must not race its saves, and a running projector may have
	// loaded a halt it has not shown yet, which it could record again after a restart
	// cleared the store.
	if p.exited != nil { // nil: never started, as a projector standing by since Run began
		select {
		case <-p.exited:
		default:
			p.cancel()
			<-p.exited
		}
	}
	change, done := r.clearHalt, "projector restarted"
	if req.reset {
		change, done = r.store.Reset, "projector reset; it replays the ledger from the start"
	}
	err := change(ctx, p.Name)
	if err == nil {
		r.log.InfoContext(ctx, done, slog.String("projector", p.Name))
	}
	start(p) // on an error, it resumes from what is stored
	return err
}

func (r *Runner) clearHalt(ctx context.Context, name string) error {
	cp, err := r.store.Load(ctx, name)
	if err != nil {
		return err
	}
	if !cp.Halted {
		return nil
	}
	cp.Halted, cp.Error, cp.FailedPosition = false, "", 0
	return r.store.Save(ctx, name, cp)
}

// Reset makes the projector replay the ledger from the start: its position goes back to 0
// (and its halt is cleared). Clear its read model first, or make its handler idempotent. A
// running Runner stops the projector, resets it and starts it again; otherwise only the
// store is changed.
func (r *Runner) Reset(ctx context.Context, name string) error {
	return r.request(ctx, request{name: name, reset: true})
}

// Restart clears the projector's halt and resumes it at the event it failed on. A running
// Runner stops the projector (which saves its position) and starts it again.
func (r *Runner) Restart(ctx context.Context, name string) error {
	return r.request(ctx, request{name: name})
}

func (r *Runner) request(ctx context.Context, req request) error {
	if _, ok := r.byName[req.name]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknown, req.name)
	}
	r.runMu.Lock()
	runDone := r.runDone
	if runDone == nil {
		// Not running: change the store only, holding runMu so that a Run starting now
		// loads the checkpoint after the change.
		defer r.runMu.Unlock()
		if req.reset {
			return r.store.Reset(ctx, req.name)
		}
		return r.clearHalt(ctx, req.name)
	}
	r.runMu.Unlock()
	req.done = make(chan error, 1)
	select {
	case r.reqs <- req:
		select {
		case err := <-req.done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	case <-runDone:
		// Run ended meanwhile: change the store only.
		return r.request(ctx, req)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status reports every projector, in configuration order.
func (r *Runner) Status() []Status {
	head := r.cfg.Ledger.State().Head
	out := make([]Status, len(r.projs))
	for i, p := range r.projs {
		pos := event.Position(p.stored.Load())
		s := Status{Name: p.Name, Phase: Phase(p.phase.Load()), Position: pos, Seen: event.Position(p.seen.Load()),
			Head: head, Buffered: int(p.buffered.Load())}
		if head > pos {
			s.Lag = uint64(head - pos)
		}
		p.mu.Lock()
		s.Error, s.FailedPosition = p.err, p.failed
		p.mu.Unlock()
		out[i] = s
	}
	return out
}

// WaitLive waits until the projector is live. It fails when ctx ends or the projector
// halts.
func (r *Runner) WaitLive(ctx context.Context, name string) error {
	p, ok := r.byName[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknown, name)
	}
	for {
		ch := r.changedCh()
		switch Phase(p.phase.Load()) {
		case Live:
			return nil
		case Halted:
			p.mu.Lock()
			msg := p.err
			p.mu.Unlock()
			return fmt.Errorf("projector %s halted: %s", name, msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Changed returns a channel closed the next time a projector's position or phase changes.
func (r *Runner) Changed() <-chan struct{} { return r.changedCh() }

func (r *Runner) changedCh() chan struct{} {
	r.chMu.Lock()
	defer r.chMu.Unlock()
	return r.changed
}

func (r *Runner) publish() {
	r.chMu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.chMu.Unlock()
}

func (r *Runner) setPhase(p *proj, ph Phase) {
	if Phase(p.phase.Swap(uint32(ph))) != ph {
		r.publish()
	}
}

// ErrForeignLedger is the halt error of a projector whose stored position counts the events
// of another ledger than the runner's.
var ErrForeignLedger = errors.New("projector: the stored position belongs to another ledger")

// ledgerKey names the runner's ledger for Checkpoint.Ledger; empty while the ledger has
// not recorded what it follows.
func (r *Runner) ledgerKey() string {
	o := r.cfg.Ledger.State().Origin
	if o.IsZero() {
		return ""
	}
	// Not the timeline: a promoted standby continues the same history.
	return o.SystemID + "/" + o.Database + "/" + o.Slot
}

// checkLedger refuses a checkpoint that cannot be this ledger's: one recorded for another
// ledger, or one past the ledger's head (the ledger was deleted and started again). On a
// shared ledger (Config.SharedLedger) a checkpoint past the head gets errLagging instead:
// this process's view trails the one that stored it.
func (r *Runner) checkLedger(cp Checkpoint) error {
	if key := r.ledgerKey(); key != "" && cp.Ledger != "" && cp.Ledger != key {
		return fmt.Errorf("%w: its position %d counts the events of %s, and this runner reads %s; give the projectors of each engine their own names (or their own store), or reset it to replay this ledger",
			ErrForeignLedger, cp.Position, cp.Ledger, key)
	}
	if head := r.cfg.Ledger.State().Head; cp.Position > head && r.cfg.SharedLedger {
		return errLagging
	} else if cp.Position > head {
		return fmt.Errorf("%w: its position %d is past the ledger's head %d, so the ledger was replaced (deleted, or another one); reset the projector to replay this ledger",
			ErrForeignLedger, cp.Position, head)
	}
	return nil
}

// errLagging is checkLedger's answer for a position of a shared ledger (see
// Config.SharedLedger) past this process's view of it: the view lags.
var errLagging = errors.New("projector: this process's view of the shared ledger trails the stored position")

// lagPoll is how often a projector waiting for a shared ledger's view polls the ledger
// when the ledger's notification does not move the view's head.
const lagPoll = time.Second

// errReload ends a follow whose stored checkpoint changed under it: it loads it again.
var errReload = errors.New("projector: reload the checkpoint")

// errHalted ends a follow whose projector halted.
var errHalted = errors.New("projector: halted")

// runProj runs one projector until ctx ends or it halts.
func (r *Runner) runProj(ctx context.Context, p *proj) {
	// backoff spaces the attempts after a failure to load or to follow; progress resets it.
	backoff := 100 * time.Millisecond
	pause := func() bool {
		if retry.Sleep(ctx, backoff) != nil {
			return false
		}
		backoff = min(2*backoff, 10*time.Second)
		return true
	}
	var lagSince time.Time // when the projector began to wait for a shared ledger's view
	for ctx.Err() == nil {
		cp, err := r.store.Load(ctx, p.Name)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.WarnContext(ctx, "projector cannot load its position; waiting", slog.String("projector", p.Name), slog.Duration("delay", backoff), slog.Any("error", err))
			if !pause() {
				return
			}
			continue
		}
		p.done.Store(uint64(cp.Position))
		moved := p.stored.Swap(uint64(cp.Position)) != uint64(cp.Position)
		p.seen.Store(uint64(max(cp.Seen, cp.Position)))
		if moved {
			r.publish()
		}
		if cp.Position > r.cfg.Ledger.State().Head && !r.cfg.SharedLedger {
			// A ledger read by several processes shows each of them the events as far as it
			// has read them, which may be behind the process that stored the position: give
			// it a moment to catch up before calling the position foreign.
			if err := ledger.WaitHead(ctx, r.cfg.Ledger, cp.Position); err != nil && ctx.Err() != nil {
				return
			}
		}
		err = r.checkLedger(cp)
		if errors.Is(err, errLagging) && !cp.Halted {
			// Wait for the view, reloading the position now and then (a reset moves it back).
			if lagSince.IsZero() {
				lagSince = time.Now()
				r.setPhase(p, Rehydrating) // as documented for Config.SharedLedger, after a failed follow too
			}
			if !r.awaitHead(ctx, cp.Position, ledger.LagLogEvery) && ctx.Err() == nil {
				r.log.WarnContext(ctx, "projector waits for this node's view of the shared ledger to reach its stored position; it starts when it does (if the ledger was replaced by a shorter one, reset it)",
					slog.String("projector", p.Name), slog.Uint64("position", uint64(cp.Position)), slog.Uint64("head", uint64(r.cfg.Ledger.State().Head)),
					slog.Duration("waited", time.Since(lagSince).Round(time.Second)))
			}
			continue
		}
		lagSince = time.Time{}
		if err != nil && !errors.Is(err, errLagging) {
			// Not stored: the checkpoint is right for the runner of its own ledger.
			r.log.ErrorContext(ctx, "projector halted: its stored position belongs to another ledger", slog.String("projector", p.Name), slog.Any("error", err))
			r.markHalted(p, err.Error(), 0)
			return
		}
		if cp.Halted {
			r.markHalted(p, cp.Error, cp.FailedPosition)
			return
		}
		p.mu.Lock()
		p.err, p.failed = "", 0
		p.mu.Unlock()
		r.setPhase(p, Rehydrating)
		f := &follower{r: r, p: p, q: newQueue(p.seq, cp), saved: cp}
		err = f.run(ctx)
		switch {
		case errors.Is(err, errReload):
			r.log.WarnContext(ctx, "projector's stored position changed under it (a reset, or a second process running it); loading it again", slog.String("projector", p.Name))
			continue
		case errors.Is(err, errHalted):
			return
		case err != nil:
			// The ledger or the index failed under it: start again from the stored
			// position, so that a passing failure does not leave the projector stopped.
			if event.Position(p.done.Load()) > cp.Position {
				backoff = 100 * time.Millisecond
			}
			r.log.ErrorContext(ctx, "projector cannot read its events; starting it again from its stored position",
				slog.String("projector", p.Name), slog.Duration("delay", backoff), slog.Any("error", err))
			r.setPhase(p, Stopped)
			if !pause() {
				return
			}
		}
	}
}

// awaitHead waits, for at most d, for the view of the shared ledger to reach pos. It
// reports whether it did.
func (r *Runner) awaitHead(ctx context.Context, pos event.Position, d time.Duration) bool {
	led := r.cfg.Ledger
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		head := led.State().Head
		if head >= pos {
			return true
		}
		if err := led.Wait(wctx, head); err != nil {
			return led.State().Head >= pos
		}
		if led.State().Head <= head {
			// The ledger has more than this view shows: poll.
			t := time.NewTimer(lagPoll)
			select {
			case <-wctx.Done():
				t.Stop()
				return led.State().Head >= pos
			case <-t.C:
			}
		}
	}
}

func (r *Runner) markHalted(p *proj, msg string, failed event.Position) {
	p.mu.Lock()
	p.err, p.failed = msg, failed
	p.mu.Unlock()
	r.setPhase(p, Halted)
}

// follower is one run of a projector from a loaded checkpoint.
type follower struct {
	r     *Runner
	p     *proj
	q     *queue
	saved Checkpoint // as last stored, with the stored version
	// lastIdle is when progress without events to apply (filtered out) was last saved;
	// idleDue, when not zero, is when the next such save is allowed.
	lastIdle, idleDue time.Time
	published         event.Position // the stored position last published
}

// indexPoll is how often a projector filtered by an index and depending on others checks
// the index, which does not publish to the runner.
const indexPoll = 50 * time.Millisecond

// idleSaveEvery is how often a projector saves the progress it makes past events it does
// not apply, so that its stored position (which retention does not pass) follows the head.
const idleSaveEvery = time.Second

func (f *follower) run(ctx context.Context) error {
	r, p, q := f.r, f.p, f.q
	led := r.cfg.Ledger
	cursor := q.seen
	defer f.saveOnExit(ctx)
	for {
		if ctx.Err() != nil {
			return nil
		}
		changed := r.changedCh()
		head := led.State().Head
		limit := head
		for _, d := range p.deps {
			limit = min(limit, event.Position(d.done.Load()))
		}
		if p.Index != "" {
			// The index may trail the ledger (or be rebuilding): read only what it covers.
			indexed, err := r.cfg.Indexes.Checkpoint(p.Index)
			if err != nil {
				return err
			}
			limit = min(limit, indexed)
		}
		if cursor < limit {
			evs, through, err := f.read(ctx, cursor)
			if errors.Is(err, ledger.ErrTruncated) {
				if err := f.truncated(ctx, &cursor); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			var stop error
			var stopAt *event.Event
			next := min(limit, through)
			for i := range evs {
				e := &evs[i]
				if e.Position > next {
					break
				}
				if !slices.Contains(p.types, e.Type) {
					q.advance(e.Position)
					continue
				}
				late, err := q.feed(*e, time.Now())
				if errors.Is(err, ErrBufferFull) {
					// Commit time may already show the awaited number rolled back.
					f.logGaps(ctx, q.expire(time.Now(), false))
					late, err = q.feed(*e, time.Now())
				}
				if err != nil {
					stop, stopAt = err, e
					break
				}
				if late != nil {
					r.log.ErrorContext(ctx, "projector dropped an event whose sequence number it had taken as rolled back (SkipLate); its read model misses it",
						slog.String("projector", p.Name), slog.Uint64("position", uint64(e.Position)), slog.String("sequence", late.key),
						slog.Int64("number", late.num), slog.Int64("next", late.next))
				}
			}
			if stop == nil {
				q.advance(next)
				cursor = next
			} else {
				cursor = q.seen
			}
			f.logGaps(ctx, q.expire(time.Now(), false))
			if err := f.drain(ctx); err != nil {
				return err
			}
			if stop != nil {
				f.halt(ctx, stopAt, stop)
				return errHalted
			}
			f.publish()
			continue
		}
		// Everything readable is read.
		caughtUp := limit == head
		if gaps := q.expire(time.Now(), caughtUp); len(gaps) > 0 {
			f.logGaps(ctx, gaps)
			if err := f.drain(ctx); err != nil {
				return err
			}
			f.publish()
			continue
		}
		if err := f.saveIdle(ctx); err != nil {
			return err
		}
		f.publish()
		if caughtUp && !slices.ContainsFunc(p.deps, func(d *proj) bool { return Phase(d.phase.Load()) != Live }) {
			if Phase(p.phase.Load()) != Live {
				r.log.InfoContext(ctx, "projector is live", slog.String("projector", p.Name), slog.Uint64("position", uint64(cursor)))
			}
			r.setPhase(p, Live)
		}
		if err := f.wait(ctx, changed, cursor); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// wait blocks until there may be more to do: the ledger moved (or, with dependencies,
// another projector did), an awaited sequence number's grace ended, or ctx ended.
func (f *follower) wait(ctx context.Context, changed <-chan struct{}, cursor event.Position) error {
	deadline := f.q.deadline()
	if !f.idleDue.IsZero() && (deadline.IsZero() || f.idleDue.Before(deadline)) {
		deadline = f.idleDue
	}
	if len(f.p.deps) > 0 {
		// Dependencies move whenever the ledger does, and publish it. An index moves on its
		// own: poll it.
		if f.p.Index != "" {
			if poll := time.Now().Add(indexPoll); deadline.IsZero() || poll.Before(deadline) {
				deadline = poll
			}
		}
		var timer <-chan time.Time
		if !deadline.IsZero() {
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-timer:
		}
		return nil
	}
	wctx := ctx
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	var err error
	if f.p.Index != "" {
		// The index reaching cursor+1 means the ledger moved and the index covers it.
		err = f.r.cfg.Indexes.Wait(wctx, f.p.Index, cursor+1)
	} else {
		err = f.r.cfg.Ledger.Wait(wctx, cursor)
	}
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// read returns the projector's next events after after, and the position through which
// they are all there is (the last one of a full batch; MaxUint64 when the read reached the
// end).
func (f *follower) read(ctx context.Context, after event.Position) ([]event.Event, event.Position, error) {
	n := f.r.cfg.BatchSize
	if f.p.Index != "" {
		return f.readIndex(ctx, after)
	}
	var evs []event.Event
	var err error
	if f.p.keys == nil {
		evs, err = f.r.cfg.Ledger.Read(ctx, after, n)
	} else {
		evs, err = f.r.cfg.Ledger.ReadKeys(ctx, f.p.keys, after, n)
	}
	if err != nil {
		return nil, 0, err
	}
	if len(evs) == n {
		return evs, evs[n-1].Position, nil
	}
	return evs, math.MaxUint64, nil
}

// readIndex reads the events of each of the projector's index values and merges them in
// position order, once each (an event may have several of the values). A value whose read
// filled a batch bounds what is complete: the merge stops at its last event.
func (f *follower) readIndex(ctx context.Context, after event.Position) ([]event.Event, event.Position, error) {
	n := f.r.cfg.BatchSize
	through := event.Position(math.MaxUint64)
	var all []event.Event
	for _, v := range f.p.Values {
		evs, err := f.r.cfg.Indexes.Read(ctx, f.p.Index, v, after, n)
		if err != nil {
			return nil, 0, err
		}
		if len(evs) == n {
			through = min(through, evs[n-1].Position)
		}
		all = append(all, evs...)
	}
	slices.SortStableFunc(all, func(a, b event.Event) int { return cmp.Compare(a.Position, b.Position) })
	all = slices.CompactFunc(all, func(a, b event.Event) bool { return a.Position == b.Position })
	if through != math.MaxUint64 {
		end, _ := slices.BinarySearchFunc(all, through+1, func(e event.Event, p event.Position) int { return cmp.Compare(e.Position, p) })
		all = all[:end]
	}
	return all, through, nil
}

// truncated handles a position before the ledger's tail. A projector that never read an
// event starts at the tail; one that did has missed events for good and halts.
func (f *follower) truncated(ctx context.Context, cursor *event.Position) error {
	tail := f.r.cfg.Ledger.State().Tail
	if *cursor == 0 && f.q.buffered() == 0 && len(f.q.ready) == 0 {
		f.r.log.WarnContext(ctx, "projector starts at the ledger's tail: the earlier events were removed by retention before it first ran",
			slog.String("projector", f.p.Name), slog.Uint64("tail", uint64(tail)))
		f.q.advance(tail)
		*cursor = tail
		return nil
	}
	err := fmt.Errorf("%w: projector %s's position %d is before the ledger's tail %d, so events it had not applied were removed; rebuild its read model and reset it",
		ledger.ErrTruncated, f.p.Name, *cursor, tail)
	f.halt(ctx, &event.Event{Position: tail}, err)
	return errHalted
}

func (f *follower) logGaps(ctx context.Context, gaps []gap) {
	for _, g := range gaps {
		f.r.log.WarnContext(ctx, "projector skipped missing sequence numbers, taken as rolled back",
			slog.String("projector", f.p.Name), slog.String("sequence", g.key), slog.Int64("from", g.from), slog.Int64("to", g.to),
			slog.Duration("waited", g.waited), slog.Bool("by_commit_time", g.byLedger))
	}
}

// publish shows the projector's progress to Status and to the projectors depending on it.
func (f *follower) publish() {
	cp := f.q.checkpoint(0)
	f.p.seen.Store(uint64(cp.Seen))
	f.p.buffered.Store(int64(f.q.buffered()))
	stored := event.Position(f.p.stored.Load())
	if event.Position(f.p.done.Swap(uint64(cp.Position))) != cp.Position || stored != f.published {
		f.published = stored
		f.r.publish()
	}
}

// drain applies the ready events in batches, retrying a failing one as the policy says.
func (f *follower) drain(ctx context.Context) error {
	for len(f.q.ready) > 0 {
		if ctx.Err() != nil {
			return nil
		}
		k := min(len(f.q.ready), f.r.cfg.BatchSize)
		i, err := f.apply(ctx, k)
		if err == nil {
			f.q.applied(k)
			f.publish()
			continue
		}
		if isConflict(err) {
			return errReload
		}
		if ctx.Err() != nil {
			return nil
		}
		if i > 0 {
			if f.p.HandleTx != nil {
				// The batch rolled back: commit the events before the failing one alone.
				if _, err := f.apply(ctx, i); err != nil {
					if isConflict(err) || ctx.Err() == nil {
						return errReload
					}
					return nil
				}
			} else if err := f.save(ctx, f.q.checkpoint(i)); isConflict(err) {
				return errReload
			}
			f.q.applied(i)
			f.publish()
		}
		if err := f.retry(ctx, err); err != nil {
			return err
		}
	}
	return nil
}

// retry retries the first ready event alone, which failed with err, and halts the projector
// when the policy's retries run out. Database outages wait without spending retries.
func (f *follower) retry(ctx context.Context, err error) error {
	r, p := f.r, f.p
	bad := f.q.ready[0].ev
	loop := retry.Loop{
		Consumer: p.consumer(), Policy: p.retry, Reporter: r.cfg.Reporter, SleepFunc: r.cfg.SleepFunc, Logger: r.log,
		// A handler's error is retried by the policy whatever it wraps: none halts at once.
		PermanentFunc: func(error) bool { return false },
		HaltFunc:      func(ctx context.Context, cause error) { f.recordHalt(ctx, &bad, cause) },
	}
	if p.HandleTx == nil {
		// Only a transaction's failure can be told apart as the database being away; a
		// Handle error is the handler's, whatever it wraps.
		loop.TransientFunc = func(error) bool { return false }
	}
	err = loop.Run(ctx, &bad, err, func(ctx context.Context) error {
		_, err := f.apply(ctx, 1)
		if isConflict(err) {
			return retry.Stop(errReload)
		}
		return err
	})
	switch {
	case err == nil:
		f.q.applied(1)
		f.publish()
		return nil
	case errors.Is(err, retry.ErrHalted):
		return errHalted
	case errors.Is(err, errReload):
		return errReload
	default: // ctx ended
		return nil
	}
}

// apply hands the first k ready events to the handler and saves the checkpoint after them.
// On error it returns the index of the failing event. With HandleTx, all of it is one
// transaction; with Handle, the events before the failing one were handled.
func (f *follower) apply(ctx context.Context, k int) (int, error) {
	cp := f.q.checkpoint(k)
	evs := f.q.ready[:k]
	if f.p.HandleTx == nil {
		for i := range evs {
			if err := f.p.Handle(ctx, evs[i].ev); err != nil {
				return i, err
			}
		}
		if err := f.save(ctx, cp); err != nil {
			if isConflict(err) {
				return 0, err
			}
			// Handled, not saved: a crash now hands these events over again, as Handle allows.
			f.r.log.WarnContext(ctx, "projector cannot save its position; it saves it with the next batch", slog.String("projector", f.p.Name), slog.Any("error", err))
		}
		return 0, nil
	}
	tx, err := f.r.cfg.DB.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	for i := range evs {
		if err := f.p.HandleTx(ctx, tx, evs[i].ev); err != nil {
			return i, err
		}
	}
	cp = f.stamp(cp)
	if err := f.r.txStore.SaveTx(ctx, tx, f.p.Name, cp); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	f.stored(cp)
	return 0, nil
}

// save stores cp outside any transaction.
func (f *follower) save(ctx context.Context, cp Checkpoint) error {
	cp = f.stamp(cp)
	if err := f.r.store.Save(ctx, f.p.Name, cp); err != nil {
		return err
	}
	f.stored(cp)
	return nil
}

// stamp gives cp what a save needs beside the progress: the version it replaces and the
// ledger it counts.
func (f *follower) stamp(cp Checkpoint) Checkpoint {
	cp.Version, cp.Ledger = f.saved.Version, cmp.Or(f.r.ledgerKey(), f.saved.Ledger)
	return cp
}

// stored records that cp, stamped, was saved.
func (f *follower) stored(cp Checkpoint) {
	cp.Version++
	f.saved = cp
	f.p.stored.Store(uint64(cp.Position))
}

// saveIdle stores the progress made past events the projector does not apply, at most
// every idleSaveEvery.
func (f *follower) saveIdle(ctx context.Context) error {
	cp := f.q.checkpoint(0)
	if cp.Position == f.saved.Position && cp.Seen == f.saved.Seen {
		f.idleDue = time.Time{}
		return nil
	}
	now := time.Now()
	if next := f.lastIdle.Add(idleSaveEvery); now.Before(next) {
		f.idleDue = next
		return nil
	}
	f.lastIdle, f.idleDue = now, time.Time{}
	if err := f.save(ctx, cp); err != nil {
		if isConflict(err) {
			return errReload
		}
		if ctx.Err() == nil {
			f.r.log.WarnContext(ctx, "projector cannot save its position", slog.String("projector", f.p.Name), slog.Any("error", err))
		}
	}
	return nil
}

// saveOnExit stores the progress made without events to apply (filtered out, or held), so
// that a restart does not read it again.
func (f *follower) saveOnExit(ctx context.Context) {
	if Phase(f.p.phase.Load()) == Halted {
		return
	}
	cp := f.q.checkpoint(0)
	if cp.Position == f.saved.Position && cp.Seen == f.saved.Seen {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := f.save(sctx, cp); err != nil && !isConflict(err) {
		f.r.log.WarnContext(ctx, "projector cannot save its position at stop; it reads the events again at the next start", slog.String("projector", f.p.Name), slog.Any("error", err))
	}
}

// halt records the projector's failure on e and stops it, then reports it.
func (f *follower) halt(ctx context.Context, e *event.Event, cause error) {
	f.recordHalt(ctx, e, cause)
	f.r.cfg.Reporter.Halted(ctx, f.p.consumer(), e, cause)
}

// recordHalt records the projector's failure on e and stops it.
func (f *follower) recordHalt(ctx context.Context, e *event.Event, cause error) {
	cp := f.q.checkpoint(0)
	cp.Halted, cp.Error, cp.FailedPosition = true, cause.Error(), e.Position
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := f.save(sctx, cp); err != nil {
		f.r.log.ErrorContext(ctx, "record that a projector halted", slog.String("projector", f.p.Name), slog.Any("error", err))
	}
	f.publish()
	f.r.markHalted(f.p, cause.Error(), e.Position)
}
