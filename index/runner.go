package index

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/retry"
)

// BatchDefault is the default [Config.Batch].
const BatchDefault = 1024

// ErrRunning is returned by [Runner.Run] and [Runner.Follow] while a Run or Follow of the
// same runner is running.
var ErrRunning = errors.New("index: the runner is already running or following; call Run or Follow once at a time")

// Reader is the part of a ledger the runner reads; a [ledger.Ledger] is one.
type Reader interface {
	Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error)
	Wait(ctx context.Context, after event.Position) error
	State() ledger.State
}

// Config configures a [Runner].
type Config struct {
	// Ledger is the ledger to index. Required.
	Ledger Reader
	// Store keeps the indexes and their checkpoints. Required.
	Store Store
	// Indexers are the indexers to run; their names must be distinct. Required.
	Indexers []Indexer
	// Logger receives the runner's messages: a rebuild at info level, history lost to
	// retention at warn level. Nil discards them.
	Logger *slog.Logger
	// Batch is how many events are read from the ledger, and indexed in one atomic store
	// write, at a time. Default BatchDefault (1024).
	Batch int
	// Reporter, when set, receives the failure of an indexer that stops Run, as the halt of
	// a [retry.Index] consumer at the event it failed on (an empty event when the failure
	// is the ledger's or the store's). Default nil: Run's error alone tells it.
	Reporter retry.Reporter
	// FollowInterval is how often [Runner.Follow] reads the stored checkpoints. Default
	// FollowIntervalDefault (250 ms).
	FollowInterval time.Duration
}

func (c Config) withDefaults() Config {
	c.Batch = cmp.Or(c.Batch, BatchDefault)
	c.FollowInterval = cmp.Or(c.FollowInterval, FollowIntervalDefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if c.Ledger == nil {
		return errors.New("index: Config.Ledger is nil; set it to the ledger to index")
	}
	if c.Store == nil {
		return errors.New("index: Config.Store is nil; set it to a store (index/disk, or index/memory for tests)")
	}
	if len(c.Indexers) == 0 {
		return errors.New("index: Config.Indexers is empty; give at least one indexer")
	}
	if c.FollowInterval < 0 {
		return fmt.Errorf("index: Config.FollowInterval is %v; set a positive interval, or 0 for the default %v", c.FollowInterval, FollowIntervalDefault)
	}
	if c.Batch < 0 {
		return fmt.Errorf("index: Config.Batch is %d; set a positive batch size, or 0 for the default %d", c.Batch, BatchDefault)
	}
	seen := map[string]bool{}
	for i := range c.Indexers {
		ix := &c.Indexers[i]
		if err := ix.validate(); err != nil {
			return err
		}
		if seen[ix.Name] {
			return fmt.Errorf("index: two indexers are named %q; give each indexer its own name", ix.Name)
		}
		seen[ix.Name] = true
	}
	return nil
}

// Phase is what an indexer is doing.
type Phase uint8

const (
	// Stopped: the runner is not running.
	Stopped Phase = iota
	// CatchingUp: the indexer is reading history, after a start or a rebuild.
	CatchingUp
	// Live: the indexer has indexed the head and follows new events.
	Live
)

// String returns stopped, catching_up or live.
func (p Phase) String() string {
	switch p {
	case Stopped:
		return "stopped"
	case CatchingUp:
		return "catching_up"
	case Live:
		return "live"
	default:
		return "phase(" + strconv.Itoa(int(p)) + ")"
	}
}

// MarshalText writes the phase's name.
func (p Phase) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a phase's name, as MarshalText writes it, so that a status decoded
// from JSON (a running walflow's /status) keeps its phases.
func (p *Phase) UnmarshalText(b []byte) error {
	for _, q := range []Phase{Stopped, CatchingUp, Live} {
		if q.String() == string(b) {
			*p = q
			return nil
		}
	}
	return fmt.Errorf("index: unknown phase %q; want one of stopped, catching_up, live", b)
}

// Runner keeps a set of indexers up to date with a ledger, and answers reads and
// subscriptions. Create it with [New] and run it with [Runner.Run]. Its methods are safe
// for concurrent use.
type Runner struct {
	cfg     Config
	log     *slog.Logger
	workers []*worker
	byName  map[string]*worker
	running atomic.Bool

	subsMu sync.RWMutex
	subs   map[*Subscription]struct{}
	nsubs  atomic.Int32

	feed feed // values computed at append; see Feed
}

// worker is one indexer's progress, shared by its goroutine and the runner's readers.
type worker struct {
	ix Indexer
	i  int // place in Runner.workers, and in a feedEntry's slices

	fed, readBack atomic.Uint64 // events indexed from the feed, and read back from the ledger

	mu        sync.Mutex
	st        State
	loaded    bool // st was loaded by Run or Follow
	phase     Phase
	following bool          // Follow runs
	changed   chan struct{} // closed and replaced when st or phase change
	// notified is the highest checkpoint the runner has passed since it first loaded one:
	// no position at or below it is notified again, even when the index is reset and
	// rebuilt, so that subscribers see each position once.
	notified event.Position
	seen     bool // st was loaded once: a later load without it is a reset
}

// New returns a runner of cfg's indexers. It does no I/O and starts nothing.
func New(cfg Config) (*Runner, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cfg.Indexers = append([]Indexer(nil), cfg.Indexers...)
	r := &Runner{
		cfg:    cfg,
		log:    cfg.Logger.With(slog.String("component", "index")),
		byName: map[string]*worker{},
		subs:   map[*Subscription]struct{}{},
	}
	for i, ix := range cfg.Indexers {
		w := &worker{ix: ix, i: i, changed: make(chan struct{})}
		r.workers = append(r.workers, w)
		r.byName[ix.Name] = w
	}
	return r, nil
}

// Run indexes until ctx ends, then returns nil. Each indexer resumes from its checkpoint,
// or rebuilds from the ledger's beginning when its data is missing or its Version changed,
// catches up in batches, then follows new events; each runs in a goroutine of its own,
// which Run waits for. Run fails, stopping every indexer, when the ledger or the store
// fails, or an indexer's Func panics or returns a value with a NUL byte; only the latter
// is permanent (retry.IsPermanent reports it), as restarting Run fails on the same event.
func (r *Runner) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)
	g, gctx := errgroup.WithContext(ctx)
	for _, w := range r.workers {
		g.Go(func() error {
			defer w.set(func(w *worker) { w.phase = Stopped })
			err := r.runWorker(gctx, w)
			if gctx.Err() != nil && errors.Is(err, gctx.Err()) {
				return nil
			}
			if gctx.Err() == nil && r.cfg.Reporter != nil {
				// The first failure (runWorker returns only on one), not one that follows
				// the end of Run.
				var at event.Event
				if fe := (*funcError)(nil); errors.As(err, &fe) {
					at = *fe.e
				}
				r.cfg.Reporter.Halted(gctx, retry.Consumer{Kind: retry.Index, Name: w.ix.Name}, &at, err)
			}
			return err
		})
	}
	err := g.Wait()
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

