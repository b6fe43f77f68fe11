package operator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgschema"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/retry"
)

// Defaults for [Config].
const (
	BatchSizeDefault       = 100
	ControlIntervalDefault = time.Second
)

// Sentinel errors.
var (
	// ErrUnknown is returned for an operator name the runner does not have.
	ErrUnknown = errors.New("operator: no such operator")
	// ErrNotHalted is returned by Skip for an operator that is not halted.
	ErrNotHalted = errors.New("operator: not halted")
	// ErrForeignLedger is wrapped by the halt error of an operator whose stored checkpoint
	// counts the events of another ledger than the runner's: one recorded for another
	// system, database or slot, one past the head of a ledger that is not shared (see
	// Config.SharedLedger), or one whose recorded event has another LSN in this ledger (the
	// ledger was moved aside for a resync, deleted, or is a memory ledger that restarted).
	// [Reset] is the way out.
	ErrForeignLedger = errors.New("operator: the checkpoint belongs to another ledger")
)

// Ledger is what operators read.
type Ledger interface {
	Read(ctx context.Context, after event.Position, limit int) ([]event.Event, error)
	ReadKeys(ctx context.Context, keys []string, after event.Position, limit int) ([]event.Event, error)
	Wait(ctx context.Context, after event.Position) error
	State() ledger.State
}

// Config configures a [Runner].
type Config struct {
	// DB is the followed database, where effects and checkpoints are committed. Required.
	DB *pgxpool.Pool
	// Instance names the walflow instance whose checkpoints the runner keeps: the engine
	// sets it to its replication slot's name, which is unique in the cluster. Runners of
	// different instances keep separate rows in walflow.operators, so any number of them
	// share a database, even with operators of the same names. Default "".
	Instance string
	// Ledger is read by every operator. Required for Run.
	Ledger Ledger
	// Operators to run. Names must be unique.
	Operators []Operator
	// BatchSize is the most events applied in one transaction. Default 100.
	BatchSize int
	// BatchDelay is how long an operator waits for more events to fill a batch once it has
	// some. Default 0: it applies what is there.
	BatchDelay time.Duration
	// Retry is the policy for a failing event. The zero value is the default policy:
	// 500ms, ×2, at most 10s, 5 retries, then the operator halts.
	Retry retry.Policy
	// Reporter receives retries and halts. Default: a [retry.LogReporter] on Logger.
	Reporter retry.Reporter
	// SleepFunc waits between retries. Default: [retry.Sleep], a timer.
	SleepFunc retry.SleepFunc
	// ControlInterval is how often Run looks for operators restarted or skipped from another
	// process (the CLI). Default 1s.
	ControlInterval time.Duration
	// Logger receives the runner's logs. Default: warnings and errors as text on stderr.
	Logger *slog.Logger
	// SharedLedger says that Ledger is one view of a ledger other processes read and
	// commit checkpoints of too, a view that may trail theirs: the shared stream of a
	// walflow cluster (ledger/jetstream), for which the engine sets it. A checkpoint of
	// this ledger past the view's head then means this process lags, not that the ledger
	// was replaced: Run leaves the operator stopped (not halted) and starts it once the
	// view reaches the checkpoint, logging every [ledger.LagLogEvery] that it waits. Without it,
	// Run waits at most [ledger.CatchUpWait] for the head, then halts the operator with
	// [ErrForeignLedger]. A checkpoint that names another ledger halts it either way.
	// Default false.
	SharedLedger bool
}

// Runner runs operators. Create it with [New], run it with [Runner.Run].
type Runner struct {
	cfg   Config
	log   *slog.Logger
	ops   []*opState
	byKey map[string]*opState

	control chan struct{} // pokes Run's control loop after a Restart or Skip
	changed chan struct{} // closed and replaced when a checkpoint moves
	chMu    sync.Mutex
	loaded  atomic.Bool // Run has read the checkpoints
}

// opState is one operator's live state.
type opState struct {
	spec
	keys    []string
	through atomic.Uint64 // every listened event up to here is committed
	running atomic.Bool
	halted  atomic.Bool
	// haltedAt is when the halt was recorded (UnixNano): only a checkpoint read that began
	// later can show the operator restarted.
	haltedAt atomic.Int64
	// markPos and markLSN are the position and LSN of the last event the operator read: an
	// event of the runner's ledger, saved with each checkpoint so that a later start can
	// tell whether the checkpoint counts the events of the ledger it reads.
	markPos atomic.Uint64
	markLSN atomic.Uint64
	// parked is what the runner knows of a parking operator's parked events.
	parked atomic.Pointer[parkedState]
}

