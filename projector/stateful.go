package projector

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/statestore"
)

// Defaults of [SavepointConfig].
const (
	SavepointEveryDefault    = 1000
	SavepointIntervalDefault = time.Minute
	SavepointKeepDefault     = 2
)

// StateHandlerFunc applies one event to a stateful projector's state. Its changes to st are
// kept when it returns nil and undone when it returns an error (the event is then retried),
// so a savepoint never holds part of an event. Like a [HandlerFunc] it is at-least-once
// for its other effects; its effects on st happen once per event in the state a savepoint
// restores.
type StateHandlerFunc func(ctx context.Context, st *State, e event.Event) error

// SavepointConfig configures a [SavepointStore].
type SavepointConfig struct {
	// Storage keeps the savepoints, one run per stateful projector, named after it.
	// Required.
	Storage statestore.Storage
	// Fallback keeps the checkpoints of the runner's other projectors, those not registered
	// with [SavepointStore.Stateful]. A [PostgresStore] here is not migrated by Runner.Run
	// (only the default store is): call its Migrate first. Default nil: the runner may run
	// stateful projectors only.
	Fallback PositionStore
	// Every saves a savepoint once this many events were applied since the last one
	// (checked when the runner saves its position, after each batch). Negative turns it
	// off. Default 1000.
	Every int
	// Interval saves a savepoint once this long has passed since the last one and the
	// projector moved (checked when the runner saves its position: an idle projector saves
	// nothing until [SavepointStore.Flush], which Run calls when it ends). Negative turns it
	// off. Default one minute.
	Interval time.Duration
	// Keep is how many savepoints each run keeps; older ones are deleted after each save.
	// Default 2.
	Keep int
	// Logger receives the store's warnings. Default: warnings and errors as text on stderr.
	Logger *slog.Logger
}