func (r *Runner) runWorker(ctx context.Context, w *worker) error {
	name := w.ix.Name
	log := r.log.With(slog.String("indexer", name))
	var (
		st  State
		err error
	)
	for {
		if err := r.waitSharedHead(ctx, w, log); err != nil {
			return err
		}
		if st, err = r.start(ctx, w, log); errors.Is(err, errStoreMoved) {
			continue
		} else if err != nil {
			return err
		}
		if err := r.notifyStored(ctx, w, st); errors.Is(err, errStoreMoved) {
			continue
		} else if err != nil {
			return err
		}
		break
	}
	w.set(func(w *worker) { w.st, w.loaded, w.phase = st, true, CatchingUp })
	var (
		entries []Entry
		notes   []Notification
		values  []string
	)
	var fed []feedEntry
	for {
		head := r.cfg.Ledger.State().Head
		if st.Checkpoint >= head {
			w.set(func(w *worker) { w.phase = Live })
			if err := r.waitLedger(ctx, w, st); err != nil {
				return err
			}
			continue
		}
		var ok bool
		if fed, ok = r.feed.take(w.i, st.Checkpoint, head, r.cfg.Batch, fed[:0]); ok {
			if st, err = r.storeFed(ctx, w, st, fed, head); err != nil {
				return err
			}
			clear(fed)
			continue
		}
		evs, err := r.cfg.Ledger.Read(ctx, st.Checkpoint, r.cfg.Batch)
		if te := (*ledger.TruncatedError)(nil); errors.As(err, &te) {
			// Retention removed events this indexer had not read: they are gone for good,
			// so it goes on after the tail, and says so.
			log.WarnContext(ctx, "retention removed events the indexer had not indexed; its index lacks them",
				slog.Uint64("checkpoint", uint64(st.Checkpoint)), slog.Uint64("tail", uint64(te.Tail)))
			st.Checkpoint, st.Since = te.Tail, te.Tail
			if err := r.cfg.Store.Write(ctx, Batch{Indexer: name, State: st}); err != nil {
				return fmt.Errorf("index: %s: write checkpoint: %w", name, err)
			}
			w.set(func(w *worker) { w.st = st })
			continue
		}
		if err != nil {
			return fmt.Errorf("index: %s: read ledger after position %d: %w", name, st.Checkpoint, err)
		}
		if len(evs) == 0 {
			w.set(func(w *worker) { w.phase = Live })
			if err := r.waitLedger(ctx, w, st); err != nil {
				return err
			}
			continue
		}
		w.readBack.Add(uint64(len(evs)))
		notify := r.nsubs.Load() > 0
		entries, notes = entries[:0], notes[:0]
		for i := range evs {
			e := &evs[i]
			values, err = w.values(e, values[:0])
			if err != nil {
				return &funcError{e: e, err: err}
			}
			for _, v := range values {
				entries = append(entries, Entry{Value: v, Position: e.Position})
			}
			if notify {
				notes = append(notes, Notification{Indexer: name, Position: e.Position, Values: cloneOrNil(values)})
			}
		}
		st.Checkpoint = evs[len(evs)-1].Position
		if err := r.cfg.Store.Write(ctx, Batch{Indexer: name, Entries: entries, State: st}); err != nil {
			return fmt.Errorf("index: %s: write entries through position %d: %w", name, st.Checkpoint, err)
		}
		phase := CatchingUp
		if st.Checkpoint >= r.cfg.Ledger.State().Head {
			phase = Live
		}
		if notes := w.advance(func(w *worker) { w.st, w.phase = st, phase }, notes); len(notes) > 0 {
			r.publish(name, notes)
		}
	}
}