// New validates the operators and returns a Runner. It refuses duplicate names and an
// operator that would feed itself. It starts nothing.
func New(cfg Config) (*Runner, error) {
	if cfg.DB == nil {
		return nil, errors.New("operator: Config.DB is nil; pass a pgxpool.Pool on the followed database")
	}
	cfg.BatchSize = cmp.Or(cfg.BatchSize, BatchSizeDefault)
	cfg.ControlInterval = cmp.Or(cfg.ControlInterval, ControlIntervalDefault)
	cfg.Retry = cfg.Retry.WithDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	log := cfg.Logger.With(slog.String("component", "operator"))
	if cfg.Reporter == nil {
		cfg.Reporter = retry.LogReporter{Logger: cfg.Logger}
	}
	if cfg.SleepFunc == nil {
		cfg.SleepFunc = retry.Sleep
	}
	r := &Runner{cfg: cfg, log: log, byKey: map[string]*opState{}, control: make(chan struct{}, 1), changed: make(chan struct{})}
	var specs []spec
	for _, o := range cfg.Operators {
		s, err := o.spec()
		if err != nil {
			return nil, err
		}
		if _, dup := r.byKey[s.name]; dup {
			return nil, fmt.Errorf("operator: two operators are named %q; names key checkpoints and must be unique", s.name)
		}
		st := &opState{spec: s}
		for _, e := range s.entities {
			st.keys = append(st.keys, event.TableName(e))
		}
		r.byKey[s.name] = st
		r.ops = append(r.ops, st)
		specs = append(specs, s)
	}
	if err := checkGraph(specs); err != nil {
		return nil, err
	}
	return r, nil
}

// Migrate creates walflow's operator table in the followed database when missing, and
// upgrades one made by an earlier walflow in place: its rows, keyed by operator name only,
// get the instance "" and are adopted by the first runner whose instance has an operator of
// that name (see [Config].Instance), so no checkpoint is lost.
func Migrate(ctx context.Context, db *pgxpool.Pool) error {
	err := pgschema.Create(ctx, db, `CREATE SCHEMA IF NOT EXISTS walflow;
		CREATE TABLE IF NOT EXISTS walflow.operators (
			instance text NOT NULL DEFAULT '',
			name text NOT NULL,
			position bigint NOT NULL DEFAULT 0,
			halted boolean NOT NULL DEFAULT false,
			error text,
			failed_position bigint,
			updated_at timestamptz NOT NULL DEFAULT now(),
			ledger text,
			mark_position bigint,
			mark_lsn bigint,
			PRIMARY KEY (instance, name));
		DO $$
		DECLARE pk name;
		BEGIN
			IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'walflow.operators'::regclass AND attname = 'instance' AND NOT attisdropped) THEN
				ALTER TABLE walflow.operators ADD COLUMN instance text NOT NULL DEFAULT '',
					ADD COLUMN IF NOT EXISTS ledger text, ADD COLUMN IF NOT EXISTS mark_position bigint, ADD COLUMN IF NOT EXISTS mark_lsn bigint;
				SELECT conname INTO pk FROM pg_constraint WHERE conrelid = 'walflow.operators'::regclass AND contype = 'p';
				IF pk IS NOT NULL THEN
					EXECUTE format('ALTER TABLE walflow.operators DROP CONSTRAINT %I', pk);
				END IF;
				ALTER TABLE walflow.operators ADD PRIMARY KEY (instance, name);
			END IF;
		END $$;
		`+parkedTableSQL)
	if err != nil {
		return fmt.Errorf("operator: create the walflow.operators table: %w%s", err, pgschema.PrivilegeHint(err))
	}
	return nil
}

// row is an operator's stored checkpoint.
type row struct {
	position event.Position
	halted   bool
	err      string
	ledger   string         // the ledger whose events position counts; "" when unknown
	markPos  event.Position // an event of that ledger, 0 when none is recorded
	markLSN  event.LSN      // its LSN
}

// load reads the operators' checkpoints, registering the operators first when register
// (and adopting the rows an earlier walflow kept without an instance).
func (r *Runner) load(ctx context.Context, register bool) (map[string]row, error) {
	names := make([]string, len(r.ops))
	for i, o := range r.ops {
		names[i] = o.name
	}
	inst := r.cfg.Instance
	if register {
		if inst != "" {
			rows, err := r.cfg.DB.Query(ctx, `UPDATE walflow.operators o SET instance = $1, updated_at = now()
				WHERE o.instance = '' AND o.name = ANY($2)
				AND NOT EXISTS (SELECT 1 FROM walflow.operators m WHERE m.instance = $1 AND m.name = o.name)
				RETURNING o.name, o.position`, inst, names)
			if err != nil {
				return nil, fmt.Errorf("operator: adopt the checkpoints of an earlier walflow: %w", err)
			}
			adopted, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
				var name string
				var pos int64
				err := r.Scan(&name, &pos)
				return fmt.Sprintf("%s@%d", name, pos), err
			})
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == pgerrcode.UniqueViolation {
				// Another process of this instance registered the name meanwhile: its row
				// is the instance's, and the old one stays for whoever has that name.
				err, adopted = nil, nil
			}
			if err != nil {
				return nil, fmt.Errorf("operator: adopt the checkpoints of an earlier walflow: %w", err)
			}
			if len(adopted) > 0 {
				r.log.InfoContext(ctx, "adopted operator checkpoints kept before walflow keyed them by instance",
					slog.String("instance", inst), slog.Any("checkpoints", adopted))
			}
		}
		if _, err := r.cfg.DB.Exec(ctx, `INSERT INTO walflow.operators (instance, name) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING`, inst, names); err != nil {
			return nil, fmt.Errorf("operator: register operators: %w", err)
		}
	}
	rows, err := r.cfg.DB.Query(ctx, `SELECT name, position, halted, coalesce(error, ''), coalesce(ledger, ''), coalesce(mark_position, 0), coalesce(mark_lsn, 0)
		FROM walflow.operators WHERE instance = $1 AND name = ANY($2)`, inst, names)
	if err != nil {
		return nil, fmt.Errorf("operator: load checkpoints: %w", err)
	}
	defer rows.Close()
	out := map[string]row{}
	for rows.Next() {
		var name string
		var pos, markPos, markLSN int64
		var rw row
		if err := rows.Scan(&name, &pos, &rw.halted, &rw.err, &rw.ledger, &markPos, &markLSN); err != nil {
			return nil, fmt.Errorf("operator: load checkpoints: %w", err)
		}
		rw.position, rw.markPos, rw.markLSN = event.Position(pos), event.Position(markPos), event.LSN(markLSN)
		out[name] = rw
	}
	return out, rows.Err()
}