func (c SavepointConfig) withDefaults() SavepointConfig {
	c.Every = cmp.Or(c.Every, SavepointEveryDefault)
	c.Interval = cmp.Or(c.Interval, SavepointIntervalDefault)
	c.Keep = cmp.Or(c.Keep, SavepointKeepDefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return c
}

func (c SavepointConfig) validate() error {
	switch {
	case c.Storage == nil:
		return errors.New("projector: SavepointConfig.Storage is nil; pass a statestore.Storage (statestore/memory.New, statestore/disk.Open or statestore/pg.New)")
	case c.Keep < 0:
		return fmt.Errorf("projector: SavepointConfig.Keep is %d; keep at least 1 savepoint (0 means the default, %d)", c.Keep, SavepointKeepDefault)
	}
	return nil
}

// SavepointStore is the [PositionStore] of stateful projectors: projectors that keep their
// read model in memory, in a [State], and save it with their position in savepoints of a
// [statestore.Storage]. Pass it as Config.Store, and build each stateful projector with
// [SavepointStore.Stateful]; the checkpoints of other projectors go to
// SavepointConfig.Fallback.
//
// # Savepoints
//
// A savepoint holds the whole state and the checkpoint it matches: every event at or
// before its position is applied to the state, and no other. The store saves one when
// the runner saves the projector's position (after each batch) and SavepointConfig.Every
// events or SavepointConfig.Interval passed since the last one; when the projector halts
// or its halt is cleared; and on [SavepointStore.Flush]. Between savepoints it only keeps
// the position in memory. On load (a start, a restart, a reload) it restores the state of
// the latest savepoint and returns its checkpoint, so the projector replays only the events
// after it: after a crash, at most about Every events (plus a batch) or Interval's worth.
// A halted projector's halt is in its savepoint, so it stays halted across restarts.
//
// A savepoint is only ever taken when the state is exactly the events its checkpoint
// counts: the store records which events the handler applied, and a state that is ahead of
// the position the runner saves (a stop in the middle of a batch drops the batch's rest
// unsaved) is not saved until a later position covers it; a load restores the latest
// savepoint instead of keeping it.
//
// The checkpoint's fields beyond Position (Seen, Sequence, the halt, Version) are kept in
// a reserved entity with the empty id; the state's own entities have non-empty ids.
//
// # Shutdown
//
// The store is a [Flusher]: when Run ends, once every projector stopped, the runner calls
// [SavepointStore.Flush], which saves a savepoint of every stateful projector that moved
// since its last one, so that the next start replays nothing. After a crash (or a failed
// flush, which is logged) the next start replays the events after the latest savepoint.
//
// # Limits
//
// Savepoints are written outside the handler's transaction, so stateful projectors use
// Handle only: a StateHandlerFunc, never HandleTx. A SavepointStore is no
// [TxPositionStore], so a runner on it runs no HandleTx projector; when the fallback is
// one (a [PostgresStore]), pass [SavepointStore.Tx] as Config.Store instead, and the other
// projectors may use HandleTx.
//
// Version conflicts ([ErrConflict]) are exact within the process (a reset under a running
// projector). Across processes the store checks, before each savepoint, that the run's
// latest savepoint is still the one it loaded or wrote, and reports a conflict otherwise
// (or when the run was deleted): a best-effort check, since a statestore has no
// compare-and-set. With a PostgresStore as the Fallback the runner takes each projector's
// lock there (see [SavepointStore.Locker]), so that one process at a time runs it.
type SavepointStore struct {
	cfg SavepointConfig
	log *slog.Logger

	mu    sync.Mutex
	projs map[string]*statefulProj
}

// statefulProj is one stateful projector's state and bookkeeping. Its mu is held by the
// handler wrapper for the whole event, and by Load, Save and Flush, so that a savepoint
// is always taken between two events.
type statefulProj struct {
	name   string
	handle StateHandlerFunc
	seq    *SequenceConfig
	st     *State

	mu      sync.Mutex
	loaded  bool
	version int64
	// cp is the checkpoint the state matches when pending is empty: the last one saved.
	cp Checkpoint
	// pending are the events applied to the state that no saved checkpoint covers yet.
	pending []appliedEvent
	// since counts the events applied since the last savepoint.
	since int
	// saved is the checkpoint of the latest savepoint (the loaded one at first); lastTS is
	// its timestamp (0: none), and lastWrite when it was written or loaded.
	saved     Checkpoint
	lastTS    int64
	lastWrite time.Time
}

type appliedEvent struct {
	pos event.Position
	key string // sequence key and number, sequence mode only
	num int64
}

// NewSavepointStore returns a store on cfg.Storage. It does not touch the storage.
func NewSavepointStore(cfg SavepointConfig) (*SavepointStore, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &SavepointStore{cfg: cfg, log: cfg.Logger.With(slog.String("component", "projector")), projs: map[string]*statefulProj{}}, nil
}

// Stateful registers p as a stateful projector whose handler is handle, and returns the
// projector to put in Config.Projectors: p with Handle set to a wrapper that hands each
// event to handle with the projector's [State]. p must set neither Handle nor HandleTx,
// and its name must be a valid run id ([statestore.ValidateRunID]) not registered before.
func (s *SavepointStore) Stateful(p Projector, handle StateHandlerFunc) (Projector, error) {
	switch {
	case p.Name == "":
		return Projector{}, errors.New("projector: a stateful projector has no Name; give it one, it names its savepoints")
	case handle == nil:
		return Projector{}, fmt.Errorf("projector %s: the stateful handler is nil", p.Name)
	case p.HandleTx != nil:
		return Projector{}, fmt.Errorf("projector %s: a stateful projector cannot use HandleTx: its savepoints are not written in the handler's transaction; apply events to the State in a StateHandlerFunc", p.Name)
	case p.Handle != nil:
		return Projector{}, fmt.Errorf("projector %s: a stateful projector's Handle is set by SavepointStore.Stateful; leave it nil and pass a StateHandlerFunc", p.Name)
	}
	if err := statestore.ValidateRunID(p.Name); err != nil {
		return Projector{}, fmt.Errorf("projector %s: the name is its savepoints' run id: %w", p.Name, err)
	}
	sp := &statefulProj{name: p.Name, handle: handle, st: newState()}
	if p.Sequence != nil {
		sc := p.Sequence.withDefaults()
		sp.seq = &sc
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.projs[p.Name]; dup {
		return Projector{}, fmt.Errorf("projector: two stateful projectors are named %q; names key savepoints and must be unique", p.Name)
	}
	s.projs[p.Name] = sp
	p.Handle = sp.apply
	return p, nil
}

// State returns the state of the stateful projector name, or nil when there is none.
func (s *SavepointStore) State(name string) *State {
	if sp := s.proj(name); sp != nil {
		return sp.st
	}
	return nil
}

func (s *SavepointStore) proj(name string) *statefulProj {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.projs[name]
}

// apply is the Handle of a stateful projector.
func (sp *statefulProj) apply(ctx context.Context, e event.Event) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if !sp.loaded {
		return fmt.Errorf("projector %s: an event arrived before the state was loaded; pass the SavepointStore as Config.Store", sp.name)
	}
	a := appliedEvent{pos: e.Position}
	if sp.seq != nil {
		key, num, err := sp.seq.number(&e)
		if err != nil {
			return err
		}
		a.key, a.num = key, num
	}
	sp.st.begin()
	err := sp.handle(ctx, sp.st, e)
	if err = sp.st.end(err); err != nil {
		return err
	}
	sp.pending = append(sp.pending, a)
	sp.since++
	return nil
}

// covered reports whether cp counts a as applied.
func covered(cp Checkpoint, a appliedEvent) bool {
	if a.pos <= cp.Position {
		return true
	}
	if cp.Sequence == nil || a.pos > cp.Seen {
		return false
	}
	next, ok := cp.Sequence[a.key]
	return ok && a.num < next
}

// savepointMeta is the reserved entity (id "") of a stateful projector's savepoint.
type savepointMeta struct {
	Format         int              `json:"format"`
	Seen           event.Position   `json:"seen"`
	Sequence       map[string]int64 `json:"sequence,omitempty"`
	Halted         bool             `json:"halted,omitempty"`
	Error          string           `json:"error,omitempty"`
	FailedPosition event.Position   `json:"failed_position,omitempty"`
	Version        int64            `json:"version"`
	Ledger         string           `json:"ledger,omitempty"`
}

const savepointFormat = 1

// Load restores the state of the projector's latest savepoint and returns its checkpoint
// (position 0 and an empty state when it has none). Other names go to the fallback.
func (s *SavepointStore) Load(ctx context.Context, name string) (Checkpoint, error) {
	sp := s.proj(name)
	if sp == nil {
		f, err := s.fallback(name)
		if err != nil {
			return Checkpoint{}, err
		}
		return f.Load(ctx, name)
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	st := s.cfg.Storage
	if err := st.InitRun(ctx, name); err != nil {
		return Checkpoint{}, fmt.Errorf("projector: initialize the savepoints of %s: %w", name, err)
	}
	latest, err := st.LatestSavepoint(ctx, name)
	var cp Checkpoint
	var state map[string][]byte
	switch {
	case errors.Is(err, statestore.ErrNoSavepoint):
		latest = statestore.Savepoint{}
	case err != nil:
		return Checkpoint{}, fmt.Errorf("projector: load the latest savepoint of %s: %w", name, err)
	default:
		if cp, state, err = decodeSavepoint(latest); err != nil {
			return Checkpoint{}, fmt.Errorf("projector: load the latest savepoint of %s (at %d): %w", name, latest.Timestamp, err)
		}
	}
	sp.version = max(sp.version, cp.Version)
	cp.Version = sp.version
	sp.st.replace(state)
	sp.loaded = true
	sp.cp, sp.saved = cp, cp
	sp.pending, sp.since = nil, 0
	sp.lastTS, sp.lastWrite = latest.Timestamp, time.Now()
	return cp, nil
}

// StoredPositions returns, for a stateful projector, the position of its latest savepoint
// (read from the savepoints' list, without their state, when the Storage is a
// [statestore.Lister], as the walflow backends are; else it is missing), and for the
// others what the Fallback stores, when it is a [PositionReader].
func (s *SavepointStore) StoredPositions(ctx context.Context, names []string) (map[string]event.Position, error) {
	out := make(map[string]event.Position, len(names))
	var others []string
	lister, _ := s.cfg.Storage.(statestore.Lister)
	for _, name := range names {
		if s.proj(name) == nil {
			others = append(others, name)
			continue
		}
		if lister == nil {
			continue
		}
		sps, err := lister.ListSavepoints(ctx, name)
		switch {
		case errors.Is(err, statestore.ErrNotInitialized):
		case err != nil:
			return nil, fmt.Errorf("projector: list the savepoints of %s: %w", name, err)
		case len(sps) > 0:
			out[name] = sps[len(sps)-1].Position
		default:
			out[name] = 0
		}
	}
	if fr, ok := s.cfg.Fallback.(PositionReader); ok && len(others) > 0 {
		pos, err := fr.StoredPositions(ctx, others)
		if err != nil {
			return nil, err
		}
		maps.Copy(out, pos)
	}
	return out, nil
}

func decodeSavepoint(sp statestore.Savepoint) (Checkpoint, map[string][]byte, error) {
	state := make(map[string][]byte, len(sp.Entities))
	var meta *savepointMeta
	for _, e := range sp.Entities {
		if e.ID == "" {
			meta = &savepointMeta{}
			if err := json.Unmarshal(e.State, meta); err != nil {
				return Checkpoint{}, nil, fmt.Errorf("decode its checkpoint entity: %w", err)
			}
			continue
		}
		state[e.ID] = e.State
	}
	if meta == nil {
		return Checkpoint{}, nil, errors.New("it has no checkpoint entity (id \"\"), so no stateful projector wrote it; delete the run or name the projector otherwise")
	}
	if meta.Format != savepointFormat {
		return Checkpoint{}, nil, fmt.Errorf("its checkpoint entity has format %d; this walflow reads format %d", meta.Format, savepointFormat)
	}
	cp := Checkpoint{Position: sp.Position, Seen: max(meta.Seen, sp.Position), Sequence: meta.Sequence, Halted: meta.Halted,
		Error: meta.Error, FailedPosition: meta.FailedPosition, Version: meta.Version, Ledger: meta.Ledger}
	return cp, state, nil
}

// Save records cp as the projector's position, and saves a savepoint when one is due (see
// [SavepointStore]). Other names go to the fallback. It returns an error wrapping
// [ErrConflict] when cp.Version is not the current version, or when the run's latest
// savepoint is not the one this store loaded or wrote.
func (s *SavepointStore) Save(ctx context.Context, name string, cp Checkpoint) error {
	sp := s.proj(name)
	if sp == nil {
		f, err := s.fallback(name)
		if err != nil {
			return err
		}
		return f.Save(ctx, name, cp)
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if !sp.loaded {
		return fmt.Errorf("%w: %s was reset, or was not loaded", ErrConflict, name)
	}
	if cp.Version != sp.version {
		return fmt.Errorf("%w: %s was reset, or runs elsewhere too", ErrConflict, name)
	}
	cp.Version++
	if !cp.Halted {
		cp.Error, cp.FailedPosition = "", 0
	}
	cp.Sequence = maps.Clone(cp.Sequence)
	sp.pending = slices.DeleteFunc(sp.pending, func(a appliedEvent) bool { return covered(cp, a) })
	clean := len(sp.pending) == 0
	if clean {
		// The state is exactly the events cp counts as applied.
		sp.cp = cp
	}
	haltChanged := cp.Halted != sp.saved.Halted || cp.Error != sp.saved.Error || cp.FailedPosition != sp.saved.FailedPosition
	var err error
	switch {
	case haltChanged && clean:
		err = s.write(ctx, sp, cp)
	case haltChanged:
		// The state is ahead of cp (events applied that cp does not count): record the
		// halt with the latest savepoint's state and position instead.
		err = s.rewriteHalt(ctx, sp, cp)
	case clean && s.due(sp, cp):
		err = s.write(ctx, sp, cp)
	}
	if err != nil {
		return err
	}
	sp.version = cp.Version
	return nil
}

// due reports whether a savepoint of cp is due.
func (s *SavepointStore) due(sp *statefulProj, cp Checkpoint) bool {
	if s.cfg.Every > 0 && sp.since >= s.cfg.Every {
		return true
	}
	return s.cfg.Interval > 0 && time.Since(sp.lastWrite) >= s.cfg.Interval && moved(sp, cp)
}

// moved reports whether cp or the state differs from the latest savepoint's.
func moved(sp *statefulProj, cp Checkpoint) bool {
	return sp.since > 0 || cp.Position != sp.saved.Position || cp.Seen != sp.saved.Seen || !maps.Equal(cp.Sequence, sp.saved.Sequence)
}

// write saves a savepoint of the state and cp, which it matches. The caller holds sp.mu.
func (s *SavepointStore) write(ctx context.Context, sp *statefulProj, cp Checkpoint) error {
	if err := s.put(ctx, sp, cp, sp.st.entities()); err != nil {
		return err
	}
	sp.since = 0
	return nil
}

// rewriteHalt saves the latest savepoint again with cp's halt. The caller holds sp.mu.
func (s *SavepointStore) rewriteHalt(ctx context.Context, sp *statefulProj, cp Checkpoint) error {
	latest, err := s.cfg.Storage.LatestSavepoint(ctx, sp.name)
	if err != nil && !errors.Is(err, statestore.ErrNoSavepoint) {
		return fmt.Errorf("projector: read the latest savepoint of %s to record its halt: %w", sp.name, err)
	}
	base := sp.saved
	base.Halted, base.Error, base.FailedPosition, base.Version = cp.Halted, cp.Error, cp.FailedPosition, cp.Version
	entities := slices.DeleteFunc(latest.Entities, func(e statestore.Entity) bool { return e.ID == "" })
	return s.put(ctx, sp, base, entities)
}

// put saves a savepoint of entities at cp, after checking that the run's latest savepoint
// is still the one sp knows, then deletes the savepoints beyond Keep.
func (s *SavepointStore) put(ctx context.Context, sp *statefulProj, cp Checkpoint, entities []statestore.Entity) error {
	st := s.cfg.Storage
	ts, err := st.LatestTimestamp(ctx, sp.name)
	switch {
	case errors.Is(err, statestore.ErrNotInitialized):
		return fmt.Errorf("%w: the savepoints of %s were deleted (a reset in another process?)", ErrConflict, sp.name)
	case errors.Is(err, statestore.ErrNoSavepoint):
		ts = 0
	case err != nil:
		return fmt.Errorf("projector: read the latest savepoint time of %s: %w", sp.name, err)
	}
	if ts != sp.lastTS {
		return fmt.Errorf("%w: %s's latest savepoint (at %d) is not the one this process loaded or wrote (at %d); does it run in another process too?", ErrConflict, sp.name, ts, sp.lastTS)
	}
	meta, err := json.Marshal(savepointMeta{Format: savepointFormat, Seen: cp.Seen, Sequence: cp.Sequence, Halted: cp.Halted,
		Error: cp.Error, FailedPosition: cp.FailedPosition, Version: cp.Version, Ledger: cp.Ledger})
	if err != nil {
		return fmt.Errorf("projector: encode the checkpoint of %s: %w", sp.name, err)
	}
	now := time.Now()
	savepoint := statestore.Savepoint{
		Timestamp: max(now.UnixMilli(), sp.lastTS), // never before the latest, even if the clock steps back
		Position:  cp.Position,
		Entities:  append([]statestore.Entity{{ID: "", State: meta}}, entities...),
	}
	if err := st.SaveSavepoint(ctx, sp.name, savepoint); err != nil {
		return fmt.Errorf("projector: save a savepoint of %s: %w", sp.name, err)
	}
	sp.saved, sp.lastTS, sp.lastWrite = cp, savepoint.Timestamp, now
	if err := st.DeleteOldSavepoints(ctx, sp.name, s.cfg.Keep); err != nil {
		// The savepoint is saved; old ones are deleted after the next one.
		s.log.WarnContext(ctx, "projector cannot delete its old savepoints", slog.String("projector", sp.name), slog.Any("error", err))
	}
	return nil
}

// Flush saves a savepoint of every stateful projector whose state or position moved since
// its latest savepoint, when its state matches its saved position (between batches). Call
// it after Runner.Run returns, so that the next start replays nothing; it is also safe
// while the runner runs (for example on a timer, for projectors that are idle), but not
// from a handler. It does nothing for projectors that were not loaded, and returns the
// errors joined.
func (s *SavepointStore) Flush(ctx context.Context) error {
	s.mu.Lock()
	projs := slices.Collect(maps.Values(s.projs))
	s.mu.Unlock()
	slices.SortFunc(projs, func(a, b *statefulProj) int { return strings.Compare(a.name, b.name) })
	var errs []error
	for _, sp := range projs {
		sp.mu.Lock()
		if sp.loaded && len(sp.pending) == 0 && moved(sp, sp.cp) {
			cp := sp.cp
			cp.Version = sp.version
			if err := s.write(ctx, sp, cp); err != nil {
				errs = append(errs, err)
			}
		}
		sp.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Locker returns the Fallback when it is a [Locker] (a [PostgresStore] is), else nil: a
// Runner on this store takes its projectors' locks there, so that one process at a time
// runs each, stateful ones included.
func (s *SavepointStore) Locker() Locker {
	l, _ := s.cfg.Fallback.(Locker)
	return l
}

// Reset deletes the projector's savepoints and clears its state, so that it replays the
// ledger from the start. Other names go to the fallback.
func (s *SavepointStore) Reset(ctx context.Context, name string) error {
	sp := s.proj(name)
	if sp == nil {
		f, err := s.fallback(name)
		if err != nil {
			return err
		}
		return f.Reset(ctx, name)
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if err := s.cfg.Storage.DeleteRun(ctx, name); err != nil {
		return fmt.Errorf("projector: reset %s: delete its savepoints: %w", name, err)
	}
	sp.version++
	sp.loaded = false
	sp.st.replace(nil)
	sp.cp, sp.saved = Checkpoint{}, Checkpoint{}
	sp.pending, sp.since, sp.lastTS = nil, 0, 0
	return nil
}

func (s *SavepointStore) fallback(name string) (PositionStore, error) {
	if s.cfg.Fallback == nil {
		return nil, fmt.Errorf("projector %s: not a stateful projector of this SavepointStore, and SavepointConfig.Fallback is nil; build it with SavepointStore.Stateful, or set a Fallback store for the others", name)
	}
	return s.cfg.Fallback, nil
}

// TxSavepointStore is a [SavepointStore] whose fallback saves in transactions, so that
// the runner's other projectors may use HandleTx. Get it with [SavepointStore.Tx].
type TxSavepointStore struct {
	*SavepointStore
	tx TxPositionStore
}

// Tx returns the store as a [TxPositionStore], for a Config.Store whose other projectors
// use HandleTx. It fails when SavepointConfig.Fallback is not a TxPositionStore.
func (s *SavepointStore) Tx() (*TxSavepointStore, error) {
	tx, ok := s.cfg.Fallback.(TxPositionStore)
	if !ok {
		return nil, fmt.Errorf("projector: SavepointConfig.Fallback (%T) does not save in transactions; use a PostgresStore as the Fallback for HandleTx projectors", s.cfg.Fallback)
	}
	return &TxSavepointStore{SavepointStore: s, tx: tx}, nil
}

// SaveTx saves cp in tx through the fallback. A stateful projector never gets here: its
// savepoints are not written in a transaction.
func (s *TxSavepointStore) SaveTx(ctx context.Context, tx pgx.Tx, name string, cp Checkpoint) error {
	if s.proj(name) != nil {
		return fmt.Errorf("projector %s: a stateful projector's checkpoint cannot be saved in a transaction", name)
	}
	return s.tx.SaveTx(ctx, tx, name, cp)
}

var (
	_ PositionStore   = (*SavepointStore)(nil)
	_ TxPositionStore = (*TxSavepointStore)(nil)
	_ Flusher         = (*SavepointStore)(nil)
)

// State is a stateful projector's read model: a map from entity id to the entity's state,
// encoded as the projector chooses (JSON, a counter in 8 bytes, ...). It is saved whole in
// each savepoint, so keep it to what fits in memory.
//
// Get, Len and All are safe for concurrent use, by the handler and by readers such as an
// HTTP handler; a reader may see the changes of the event being applied. Set and Delete
// are for the projector's handler only: a change made elsewhere is not matched by a
// position, and is lost or saved with the wrong one.
type State struct {
	mu sync.RWMutex
	m  map[string][]byte

	// The undo log of the event being applied, nil outside one, and the first error.
	undo []undoEntry
	inTx bool
	err  error
}

type undoEntry struct {
	id  string
	old []byte
	had bool
}

func newState() *State { return &State{m: map[string][]byte{}} }

// Get returns a copy of the state of entity id, and whether it has one.
func (s *State) Get(id string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.m[id]
	if !ok {
		return nil, false
	}
	return slices.Clone(v), true
}

// Len returns the number of entities.
func (s *State) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.m)
}

// All returns the entities in id order, as of the call; the states are copies.
func (s *State) All() iter.Seq2[string, []byte] {
	s.mu.RLock()
	ids := slices.Sorted(maps.Keys(s.m))
	vals := make([][]byte, len(ids))
	for i, id := range ids {
		vals[i] = s.m[id]
	}
	s.mu.RUnlock()
	return func(yield func(string, []byte) bool) {
		for i, id := range ids {
			if !yield(id, slices.Clone(vals[i])) {
				return
			}
		}
	}
}

// Set stores a copy of v as the state of entity id. The id must be non-empty (the empty
// id is the savepoint's checkpoint), valid UTF-8, and free of NUL bytes; otherwise the
// handler's event fails with an error saying so (outside a handler, Set panics).
func (s *State) Set(id string, v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := checkEntityID(id); err != nil {
		if !s.inTx {
			panic(err.Error())
		}
		s.err = cmp.Or(s.err, err)
		return
	}
	s.record(id)
	s.m[id] = slices.Clone(v)
	if s.m[id] == nil {
		s.m[id] = []byte{}
	}
}

// Delete removes entity id.
func (s *State) Delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[id]; !ok {
		return
	}
	s.record(id)
	delete(s.m, id)
}

// record notes the old state of id in the undo log. The caller holds s.mu.
func (s *State) record(id string) {
	if s.inTx {
		old, had := s.m[id]
		s.undo = append(s.undo, undoEntry{id: id, old: old, had: had})
	}
}

func checkEntityID(id string) error {
	switch {
	case id == "":
		return errors.New("projector: State.Set with an empty entity id; the empty id is reserved for the savepoint's checkpoint")
	}
	if problem := statestore.EntityIDProblem(id); problem != "" {
		return fmt.Errorf("projector: State.Set with the entity id %q, %s", id, problem)
	}
	return nil
}

// begin starts an event's undo log.
func (s *State) begin() {
	s.mu.Lock()
	s.inTx, s.undo, s.err = true, s.undo[:0], nil
	s.mu.Unlock()
}

// end keeps the event's changes when err and the changes' own error are nil, and undoes
// them otherwise. It returns the error.
func (s *State) end(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err = cmp.Or(err, s.err)
	if err != nil {
		for i := len(s.undo) - 1; i >= 0; i-- {
			u := s.undo[i]
			if u.had {
				s.m[u.id] = u.old
			} else {
				delete(s.m, u.id)
			}
		}
	}
	clear(s.undo)
	s.inTx, s.undo, s.err = false, s.undo[:0], nil
	return err
}

// replace sets the whole state; nil empties it.
func (s *State) replace(m map[string][]byte) {
	if m == nil {
		m = map[string][]byte{}
	}
	s.mu.Lock()
	s.m = m
	s.mu.Unlock()
}

// entities returns the state as savepoint entities, sorted by id. The states are shared:
// the State never changes a stored slice, it replaces it.
func (s *State) entities() []statestore.Entity {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]statestore.Entity, 0, len(s.m))
	for _, id := range slices.Sorted(maps.Keys(s.m)) {
		out = append(out, statestore.Entity{ID: id, State: s.m[id]})
	}
	return out
}
