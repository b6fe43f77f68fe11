package processstatus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Ledger is what the tracker reads: the events in order, and the head. ledger/memory and
// ledger/disk ledgers satisfy it. Its methods must be safe for concurrent use: the tracker
// reads from its Run goroutine while queries call State.
type Ledger interface {
	// Read returns up to limit events after position after, in order, up to the head.
	Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error)
	// Wait blocks until the head is past after, ctx ends or the ledger is closed.
	Wait(ctx context.Context, after event.Position) error
	// State returns the ledger's bookkeeping: head, last commit and end LSNs, acknowledged LSN.
	State() ledger.State
}

// Watermark reports how far the consumers of each entity have committed. *operator.Runner
// satisfies it.
type Watermark interface {
	// CommittedThrough returns the ledger position up to which every operator listening to
	// entity has committed (the minimum of their checkpoints), or the ledger head when no
	// operator listens to it. It is called often, from the tracker's goroutine, and must not
	// block. It must never report a position an operator has not committed yet; it may report
	// less (the tracker then simply waits longer).
	CommittedThrough(entity string) event.Position
}

// Defaults of [Config].
const (
	// TimestampColumnDefault is the timestamp column of every entity when
	// Config.TimestampColumnFunc is nil, as channel.TimestampColumnDefault.
	TimestampColumnDefault = "updated_at"
	// PollIntervalDefault is the default Config.PollInterval.
	PollIntervalDefault = 50 * time.Millisecond
	// BatchDefault is the default Config.Batch.
	BatchDefault = 1024
)

// flushTimeout bounds the final Flush of a buffering store when Run returns.
const flushTimeout = 10 * time.Second

// maxQueue is how many unprocessed events the tracker keeps per entity. Beyond it,
// neighbours are merged into the later one, which is safe (a merged timestamp is reported
// when its later event is processed, never earlier) and bounds memory when an operator is
// halted while writes go on.
const maxQueue = 1024

// Config configures a [Tracker]. Ledger and Watermark are required; every other field has
// a meaningful zero value.
type Config struct {
	// Ledger is the ledger whose events are tracked. Required.
	Ledger Ledger
	// Watermark tells how far the operators of each entity have committed. Required.
	Watermark Watermark
	// ChangedFunc, when set, returns a channel that is closed the next time any watermark
	// moves after the call (operator.Runner.Changed does this). The tracker then reacts to
	// a committed operator batch at once. Default nil: watermarks are re-read every
	// PollInterval.
	ChangedFunc func() <-chan struct{}
	// PollInterval is how often the tracker re-reads the watermarks of entities with
	// unprocessed events, and the ledger's acknowledged LSN (which moves without new events
	// and lets [Tracker.ProcessedLSN] answer on an idle database). Default 50ms.
	PollInterval time.Duration
	// Store keeps the status across restarts. Default [NoStore]: nothing is kept.
	Store Store
	// TimestampColumnFunc returns the timestamp column of an entity (a table name): a
	// timestamptz, timestamp (taken as UTC) or bigint (microseconds since the epoch) column
	// that every insert and update sets. An empty name means the entity has no timestamp:
	// its events are tracked for [Tracker.ProcessedLSN] only. It is called once per entity.
	// Default: [TimestampColumnDefault] for every entity.
	TimestampColumnFunc func(entity string) string
	// Batch is how many events the tracker reads from the ledger at a time. Default 1024.
	Batch int
	// Logger receives the tracker's warnings. Default: warnings and errors as text on stderr.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.PollInterval = cmp.Or(c.PollInterval, PollIntervalDefault)
	c.Batch = cmp.Or(c.Batch, BatchDefault)
	if c.Store == nil {
		c.Store = NoStore{}
	}
	if c.TimestampColumnFunc == nil {
		c.TimestampColumnFunc = func(string) string { return TimestampColumnDefault }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Ledger == nil:
		return errors.New("processstatus: Config.Ledger is nil; pass the ledger whose events are tracked")
	case c.Watermark == nil:
		return errors.New("processstatus: Config.Watermark is nil; pass the operator runner (or another Watermark) that reports how far each entity's operators have committed")
	case c.PollInterval < 0:
		return fmt.Errorf("processstatus: Config.PollInterval is %s; use a positive duration, or 0 for the default %s", c.PollInterval, PollIntervalDefault)
	case c.Batch < 0:
		return fmt.Errorf("processstatus: Config.Batch is %d; use a positive number, or 0 for the default %d", c.Batch, BatchDefault)
	}
	return nil
}