// LedgerKey names the ledger a checkpoint counts the events of, by what the ledger follows:
// the PostgreSQL system, database and slot. It is "" while the ledger has not recorded
// what it follows. (Projectors name their ledger the same way.)
func LedgerKey(o ledger.Origin) string {
	if o.IsZero() {
		return ""
	}
	// Not the timeline: a promoted standby continues the same history.
	return o.SystemID + "/" + o.Database + "/" + o.Slot
}

// errLagging is checkLedger's answer for a checkpoint of a shared ledger (see
// Config.SharedLedger) past this process's view of it: the view lags.
var errLagging = errors.New("operator: this process's view of the shared ledger trails the checkpoint")

// checkLedger returns an error wrapping [ErrForeignLedger] when rw cannot count the events
// of the runner's ledger, nil when it can (or cannot be told), and errLagging when the
// ledger is shared and this process's view of it has not reached rw yet. Only a failure to
// read the ledger is returned as err.
func (r *Runner) checkLedger(ctx context.Context, o *opState, rw row) (foreign error, err error) {
	pos := max(rw.position, rw.markPos)
	if pos > r.cfg.Ledger.State().Head && !r.cfg.SharedLedger {
		// A ledger read by several processes shows each of them the events as far as it
		// has read them, which may be behind the process that committed the checkpoint:
		// give it a moment to catch up before calling the checkpoint foreign.
		if err := ledger.WaitHead(ctx, r.cfg.Ledger, pos); err != nil && ctx.Err() != nil {
			return nil, err
		}
	}
	st := r.cfg.Ledger.State()
	way := fmt.Sprintf("rebuild its rows and start it on this ledger with walflow operator reset %s (operator.Reset in Go)", o.name)
	if key := LedgerKey(st.Origin); key != "" && rw.ledger != "" && key != rw.ledger {
		return fmt.Errorf("operator %s: %w: its checkpoint (position %d) counts the events of ledger %s, and this walflow reads ledger %s; %s",
			o.name, ErrForeignLedger, rw.position, rw.ledger, key, way), nil
	}
	if pos > st.Head && r.cfg.SharedLedger {
		// Another process of the cluster committed it: this view lags, and the checkpoint
		// is never called foreign for that, however long it takes.
		return errLagging, nil
	}
	if rw.position > st.Head || rw.markPos > st.Head {
		return fmt.Errorf("operator %s: %w: its checkpoint (position %d) is past the ledger's head %d, so the ledger was replaced (moved aside for a resync, deleted, or a memory ledger restarted); %s",
			o.name, ErrForeignLedger, max(rw.position, rw.markPos), st.Head, way), nil
	}
	if rw.markPos == 0 || rw.markPos <= st.Tail {
		return nil, nil // nothing recorded, or removed by retention: the head check is all there is
	}
	evs, err := r.cfg.Ledger.Read(ctx, rw.markPos-1, 1)
	if errors.Is(err, ledger.ErrTruncated) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("operator %s: read the ledger at its checkpoint's event %d: %w", o.name, rw.markPos, err)
	}
	if len(evs) == 1 && evs[0].Position == rw.markPos && evs[0].LSN != rw.markLSN {
		return fmt.Errorf("operator %s: %w: the event at position %d has LSN %s in this ledger, but LSN %s in the ledger its checkpoint (position %d) counts, so the ledger was replaced (moved aside for a resync, or deleted); %s",
			o.name, ErrForeignLedger, rw.markPos, evs[0].LSN, rw.markLSN, rw.position, way), nil
	}
	return nil, nil
}