// waitLedger waits for an event after st's checkpoint. On a [FenceChecker] store it also
// checks the indexer's fence every Config.FollowInterval, and fails with the check's error
// when another process wrote or reset the indexer: a live indexer writes nothing while no
// event comes, and would not notice otherwise.
func (r *Runner) waitLedger(ctx context.Context, w *worker, st State) error {
	name := w.ix.Name
	fc, ok := r.cfg.Store.(FenceChecker)
	if !ok {
		if err := r.cfg.Ledger.Wait(ctx, st.Checkpoint); err != nil {
			return fmt.Errorf("index: %s: wait for the ledger: %w", name, err)
		}
		return nil
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, r.cfg.FollowInterval)
		err := r.cfg.Ledger.Wait(wctx, st.Checkpoint)
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("index: %s: wait for the ledger: %w", name, err)
		}
		if err := fc.CheckFence(ctx, name); err != nil {
			return fmt.Errorf("index: %s: %w", name, err)
		}
	}
}

// start loads the indexer's state, or resets it and starts from the ledger's tail when its
// data is missing, its version changed, or it is ahead of the ledger. On a [SharedStore],
// an indexer ahead of the ledger is never reset (every process reads it, and this
// process's view of the shared ledger may lag): start fails with errStoreMoved then.
func (r *Runner) start(ctx context.Context, w *worker, log *slog.Logger) (State, error) {
	name := w.ix.Name
	st, ok, err := r.cfg.Store.State(ctx, name)
	if err != nil {
		return State{}, fmt.Errorf("index: %s: load checkpoint: %w", name, err)
	}
	led := r.cfg.Ledger.State()
	var reason string
	switch {
	case !ok:
		reason = "no stored index"
	case st.Version != w.ix.Version:
		reason = "indexer version changed from " + strconv.Quote(st.Version) + " to " + strconv.Quote(w.ix.Version)
	case st.Checkpoint > led.Head:
		if _, shared := r.cfg.Store.(SharedStore); shared {
			// Another process stored it, and this process's view of the shared ledger
			// lags: waitSharedHead waits for the ledger.
			return State{}, errStoreMoved
		}
		// The ledger was replaced by a shorter one: the entries point at other events.
		reason = "index checkpoint " + strconv.FormatUint(uint64(st.Checkpoint), 10) + " is past the ledger head " + strconv.FormatUint(uint64(led.Head), 10)
	default:
		return st, nil
	}
	log.InfoContext(ctx, "rebuilding index", slog.String("reason", reason))
	// Reset even when no state was found: entries left without their state (a partly
	// deleted key range) must not mix with the rebuilt ones.
	if err := r.cfg.Store.Reset(ctx, name); err != nil {
		return State{}, fmt.Errorf("index: %s: reset for rebuild: %w", name, err)
	}
	st = State{Checkpoint: led.Tail, Since: led.Tail, Version: w.ix.Version}
	if led.Tail > 0 {
		log.WarnContext(ctx, "retention removed the ledger's oldest events; the rebuilt index starts after the tail",
			slog.Uint64("tail", uint64(led.Tail)))
	}
	if err := r.cfg.Store.Write(ctx, Batch{Indexer: name, State: st}); err != nil {
		return State{}, fmt.Errorf("index: %s: write checkpoint: %w", name, err)
	}
	return st, nil
}