// Tracker follows the ledger and the operators' watermarks and answers whether a write is
// processed. Create it with [New] and run it with [Tracker.Run]; its query methods are safe
// for concurrent use, before, during and after Run. Until Run has loaded the saved status,
// no entity reads as processed.
type Tracker struct {
	cfg     Config
	log     *slog.Logger
	running atomic.Bool

	// mu guards the published status, which queries read.
	mu        sync.RWMutex
	processed map[string]int64 // entity → processed timestamp
	through   event.Position   // every event up to here is processed
	lsn       event.LSN        // every transaction committed at or before it is processed
	changed   chan struct{}    // closed and replaced when the published status moves
	// parkedView excludes the events operators parked (see Parker).
	parkedView parkedView

	// The rest is owned by Run's loop goroutine.
	entities map[string]*entityState
	pending  map[string]*entityState // entities with unprocessed events
	scanned  event.Position          // every event up to here has been scanned
	lsnFrom  event.Position          // the event whose LSN last gave lsn; 0 for none
	saved    event.Position          // the position last saved to the store
	parked   map[event.Position]parkedEvent
}

// New validates cfg and returns a tracker. It starts no goroutine and does no I/O.
func New(cfg Config) (*Tracker, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Tracker{
		cfg:       cfg,
		log:       cfg.Logger.With(slog.String("component", "processstatus")),
		processed: map[string]int64{},
		changed:   make(chan struct{}),
		entities:  map[string]*entityState{},
		pending:   map[string]*entityState{},
		parked:    map[event.Position]parkedEvent{},
	}, nil
}

// Run loads the saved status, then follows the ledger from the saved position, advancing
// each entity as its watermark passes its events, until ctx ends. It returns nil after ctx
// ends, or the error that stopped it: the ledger was closed or failed, or the store failed.
// When the store is a [Flusher], Run flushes it before returning. A tracker runs once.
func (t *Tracker) Run(ctx context.Context) error {
	if !t.running.CompareAndSwap(false, true) {
		return errors.New("processstatus: Run called twice; a Tracker runs once")
	}
	if err := t.restore(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	wake := make(chan struct{}, 1)
	start := t.scanned
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return t.watch(gctx, start, wake) })
	g.Go(func() error { return t.loop(gctx, wake) })
	err := g.Wait()
	if f, ok := t.cfg.Store.(Flusher); ok {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
		if ferr := f.Flush(fctx); ferr != nil {
			// Not fatal: the next start rescans the ledger from the last saved position.
			t.log.WarnContext(ctx, "flush the process-status store at stop", slog.Any("error", ferr))
		}
		cancel()
	}
	return err
}