// haltForeign records that o halted because its checkpoint rw belongs to another ledger.
// The position stays as it is; the event it failed on is none (a skip cannot help). The
// halt is stored only while the row still holds the checkpoint rw that was checked: a
// reset (walflow operator reset) committed since then is kept, and haltForeign reports
// false, so that the next sync reads the reset checkpoint instead.
func (r *Runner) haltForeign(ctx context.Context, o *opState, rw row, cause error) bool {
	tag, err := r.cfg.DB.Exec(context.WithoutCancel(ctx), `UPDATE walflow.operators SET halted = true, error = $3, failed_position = NULL, updated_at = now()
		WHERE instance = $1 AND name = $2 AND position = $4 AND coalesce(mark_position, 0) = $5 AND coalesce(ledger, '') = $6`,
		r.cfg.Instance, o.name, cause.Error(), int64(rw.position), int64(rw.markPos), rw.ledger)
	switch {
	case err != nil:
		r.log.ErrorContext(ctx, "record that an operator halted", slog.String("operator", o.name), slog.Any("error", err))
	case tag.RowsAffected() == 0:
		return false // reset since rw was read
	}
	o.haltedAt.Store(time.Now().UnixNano())
	o.halted.Store(true)
	r.cfg.Reporter.Halted(ctx, o.consumer(), &event.Event{}, cause)
	return true
}

// Run runs every operator until ctx ends. Halted operators stay halted until restarted;
// their failure does not stop Run, which logs, as it starts, those halted before. It first
// prepares every SQL operator's statements, and returns an error naming the operator and
// the statement when one does not prepare. It returns nil when ctx ends.
func (r *Runner) Run(ctx context.Context) error {
	if r.cfg.Ledger == nil {
		return errors.New("operator: Config.Ledger is nil; Run needs the ledger to read")
	}
	if err := Migrate(ctx, r.cfg.DB); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	start := func(o *opState, from event.Position) {
		if !o.running.CompareAndSwap(false, true) {
			return
		}
		o.halted.Store(false)
		o.through.Store(uint64(from))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer o.running.Store(false)
			r.runOp(ctx, o, from)
		}()
	}
	lags := map[*opState]*lagWait{} // the operators waiting for a shared ledger's view
	sync := func() error {
		readStart := time.Now().UnixNano()
		rows, err := r.load(ctx, true)
		if err != nil {
			return err
		}
		for _, o := range r.ops {
			rw := rows[o.name]
			if !o.running.Load() {
				foreign, err := r.checkLedger(ctx, o, rw)
				if err != nil {
					return err
				}
				lagging := errors.Is(foreign, errLagging)
				if lagging && !rw.halted {
					r.waitLedger(ctx, o, rw, lags)
					continue
				}
				delete(lags, o)
				if lagging {
					foreign = nil // halted where it ran: shown as halted below
				}
				if foreign != nil {
					if (!rw.halted || rw.err != foreign.Error()) && !r.haltForeign(ctx, o, rw, foreign) {
						continue // reset meanwhile: the next sync starts it on the reset checkpoint
					}
					// Nothing of this ledger is applied: hold retention and process status.
					o.halted.Store(true)
					o.through.Store(0)
					continue
				}
			}
			if rw.halted {
				if !o.running.Load() {
					o.halted.Store(true)
					o.through.Store(uint64(rw.position))
				}
				continue
			}
			if o.halted.Load() && readStart <= o.haltedAt.Load() {
				continue // this read may predate the halt
			}
			if o.halted.Load() && rw.position > event.Position(o.through.Load()) {
				// Moved on while halted: someone skipped the event it failed on, from this
				// process or the CLI. Say which event, since its effect was not applied.
				r.logSkip(ctx, o, rw.position)
			}
			start(o, rw.position)
		}
		return nil
	}
	if err := r.check(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := r.keepParking(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	// Known before an operator runs, so that process status never counts a parked event.
	if err := r.refreshParked(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := sync(); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.loaded.Store(true)
	r.warnHalted(ctx)
	t := time.NewTicker(r.cfg.ControlInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.control:
		}
		if err := sync(); err != nil && ctx.Err() == nil {
			r.log.WarnContext(ctx, "read operator checkpoints", slog.Any("error", err))
		}
		r.retryRequested(ctx)
		_ = r.refreshParked(ctx) // a failure keeps what is known; the next round reads again
	}
}

// lagWait is how long an operator has waited for a shared ledger's view to reach its
// checkpoint, and when Run logs it next.
type lagWait struct {
	since, nextLog time.Time
}

// waitLedger keeps o stopped, neither halted nor running, while this process's view of the
// shared ledger trails its checkpoint rw: it shows the stored checkpoint (what the process
// that committed it applied), and logs every ledger.LagLogEvery that it waits. Run's next rounds
// start o once the view reaches rw.
func (r *Runner) waitLedger(ctx context.Context, o *opState, rw row, lags map[*opState]*lagWait) {
	o.halted.Store(false)
	o.through.Store(uint64(rw.position))
	now := time.Now()
	w := lags[o]
	if w == nil {
		w = &lagWait{since: now, nextLog: now.Add(ledger.LagLogEvery)}
		lags[o] = w
		return
	}
	if now.Before(w.nextLog) {
		return
	}
	w.nextLog = now.Add(ledger.LagLogEvery)
	r.log.WarnContext(ctx, "operator waits for this node's view of the shared ledger to reach its checkpoint; it starts when it does (if the ledger was replaced by a shorter one, reset it: walflow operator reset)",
		slog.String("operator", o.name), slog.Uint64("checkpoint", uint64(max(rw.position, rw.markPos))),
		slog.Uint64("head", uint64(r.cfg.Ledger.State().Head)), slog.Duration("waited", now.Sub(w.since).Round(time.Second)))
}

func (r *Runner) runOp(ctx context.Context, o *opState, pos event.Position) {
	led := r.cfg.Ledger
	for ctx.Err() == nil {
		head := led.State().Head
		raw, err := led.ReadKeys(ctx, o.keys, pos, r.cfg.BatchSize)
		if errors.Is(err, ledger.ErrTruncated) {
			var ok bool
			if pos, ok = r.truncated(ctx, o, pos); !ok {
				return
			}
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				r.log.ErrorContext(ctx, "operator cannot read the ledger; stopping it", slog.String("operator", o.name), slog.Any("error", err))
			}
			return
		}
		if len(raw) > 0 && len(raw) < r.cfg.BatchSize && r.cfg.BatchDelay > 0 {
			// Give the batch a moment to fill, then read it again in full.
			wctx, cancel := context.WithTimeout(ctx, r.cfg.BatchDelay)
			_ = led.Wait(wctx, head)
			cancel()
			if raw, err = led.ReadKeys(ctx, o.keys, pos, r.cfg.BatchSize); err != nil {
				continue
			}
		}
		if len(raw) == 0 {
			if head > pos {
				pos = head
				r.advance(o, pos)
			}
			if err := led.Wait(ctx, pos); err != nil {
				return
			}
			continue
		}
		last := &raw[len(raw)-1]
		o.markPos.Store(uint64(last.Position))
		o.markLSN.Store(uint64(last.LSN))
		evs := raw[:0:0]
		for _, e := range raw {
			if slices.Contains(o.types, e.Type) {
				evs = append(evs, e)
			}
		}
		through := raw[len(raw)-1].Position
		if len(raw) < r.cfg.BatchSize && head > through {
			through = head
		}
		next, ok := r.process(ctx, o, evs, through)
		if !ok {
			return
		}
		pos = next
		r.advance(o, pos)
	}
}