// values calls the indexer's Func, turns a panic into an error, checks the values and drops
// duplicates, keeping the first of each.
func (w *worker) values(e *event.Event, dst []string) (out []string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("index: %s: Func panicked on the event at position %d: %v", w.ix.Name, e.Position, p)
		}
	}()
	out = w.ix.Func(e, dst)
	var seen map[string]struct{} // for many values, where a linear search would be quadratic
	if len(out) > manyValues {
		seen = make(map[string]struct{}, len(out))
	}
	n := 0
	for _, v := range out {
		if !validValue(v) {
			return nil, fmt.Errorf("index: %s: Func gave the event at position %d the value %q, which contains a NUL byte; values must not", w.ix.Name, e.Position, v)
		}
		if seen != nil {
			if _, dup := seen[v]; dup {
				continue
			}
			seen[v] = struct{}{}
		} else if slices.Contains(out[:n], v) {
			continue
		}
		out[n] = v
		n++
	}
	clear(out[n:])
	return out[:n], nil
}

// funcError is the failure of an indexer's Func on the event e. It is permanent.
type funcError struct {
	e   *event.Event
	err error
}

func (f *funcError) Error() string { return f.err.Error() }
func (f *funcError) Unwrap() error { return f.err }

// Permanent reports that retrying cannot heal the failure (see retry.IsPermanent): the
// same event fails again until the indexer changes.
func (f *funcError) Permanent() bool { return true }

// manyValues is how many values an event may have before duplicates are found with a map.
const manyValues = 16

func cloneOrNil(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}

// set changes the worker's progress under its lock and wakes its waiters.
func (w *worker) set(f func(*worker)) { w.advance(f, nil) }

// advance changes the worker's progress as set does, and returns the notifications of
// notes (in position order) that are past every checkpoint the worker had passed before:
// those to publish.
func (w *worker) advance(f func(*worker), notes []Notification) []Notification {
	w.mu.Lock()
	mark := w.notified
	f(w)
	if w.loaded {
		w.seen = true
		w.notified = max(w.notified, w.st.Checkpoint)
	}
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
	i := 0
	for i < len(notes) && notes[i].Position <= mark {
		i++
	}
	return notes[i:]
}

func (r *Runner) worker(indexer string) (*worker, error) {
	w, ok := r.byName[indexer]
	if !ok {
		return nil, fmt.Errorf("index: no indexer is named %q; add it to Config.Indexers", indexer)
	}
	return w, nil
}

// Checkpoint returns the last position the indexer has indexed in this run, or that Follow
// last found stored: 0 until Run or Follow has loaded the stored checkpoint. It fails for an unknown indexer.
func (r *Runner) Checkpoint(indexer string) (event.Position, error) {
	w, err := r.worker(indexer)
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.loaded {
		return 0, nil
	}
	return w.st.Checkpoint, nil
}

// Wait blocks until the indexer has indexed every event up to position pos (its
// checkpoint is at or past pos), or ctx ends. It waits for Run or Follow to load the
// checkpoint.
func (r *Runner) Wait(ctx context.Context, indexer string, pos event.Position) error {
	w, err := r.worker(indexer)
	if err != nil {
		return err
	}
	for {
		w.mu.Lock()
		done := w.loaded && w.st.Checkpoint >= pos
		ch := w.changed
		w.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