// restore loads the saved status and publishes it.
func (t *Tracker) restore(ctx context.Context) error {
	snap, err := t.cfg.Store.Load(ctx)
	if err != nil {
		return fmt.Errorf("processstatus: load the saved status: %w", err)
	}
	st := t.cfg.Ledger.State()
	if head := st.Head; snap.Position > head {
		// The status was saved against a ledger that no longer exists (a deleted directory,
		// a memory ledger): its position means nothing here, and neither do its timestamps.
		t.log.WarnContext(ctx, "saved process status is ahead of the ledger; resetting it",
			slog.Uint64("saved_position", uint64(snap.Position)), slog.Uint64("ledger_head", uint64(head)))
		if err := t.cfg.Store.Reset(ctx); err != nil {
			return fmt.Errorf("processstatus: reset the saved status: %w", err)
		}
		snap = Snapshot{}
	}
	if snap.Position < st.Tail {
		// The retention removed events after the saved position: a store that keeps
		// nothing, or lost its latest saves. They cannot be read again, and they were
		// processed (the ledger is truncated only through Position), so resume at the
		// tail. An entity whose timestamp only they carried reads as processed later than
		// it could, never earlier.
		level := slog.LevelInfo
		if snap.Position > 0 {
			level = slog.LevelWarn
		}
		t.log.Log(ctx, level, "process status resumes at the ledger's tail; the events before it were removed by retention",
			slog.Uint64("saved_position", uint64(snap.Position)), slog.Uint64("ledger_tail", uint64(st.Tail)))
		snap.Position = st.Tail
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, micros := range snap.Entities {
		s := t.entity(name)
		s.processed, s.known = micros, true
		t.processed[name] = micros
	}
	t.scanned, t.saved, t.through = snap.Position, snap.Position, snap.Position
	t.broadcast()
	return nil
}

// watch wakes the loop each time the ledger's head moves.
func (t *Tracker) watch(ctx context.Context, after event.Position, wake chan<- struct{}) error {
	for {
		if err := t.cfg.Ledger.Wait(ctx, after); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("processstatus: wait for the ledger: %w", err)
		}
		after = t.cfg.Ledger.State().Head
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// loop runs rounds until ctx ends.
func (t *Tracker) loop(ctx context.Context, wake <-chan struct{}) error {
	tick := time.NewTicker(t.cfg.PollInterval)
	defer tick.Stop()
	for {
		// Take the watermark channel before reading the watermarks, so that a move during
		// the round closes the channel we are about to wait on.
		var moved <-chan struct{}
		if t.cfg.ChangedFunc != nil {
			moved = t.cfg.ChangedFunc()
		}
		more, err := t.round(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if more {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-moved:
		case <-tick.C:
		}
	}
}

// round scans the next batch of events, advances the entities with unprocessed events to
// their watermarks, publishes and saves what moved. more reports a full batch.
func (t *Tracker) round(ctx context.Context) (more bool, err error) {
	evs, err := t.cfg.Ledger.Read(ctx, t.scanned, t.cfg.Batch)
	var te *ledger.TruncatedError
	if errors.As(err, &te) {
		// Someone truncated past the tracker (the engine's own retention never does): the
		// events are gone, so go on from the tail rather than stop, as at start.
		t.log.WarnContext(ctx, "process status skips to the ledger's tail: events it had not scanned were removed by a truncation",
			slog.Uint64("scanned_position", uint64(t.scanned)), slog.Uint64("ledger_tail", uint64(te.Tail)))
		t.scanned = te.Tail
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("processstatus: read the ledger after position %d: %w", t.scanned, err)
	}
	for i := range evs {
		t.scan(ctx, &evs[i])
	}
	if n := len(evs); n > 0 {
		t.scanned = evs[n-1].Position
	}

	var dirty []*entityState
	through := t.scanned
	for name, s := range t.pending {
		if s.advance(t.cfg.Watermark.CommittedThrough(name)) {
			dirty = append(dirty, s)
		}
		if s.first == 0 {
			delete(t.pending, name)
			continue
		}
		through = min(through, s.first-1)
	}
	if _, err := t.refreshParked(ctx); err != nil {
		return false, fmt.Errorf("processstatus: read the parked events: %w", err)
	}

	// The LSN watermark: every transaction committed at or before it is processed.
	t.mu.RLock()
	lsn, published := t.lsn, t.through
	t.mu.RUnlock()
	through = max(through, published)
	if st := t.cfg.Ledger.State(); through >= st.Head {
		lsn = max(lsn, coverLSN(st))
	} else if through+1 != t.lsnFrom {
		// The event after through is the first one not known processed; every transaction
		// that committed before it lies at or before through.
		next, err := t.cfg.Ledger.Read(ctx, through, 1)
		if errors.Is(err, ledger.ErrTruncated) {
			next, err = nil, nil
		}
		if err != nil {
			return false, fmt.Errorf("processstatus: read the ledger after position %d: %w", through, err)
		}
		if len(next) == 1 && next[0].LSN > 0 {
			lsn = max(lsn, next[0].LSN-1)
		}
		t.lsnFrom = through + 1
	}

	t.mu.Lock()
	moved := len(dirty) > 0 || through > t.through || lsn > t.lsn
	for _, s := range dirty {
		t.processed[s.name] = s.processed
	}
	// WatermarkLSN may have raised t.lsn meanwhile: never lower it.
	t.through = max(t.through, through)
	t.lsn = max(t.lsn, lsn)
	if moved {
		t.broadcast()
	}
	t.mu.Unlock()

	// Entities first, then the position that covers them: see Store.
	for _, s := range dirty {
		if err := t.cfg.Store.Save(ctx, s.name, s.processed); err != nil {
			return false, fmt.Errorf("processstatus: save entity %q: %w", s.name, err)
		}
	}
	if through > t.saved {
		if err := t.cfg.Store.SavePosition(ctx, through); err != nil {
			return false, fmt.Errorf("processstatus: save position %d: %w", through, err)
		}
		t.saved = through
	}
	return len(evs) == t.cfg.Batch, nil
}

// scan records an event as unprocessed for its entity.
func (t *Tracker) scan(ctx context.Context, e *event.Event) {
	s := t.entity(e.Name)
	micros, ok, err := eventMicros(e, s.column)
	if err != nil && !s.warned {
		s.warned = true
		t.log.WarnContext(ctx, "timestamp column is not a timestamp; events without one are tracked by LSN only",
			slog.String("entity", e.Name), slog.String("column", s.column),
			slog.Uint64("position", uint64(e.Position)), slog.Any("error", err))
	}
	s.add(e.Position, micros, ok)
	t.pending[e.Name] = s
}

// entity returns the state of the named entity, creating it.
func (t *Tracker) entity(name string) *entityState {
	s := t.entities[name]
	if s == nil {
		s = &entityState{name: name, column: t.cfg.TimestampColumnFunc(name)}
		t.entities[name] = s
	}
	return s
}

// broadcast wakes the waiters; t.mu must be held for writing.
func (t *Tracker) broadcast() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// coverLSN returns the highest LSN L such that every transaction committed at or before L is
// in the ledger at or before st.Head. Transactions commit in LSN order, and commit records
// do not overlap, so a transaction committed at or before L is in the ledger when a later
// one is (LastCommitLSN >= L) or when L lies before the end of the last one's commit record
// (LastEndLSN > L). The source acknowledges an LSN A only when every transaction committed
// before A is durable and visible (AckedLSN > L).
func coverLSN(st ledger.State) event.LSN {
	c := st.LastCommitLSN
	if st.LastEndLSN > 0 {
		c = max(c, st.LastEndLSN-1)
	}
	if st.AckedLSN > 0 {
		c = max(c, st.AckedLSN-1)
	}
	return c
}

// Processed reports whether entity is processed through micros: an event of entity whose
// timestamp column held micros or later is processed, and so is every event of entity before
// it in the ledger. See the package documentation for why [Tracker.ProcessedLSN] is stronger.
//
// An event an operator parked (see [Parker]) is not processed, although later events of
// its entity are: Processed is false for its timestamp while it is parked.
func (t *Tracker) Processed(entity string, micros int64) bool {
	v, ok := t.Watermark(entity)
	if !ok || v < micros {
		return false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return !t.parkedView.micros[entity][micros]
}

// ProcessedLSN reports whether every transaction that committed at or before lsn is
// processed: the ledger holds all of them, and every operator listening to their entities
// has committed past their events. Give it the LSN of [CurrentLSN], or an event's LSN.
func (t *Tracker) ProcessedLSN(lsn event.LSN) bool { return lsn <= t.WatermarkLSN() }

// Watermark returns entity's processed timestamp, in microseconds since the Unix epoch; ok
// is false when no event of entity with a timestamp is known processed.
func (t *Tracker) Watermark(entity string) (micros int64, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	micros, ok = t.processed[entity]
	return micros, ok
}

// WatermarkLSN returns the highest LSN through which every committed transaction is
// processed; [Tracker.ProcessedLSN] is true for it and every LSN before it. While an
// operator has parked events (see [Parker]), it stays before the first of them.
func (t *Tracker) WatermarkLSN() event.LSN {
	lsn := t.watermarkLSN()
	t.mu.RLock()
	first := t.parkedView.firstLSN
	t.mu.RUnlock()
	if first > 0 {
		lsn = min(lsn, first-1)
	}
	return lsn
}

func (t *Tracker) watermarkLSN() event.LSN {
	t.mu.RLock()
	lsn, through := t.lsn, t.through
	t.mu.RUnlock()
	// The ledger's acknowledged LSN moves without new events: when everything in the
	// ledger is processed, its current state tells how far that reaches. Keep what it
	// tells, so that the watermark never goes back when the next event arrives.
	st := t.cfg.Ledger.State()
	if through < st.Head {
		return lsn
	}
	if live := coverLSN(st); live > lsn {
		t.mu.Lock()
		if live > t.lsn {
			t.lsn = live
			t.broadcast()
		}
		lsn = t.lsn
		t.mu.Unlock()
	}
	return lsn
}

// Position returns the ledger position through which every event is processed: where a
// restarted tracker resumes. The tracker never reads the ledger before it again, so the
// ledger may be truncated through it (not further: the tracker would fail to read events
// it has not scanned).
func (t *Tracker) Position() event.Position {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.through
}

// Wait blocks until entity is processed through micros (see [Tracker.Processed]) and
// returns nil, or until ctx ends and returns its error.
func (t *Tracker) Wait(ctx context.Context, entity string, micros int64) error {
	return t.waitUntil(ctx, func() bool { return t.Processed(entity, micros) })
}

// WaitLSN blocks until lsn is processed (see [Tracker.ProcessedLSN]) and returns nil, or
// until ctx ends and returns its error.
func (t *Tracker) WaitLSN(ctx context.Context, lsn event.LSN) error {
	return t.waitUntil(ctx, func() bool { return t.ProcessedLSN(lsn) })
}

// waitUntil blocks until cond holds or ctx ends.
func (t *Tracker) waitUntil(ctx context.Context, cond func() bool) error {
	for {
		// Take the channel before testing: a change published after the test closes it.
		t.mu.RLock()
		ch := t.changed
		t.mu.RUnlock()
		if cond() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// entityState is the tracking state of one entity, owned by Run's loop.
type entityState struct {
	name      string
	column    string // the timestamp column; "" for none
	processed int64  // the processed timestamp, valid when known
	known     bool
	// queue holds the entity's unprocessed events in position order, each with its
	// timestamp: it becomes processed when the watermark reaches its position. Past
	// maxQueue entries, neighbours are merged (lossy): a merged entry stands at the later
	// position, with the higher timestamp.
	queue []stamp
	lossy bool
	// first is the position of the first unprocessed event, 0 when none; when the queue is
	// lossy, a lower bound of it.
	first  event.Position
	warned bool // a malformed timestamp was logged
}

// stamp is an unprocessed event: its position and, when ok, its timestamp.
type stamp struct {
	pos    event.Position
	micros int64
	ok     bool
}

// add records the unprocessed event at pos, with its timestamp when ok.
func (s *entityState) add(pos event.Position, micros int64, ok bool) {
	if len(s.queue) == 0 {
		s.first = pos
	}
	if len(s.queue) == maxQueue {
		// Merge pairs into the later entry (the last one always survives): a timestamp is
		// then reported when a later event is processed, never earlier.
		q := s.queue[:0]
		for i := 0; i+1 < len(s.queue); i += 2 {
			a, b := s.queue[i], s.queue[i+1]
			if a.ok && (!b.ok || a.micros > b.micros) {
				b.micros, b.ok = a.micros, true
			}
			q = append(q, b)
		}
		if len(s.queue)%2 == 1 {
			q = append(q, s.queue[len(s.queue)-1])
		}
		s.queue = q
		s.lossy = true
	}
	s.queue = append(s.queue, stamp{pos: pos, micros: micros, ok: ok})
}

// advance applies the watermark w: every event of the entity at or before w is processed.
// It reports whether the processed timestamp moved.
func (s *entityState) advance(w event.Position) bool {
	n := 0
	moved := false
	for n < len(s.queue) && s.queue[n].pos <= w {
		if st := s.queue[n]; st.ok && (!s.known || st.micros > s.processed) {
			s.processed, s.known, moved = st.micros, true, true
		}
		n++
	}
	if n > 0 {
		s.queue = append(s.queue[:0], s.queue[n:]...)
	}
	switch {
	case len(s.queue) == 0:
		s.first, s.lossy = 0, false
	case !s.lossy:
		s.first = s.queue[0].pos
	default:
		// Merged entries hide where the first unprocessed event is; it is after w.
		s.first = max(s.first, w+1)
	}
	return moved
}