// truncated handles a checkpoint before the ledger's tail: the events after it that the
// retention removed cannot be applied. (Run's Checkpoint keeps the tail behind every
// running operator, so this is an operator that was not running while the ledger was
// truncated.) An operator that never committed an event starts at the tail, as it would
// have started at the beginning of a shorter ledger; one that did is halted at the tail,
// since it missed events, and says how to go on. It returns where to read from, and false
// when the operator must stop.
func (r *Runner) truncated(ctx context.Context, o *opState, pos event.Position) (event.Position, bool) {
	tail := r.cfg.Ledger.State().Tail
	if pos == 0 {
		r.log.WarnContext(ctx, "operator starts at the ledger's tail: the earlier events were removed by retention before it first ran; backfill it (walflow operator backfill) for the rows they changed",
			slog.String("operator", o.name), slog.Uint64("tail", uint64(tail)))
		return tail, true
	}
	err := fmt.Errorf("%w: the operator's checkpoint %d is before the ledger's tail %d, so events it had not applied were removed; backfill the operator (walflow operator backfill %s), then skip to the tail (walflow operator skip %s) to resume",
		ledger.ErrTruncated, pos, tail, o.name, o.name)
	// The halt records the tail as the failed position, so that a skip resumes after it.
	r.halt(ctx, o, &event.Event{Position: tail}, err)
	return pos, false
}

// Checkpoint saves, for every operator, the position it has reached, when that is past its
// stored checkpoint (an operator whose entities see no events moves on without writing its
// checkpoint), and returns the lowest stored checkpoint of the runner's operators, halted
// ones included: every listened event up to it is applied, and a restart resumes after it.
// Retention truncates the ledger only through it, so that no operator restarts before the
// ledger's tail. It returns 0 until Run has started every operator, and the ledger's head
// when the runner has no operator.
func (r *Runner) Checkpoint(ctx context.Context) (event.Position, error) {
	names := make([]string, len(r.ops))
	reached := make([]int64, len(r.ops))
	low := int64(-1)
	for i, o := range r.ops {
		names[i], reached[i] = o.name, int64(o.through.Load())
		if low < 0 || reached[i] < low {
			low = reached[i]
		}
	}
	switch {
	case len(r.ops) == 0 && r.cfg.Ledger != nil:
		return r.cfg.Ledger.State().Head, nil
	case low <= 0:
		// Some operator has not started (or has nothing applied): the answer is 0, and the
		// table may not even exist yet.
		return 0, nil
	}
	// An operator whose entities see no events has read no event to mark its checkpoint
	// with: the head's event marks it (any event of this ledger does).
	var markPos, markLSN int64
	if led := r.cfg.Ledger; led != nil {
		if st := led.State(); st.Head > st.Tail {
			if evs, err := led.Read(ctx, st.Head-1, 1); err == nil && len(evs) == 1 {
				markPos, markLSN = int64(evs[0].Position), int64(evs[0].LSN)
			}
		}
	}
	// Never over a halt (its position stays where it failed) nor backwards (a concurrent
	// batch may have committed further).
	_, err := r.cfg.DB.Exec(ctx, `UPDATE walflow.operators o SET position = v.position, ledger = coalesce(nullif($4, ''), o.ledger),
			mark_position = coalesce(nullif($5::bigint, 0), o.mark_position), mark_lsn = CASE WHEN $5::bigint = 0 THEN o.mark_lsn ELSE $6::bigint END, updated_at = now()
		FROM unnest($1::text[], $2::bigint[]) AS v(name, position)
		WHERE o.instance = $3 AND o.name = v.name AND o.position < v.position AND NOT o.halted`, names, reached, r.cfg.Instance, r.ledgerKey(), markPos, markLSN)
	if err != nil {
		return 0, fmt.Errorf("operator: save checkpoints: %w", err)
	}
	rows, err := r.load(ctx, false)
	if err != nil {
		return 0, err
	}
	through := event.Position(low)
	// Parked events are read again from the ledger when retried: keep them.
	var firstParked int64
	if err := r.cfg.DB.QueryRow(ctx, `SELECT coalesce(min(position), 0) FROM walflow.operator_parked WHERE instance = $1 AND operator = ANY($2)`,
		r.cfg.Instance, names).Scan(&firstParked); err != nil {
		return 0, fmt.Errorf("operator: read the parked events' positions: %w", err)
	}
	if firstParked > 0 {
		through = min(through, event.Position(firstParked-1))
	}
	for _, o := range r.ops {
		rw, ok := rows[o.name]
		if !ok {
			return 0, nil
		}
		// The position reached bounds it too: it is below the stored one only while a
		// start or a batch is publishing the stored one.
		through = min(through, rw.position)
	}
	return through, nil
}

// advance publishes an operator's new committed position.
func (r *Runner) advance(o *opState, pos event.Position) {
	o.through.Store(uint64(pos))
	r.notify()
}

// notify closes the Changed channel.
func (r *Runner) notify() {
	r.chMu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.chMu.Unlock()
}

// process applies evs and commits the checkpoint through. On a failing event it commits the
// events before it, retries it alone, and halts the operator when retries run out. It
// returns the new checkpoint and false when the operator must stop.
func (r *Runner) process(ctx context.Context, o *opState, evs []event.Event, through event.Position) (event.Position, bool) {
	i, err := r.apply(ctx, o, evs, through)
	if err == nil {
		return through, true
	}
	if errors.Is(err, errCheckpointMoved) {
		r.log.InfoContext(ctx, "operator checkpoint moved by another process of this instance; resuming from it", slog.String("operator", o.name))
		return r.checkpointOf(ctx, o)
	}
	done := event.Position(0)
	if i > 0 {
		if _, err := r.apply(ctx, o, evs[:i], evs[i-1].Position); err != nil {
			// The prefix failed on its own too: start over from the same place.
			return r.checkpointOf(ctx, o)
		}
		done = evs[i-1].Position
	}
	bad := &evs[i]
	var parks map[string]string // rows the bad event is parked for, with their errors
	loop := retry.Loop{
		Consumer: o.consumer(), Policy: r.cfg.Retry, Reporter: r.cfg.Reporter, SleepFunc: r.cfg.SleepFunc, Logger: r.log,
		HaltFunc: func(ctx context.Context, cause error) { r.recordHalt(ctx, o, bad, cause) },
	}
	if o.park {
		loop.ParkFunc = func(ctx context.Context, err error) bool {
			var re *rowError
			if !errors.As(err, &re) || parks[re.id] != "" {
				return false
			}
			// Park the event for the row it failed on; its other rows go on.
			if parks == nil {
				parks = map[string]string{}
			}
			parks[re.id] = err.Error()
			r.log.WarnContext(ctx, "operator parks an event for the derived row it failed on; the row's later events wait behind it (walflow operator parked, retry, discard)",
				slog.String("operator", o.name), slog.String("id", re.id), slog.Uint64("position", uint64(bad.Position)), slog.Any("error", err))
			return true
		}
		if errors.Is(err, errCheckpointMoved) {
			return r.checkpointOf(ctx, o)
		}
	}
	err = loop.Run(ctx, bad, err, func(ctx context.Context) error {
		if o.park {
			_, err := r.applyPark(ctx, o, evs[i:i+1], bad.Position, parks)
			return err
		}
		_, err := r.apply(ctx, o, evs[i:i+1], bad.Position)
		return err
	})
	if err != nil {
		return done, false
	}
	return bad.Position, true
}

func (r *Runner) checkpointOf(ctx context.Context, o *opState) (event.Position, bool) {
	var pos int64
	if err := r.cfg.DB.QueryRow(ctx, `SELECT position FROM walflow.operators WHERE instance = $1 AND name = $2`, r.cfg.Instance, o.name).Scan(&pos); err != nil {
		return 0, false
	}
	return event.Position(pos), ctx.Err() == nil
}

// apply runs evs in one transaction that also moves the checkpoint to through. On error it
// returns the index of the failing event (0 when the transaction itself failed).
func (r *Runner) apply(ctx context.Context, o *opState, evs []event.Event, through event.Position) (int, error) {
	if o.park {
		return r.applyPark(ctx, o, evs, through, nil)
	}
	if o.statements != nil {
		i, err, whole := r.applyTx(ctx, o, evs, through, true)
		if !whole {
			return i, err
		}
		// The batch failed before any statement ran (typically while preparing one, such as
		// a query on a missing table): run it statement by statement to name the event.
	}
	i, err, _ := r.applyTx(ctx, o, evs, through, false)
	return i, err
}

// applyTx runs evs and the checkpoint in one read-committed transaction (so each statement
// after the operator's lock sees everything committed before it). queued sends an SQL
// operator's batch in one round trip; whole reports a queued batch that failed as a whole.
func (r *Runner) applyTx(ctx context.Context, o *opState, evs []event.Event, through event.Position, queued bool) (i int, err error, whole bool) {
	tx, err := r.cfg.DB.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err), false
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if queued {
		if i, err, whole := r.applyQueued(ctx, o, tx, evs, through); err != nil {
			return i, err, whole
		}
	} else {
		if err := lockOperator(ctx, tx, o.name); err != nil {
			return 0, err, false
		}
		for i := range evs {
			if err := o.apply(ctx, tx, &evs[i]); err != nil {
				return i, err, false
			}
		}
		tag, err := tx.Exec(ctx, saveCheckpointSQL, r.checkpointArgs(o, evs, through)...)
		if err != nil {
			return 0, fmt.Errorf("save checkpoint: %w", err), false
		}
		if tag.RowsAffected() == 0 {
			return 0, errCheckpointMoved, false
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err), false
	}
	return 0, nil, false
}

// saveCheckpointSQL moves an operator's checkpoint ($3) and records the ledger it counts
// ($4, kept when unknown) and an event of that ledger ($5 position, $6 LSN; kept when 0).
// It moves it only from before the batch's first position ($7): a checkpoint already there
// means another runner of the instance (another node of a cluster, or a process that
// still ran when this one took over) applied the batch, and the update then changes no row,
// so the batch rolls back instead of applying its events twice.
const saveCheckpointSQL = `UPDATE walflow.operators SET position = $3, ledger = coalesce(nullif($4, ''), ledger),
	mark_position = coalesce(nullif($5, 0), mark_position), mark_lsn = CASE WHEN $5 = 0 THEN mark_lsn ELSE $6 END, updated_at = now()
	WHERE instance = $1 AND name = $2 AND position < $7`

// errCheckpointMoved is the error of a batch whose checkpoint another runner of the
// instance moved past the batch's start: its events are applied already.
var errCheckpointMoved = errors.New("operator: another process of this instance applied these events; resuming from its checkpoint")

// checkpointArgs are saveCheckpointSQL's arguments for o applying evs through through.
func (r *Runner) checkpointArgs(o *opState, evs []event.Event, through event.Position) []any {
	first := through
	if len(evs) > 0 {
		first = evs[0].Position
	}
	return []any{r.cfg.Instance, o.name, int64(through), r.ledgerKey(), int64(o.markPos.Load()), int64(o.markLSN.Load()), int64(first)}
}

// ledgerKey is [LedgerKey] of the runner's ledger.
func (r *Runner) ledgerKey() string {
	if r.cfg.Ledger == nil {
		return ""
	}
	return LedgerKey(r.cfg.Ledger.State().Origin)
}

// applyQueued sends an SQL operator's whole batch (the lock, every event's statements and
// the checkpoint update) in one round trip, then reads the results in order, so the first
// failure still names its event.
func (r *Runner) applyQueued(ctx context.Context, o *opState, tx pgx.Tx, evs []event.Event, through event.Position) (int, error, bool) {
	b := &pgx.Batch{}
	b.Queue(lockSQL, o.name)
	var q []stmt
	owner := make([]int, 0, len(evs))
	for i := range evs {
		n := len(q)
		var err error
		if q, err = o.statements(&evs[i], q); err != nil {
			return i, err, false // nothing was sent
		}
		for range len(q) - n {
			owner = append(owner, i)
		}
	}
	for _, s := range q {
		b.Queue(s.sql, s.arg)
	}
	b.Queue(saveCheckpointSQL, r.checkpointArgs(o, evs, through)...)
	res := tx.SendBatch(ctx, b)
	defer res.Close()
	if _, err := res.Exec(); err != nil {
		return 0, fmt.Errorf("lock operator %s: %w", o.name, err), true
	}
	for j, s := range q {
		if _, err := res.Exec(); err != nil {
			return owner[j], s.err(err), false
		}
	}
	tag, err := res.Exec()
	if err != nil {
		return 0, fmt.Errorf("save checkpoint: %w", err), false
	}
	if tag.RowsAffected() == 0 {
		return 0, errCheckpointMoved, false
	}
	if err := res.Close(); err != nil {
		return 0, fmt.Errorf("finish batch: %w", err), false
	}
	return 0, nil, false
}

// halt records that o halted on e with cause, then reports it.
func (r *Runner) halt(ctx context.Context, o *opState, e *event.Event, cause error) {
	r.recordHalt(ctx, o, e, cause)
	r.cfg.Reporter.Halted(ctx, o.consumer(), e, cause)
}

// recordHalt records that o halted on e with cause.
func (r *Runner) recordHalt(ctx context.Context, o *opState, e *event.Event, cause error) {
	// Record the halt before showing it: the control loop must never see the operator
	// stopped while the database still says it runs, or it would restart it at once.
	_, err := r.cfg.DB.Exec(context.WithoutCancel(ctx), `UPDATE walflow.operators SET halted = true, error = $3, failed_position = $4, updated_at = now()
		WHERE instance = $1 AND name = $2`, r.cfg.Instance, o.name, cause.Error(), int64(e.Position))
	if err != nil {
		r.log.ErrorContext(ctx, "record that an operator halted", slog.String("operator", o.name), slog.Any("error", err))
	}
	o.haltedAt.Store(time.Now().UnixNano())
	o.halted.Store(true)
}

// consumer names o for the reporter.
func (o *opState) consumer() retry.Consumer {
	return retry.Consumer{Kind: retry.Operator, Name: o.name}
}

// CommittedThrough returns the position up to which every operator listening to entity has
// committed, or the ledger's head when none listens. Process status uses it.
func (r *Runner) CommittedThrough(entity string) event.Position {
	var through event.Position
	found := false
	for _, o := range r.ops {
		if slices.Contains(o.keys, entity) {
			p := event.Position(o.through.Load())
			if !found || p < through {
				through = p
			}
			found = true
		}
	}
	if !found && r.cfg.Ledger != nil {
		return r.cfg.Ledger.State().Head
	}
	return through
}

// Changed returns a channel closed the next time an operator's checkpoint moves.
func (r *Runner) Changed() <-chan struct{} {
	r.chMu.Lock()
	defer r.chMu.Unlock()
	return r.changed
}

// Info describes a configured operator.
type Info struct {
	Name     string   `json:"name"`
	Entities []string `json:"entities"`
	Targets  []string `json:"targets,omitempty"`
	// Position is the ledger position every listened event up to which is committed.
	Position event.Position `json:"position"`
	// Halted reports whether the operator is halted in this process.
	Halted bool `json:"halted"`
	// ParkedEvents and ParkedIDs count the parked events of a parking operator and the
	// derived rows they wait for, as last read (the runner reads them after each change it
	// makes and every ControlInterval).
	ParkedEvents int `json:"parked_events"`
	ParkedIDs    int `json:"parked_ids"`
}

// Operators describes the runner's operators, in configuration order.
func (r *Runner) Operators() []Info {
	out := make([]Info, len(r.ops))
	for i, o := range r.ops {
		out[i] = Info{Name: o.name, Entities: slices.Clone(o.entities), Targets: slices.Clone(o.targets),
			Position: event.Position(o.through.Load()), Halted: o.halted.Load()}
		p := o.parkedOf()
		out[i].ParkedEvents, out[i].ParkedIDs = p.events, p.ids
	}
	return out
}

// Loaded reports whether Run has read the operators' checkpoints: before, the positions
// Operators reports are 0, not the operators' own.
func (r *Runner) Loaded() bool { return r.loaded.Load() }

// lockOperator serializes the transactions that write an operator's effects: its live
// batches, its backfill batches, and a second walflow process running the same operator.
// Each statement after the lock sees everything the previous holder committed, so a
// recomputation can never overwrite a newer one with an older snapshot.
func lockOperator(ctx context.Context, tx pgx.Tx, name string) error {
	if _, err := tx.Exec(ctx, lockSQL, name); err != nil {
		return fmt.Errorf("lock operator %s: %w", name, err)
	}
	return nil
}

const lockSQL = `SELECT pg_advisory_xact_lock(hashtextextended('walflow.operator:' || $1, 0))`

// Follow keeps what [Runner.Operators], [Runner.CommittedThrough] and [Runner.Checkpoint]
// report in step with the checkpoints another process commits while it runs the operators
// (a walflow cluster runs them on one node at a time): it reads them every
// Config.ControlInterval until ctx ends, and returns nil then. A failed read keeps the
// positions last read and is retried at the next round. Follow and [Runner.Run] must not
// run at the same time.
func (r *Runner) Follow(ctx context.Context) error {
	t := time.NewTicker(r.cfg.ControlInterval)
	defer t.Stop()
	for {
		if rows, err := r.load(ctx, false); err == nil {
			for _, o := range r.ops {
				if rw, ok := rows[o.name]; ok && !o.running.Load() {
					o.halted.Store(rw.halted)
					o.through.Store(uint64(rw.position))
				}
			}
			_ = r.refreshParked(ctx) // a failure keeps what is known; the next round reads again
			r.loaded.Store(true)
			r.notify()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
