package walflow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexdisk "github.com/walflow/walflow/index/disk"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/ledger/pebble"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/processstatus"
	psmemory "github.com/walflow/walflow/processstatus/memory"
	"github.com/walflow/walflow/processstatus/pg"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/pubsub"
	"github.com/walflow/walflow/realtime"
	"github.com/walflow/walflow/snapshot"
	"github.com/walflow/walflow/source/pgwal"
)

// ErrStopping is the cause of the context cancellation Run uses to stop its parts.
var ErrStopping = errors.New("walflow: stopping")

// Engine follows a database into a ledger and serves subscriptions. Create it with [Open],
// start it with [Engine.Run], release it with [Engine.Close].
type Engine struct {
	cfg    Config
	log    *slog.Logger
	router *channel.Router
	led    ledger.Ledger
	src    *pgwal.Source

	pool      *pgxpool.Pool // nil without operators
	ops       *operator.Runner
	opMetrics *operatorMetrics
	tracker   *processstatus.Tracker
	psStore   *pg.Store         // nil unless process status is kept in PostgreSQL
	gw        *realtime.Gateway // nil unless Config.Realtime is set
	idx       *index.Runner     // nil without Config.Indexers
	projs     *projector.Runner // nil without Config.Projectors
	idxStore  *indexdisk.Store  // the indexes' disk store, closed by Close
	snaps     snapshots         // Engine.Snapshot's reader, opened by its first call
	clu       *clusterNode      // nil without Config.Cluster

	running    atomic.Bool
	slotReader *slotReader // reads the slot for slot, over its kept connection
	slot       atomic.Pointer[slotSample]
	alerts     alertState
	console    *consoleHistory

	retentionEvery  time.Duration // how often Run applies Config.Retention; tests shorten it
	retentionRounds atomic.Uint64 // rounds of retention done, for tests

	closeOnce sync.Once
	closeErr  error
}

// Open validates cfg and opens the ledger. It does not connect to PostgreSQL and starts no
// goroutine: Run does.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	router, err := channel.NewRouter(cfg.Tables)
	if err != nil {
		return nil, fmt.Errorf("walflow: tables: %w", err)
	}
	log := cfg.Logger
	router = router.WithLogger(log.With(slog.String("component", "channel")))
	srcCfg := pgwal.Config{
		ConnString: cfg.DatabaseURL, Slot: cfg.Slot, TemporarySlot: cfg.TemporarySlot, SlotFailover: cfg.SlotFailover,
		Publication: cfg.Publication, Tables: cfg.tableNames(),
		StatusInterval: cfg.StatusInterval, SyncDelay: cfg.SyncDelay, Logger: log,
	}
	if _, err := pgwal.New(srcCfg); err != nil {
		return nil, err // checked before connecting anywhere
	}
	var led ledger.Ledger
	var clu *clusterNode
	switch {
	case cfg.Cluster != nil:
		if clu, err = openCluster(ctx, cfg, router); err != nil {
			return nil, err
		}
		led, srcCfg.Standby = clu.led, clu.standby()
	case cfg.MemoryLedger:
		led = memory.New(&memory.Options{Indexer: router.Channels})
	case cfg.LedgerBackend == "pebble":
		d, err := pebble.Open(ctx, cfg.LedgerDir, &pebble.Options{Indexer: router.Channels, Logger: log})
		if err != nil {
			return nil, err
		}
		led = d
	default:
		d, err := disk.Open(ctx, cfg.LedgerDir, &disk.Options{Indexer: router.Channels, Logger: log})
		if err != nil {
			return nil, err
		}
		led = d
	}
	src, err := pgwal.New(srcCfg)
	if err != nil {
		_ = led.Close()
		if clu != nil {
			clu.close()
		}
		return nil, err
	}
	e := &Engine{cfg: cfg, log: log.With(slog.String("component", "engine")), router: router, led: led, src: src,
		slotReader: &slotReader{dsn: cfg.DatabaseURL, slot: cfg.Slot}, clu: clu, retentionEvery: retentionIntervalDefault}
	e.alerts.init(log)
	e.console = newConsoleHistory(cfg.ConsoleInterval)
	if len(cfg.Operators) > 0 || (cfg.ProcessStatus == "postgres" && cfg.ProcessStatusStore == nil) ||
		(len(cfg.Projectors) > 0 && cfg.ProjectorStore == nil) || hasTxProjector(cfg.Projectors) ||
		(cfg.Cluster != nil && len(cfg.Indexers) > 0) {
		pool, err := pgxpool.New(context.Background(), cfg.DatabaseURL)
		if err != nil {
			_ = e.Close()
			return nil, fmt.Errorf("walflow: database pool: %w", err)
		}
		e.pool = pool
	}
	e.opMetrics = newOperatorMetrics(cfg.ErrorReporter, cfg.Logger)
	if len(cfg.Operators) > 0 {
		if err := e.openOperators(); err != nil {
			_ = e.Close()
			return nil, err
		}
	}
	if err := e.openProcessStatus(); err != nil {
		_ = e.Close()
		return nil, err
	}
	if err := e.openRealtime(); err != nil {
		_ = e.Close()
		return nil, err
	}
	if err := e.openIndexes(ctx); err != nil {
		_ = e.Close()
		return nil, err
	}
	if err := e.openProjectors(); err != nil {
		_ = e.Close()
		return nil, err
	}
	return e, nil
}

// openProcessStatus builds the tracker that answers Processed and ProcessedLSN.
func (e *Engine) openProcessStatus() error {
	store := e.cfg.ProcessStatusStore
	if store == nil {
		switch e.cfg.ProcessStatus {
		case "memory":
			store = psmemory.New()
		case "none":
			store = processstatus.NoStore{}
		default:
			inst := e.cfg.Slot
			if e.clu != nil {
				// Each node scans the stream for itself and keeps its own rows.
				inst += "@" + e.clu.cfg.NodeName
			}
			ps, err := pg.New(pg.Config{DB: e.pool, Instance: inst, Logger: e.cfg.Logger})
			if err != nil {
				return err
			}
			e.psStore, store = ps, ps
		}
	}
	var w processstatus.Watermark = headWatermark{e.led}
	var changed func() <-chan struct{}
	if e.ops != nil {
		w, changed = e.ops, e.ops.Changed
	}
	t, err := processstatus.New(processstatus.Config{
		Ledger: e.led, Watermark: w, ChangedFunc: changed, Store: store, Logger: e.cfg.Logger,
		TimestampColumnFunc: func(entity string) string { return e.router.Table(entity).TimestampColumn },
	})
	if err != nil {
		return err
	}
	e.tracker = t
	return nil
}

// headWatermark is the watermark without operators: an event is processed once it is in
// the ledger, where subscribers read it.
type headWatermark struct{ led ledger.Ledger }

func (h headWatermark) CommittedThrough(string) event.Position { return h.led.State().Head }

// Processed reports whether the entity's change stamped micros (its timestamp column, in
// microseconds since the Unix epoch) is in the ledger and every operator listening to the
// entity has committed past it.
func (e *Engine) Processed(entity string, micros int64) bool {
	return e.tracker.Processed(entity, micros)
}

// ProcessedLSN reports whether every transaction committed at or before lsn is processed.
// Stronger than Processed: a write's LSN is a total order, application clocks are not.
func (e *Engine) ProcessedLSN(lsn event.LSN) bool { return e.tracker.ProcessedLSN(lsn) }

// ProcessStatus returns the process-status tracker (Wait, WaitLSN, watermarks).
func (e *Engine) ProcessStatus() *processstatus.Tracker { return e.tracker }

// Middleware answers 425 Too Early to requests whose X-Walflow-Entity-Timestamp or
// X-Walflow-LSN header names a write not processed yet; see processstatus.Middleware.
func (e *Engine) Middleware(opts *processstatus.MiddlewareOpts) func(http.Handler) http.Handler {
	return processstatus.Middleware(e.tracker, opts)
}

// openOperators builds the operator runner and the pool it writes through. The pool
// connects lazily, so Open still does not touch the database.
func (e *Engine) openOperators() error {
	pool := e.pool
	r, err := operator.New(operator.Config{
		DB: pool, Instance: e.cfg.Slot, Ledger: e.led, Operators: e.cfg.Operators,
		BatchSize: e.cfg.OperatorBatchSize, BatchDelay: e.cfg.OperatorBatchDelay, Retry: e.cfg.OperatorRetry,
		Reporter: e.opMetrics, Logger: e.cfg.Logger, SharedLedger: e.cfg.Cluster != nil,
	})
	if err != nil {
		return err
	}
	if len(e.cfg.Tables) > 0 {
		for _, o := range r.Operators() {
			for _, ent := range o.Entities {
				if !channel.HasTable(e.cfg.Tables, ent) {
					return fmt.Errorf("walflow: operator %s listens to %s, which is not among the followed tables; add %s to tables", o.Name, ent, ent)
				}
			}
		}
	}
	e.ops = r
	return nil
}

// Operators returns the operator runner, or nil when no operator is configured.
func (e *Engine) Operators() *operator.Runner { return e.ops }

// Run follows the database until ctx ends, serving HTTP on Config.HTTPAddr when set. It
// starts the WAL source, the slot monitor, retention and the HTTP server, then, once the
// database answers, process status and the consumers (projectors, indexes, operators). It
// returns nil after a clean stop, or the error that stopped it (see pgwal's Err variables
// for the conditions that need a person).
func (e *Engine) Run(ctx context.Context) error {
	if !e.running.CompareAndSwap(false, true) {
		return errors.New("walflow: Run called twice; one Engine runs once")
	}
	r := newRunGroup(ctx)
	defer r.stop()
	if e.clu != nil {
		r.g.Go(func() error { return e.clu.reg.Run(r.gctx, e.nodeInfo) })
	}
	r.goStopping(e.runSource)
	r.goLoop(e.pollSlot)
	r.goLoop(e.retain)
	r.goLoop(e.sampleConsole)
	if err := e.serveHTTP(r); err != nil {
		return r.abort(err)
	}
	if e.pool != nil && !waitDatabase(r.ctx, e.pool, e.log) {
		return r.abort(nil)
	}
	if err := e.startProcessStatus(r); err != nil {
		return err
	}
	e.startConsumers(r)
	return r.g.Wait()
}

// runGroup is one Run's components: they run in g and stop together.
type runGroup struct {
	// ctx is Run's context; stop cancels it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	g      *errgroup.Group
	// gctx ends when ctx does or a component of g fails: the components run with it.
	gctx context.Context
}

func newRunGroup(ctx context.Context) *runGroup {
	ctx, cancel := context.WithCancelCause(ctx)
	g, gctx := errgroup.WithContext(ctx)
	return &runGroup{ctx: ctx, cancel: cancel, g: g, gctx: gctx}
}

// stop tells every component to stop.
func (r *runGroup) stop() { r.cancel(ErrStopping) }

// abort stops every component and waits for them. It returns err, or with a nil err what
// the components returned.
func (r *runGroup) abort(err error) error {
	r.stop()
	werr := r.g.Wait()
	if err != nil {
		return err
	}
	return werr
}

// goLoop runs a component that ends only with its context.
func (r *runGroup) goLoop(run func(context.Context)) {
	r.g.Go(func() error { run(r.gctx); return nil })
}

// goStopping runs a component whose end, with or without an error, stops the engine.
func (r *runGroup) goStopping(run func(context.Context) error) {
	r.g.Go(func() error {
		err := run(r.gctx)
		r.stop()
		return err
	})
}

// goConsumer runs a consumer of the ledger; one that fails stops the engine, and prefix
// ("" for none) names it in the error.
func (r *runGroup) goConsumer(run func(context.Context) error, prefix string) {
	r.g.Go(func() error {
		err := run(r.gctx)
		if err == nil {
			return nil
		}
		r.stop()
		if prefix == "" {
			return err
		}
		return fmt.Errorf("%s: %w", prefix, err)
	})
}

// serveHTTP serves Handler on Config.HTTPAddr until the engine stops: then it ends the
// realtime streams and shuts the server down. It fails when the address cannot be listened
// on; without an address it does nothing.
func (e *Engine) serveHTTP(r *runGroup) error {
	if e.cfg.HTTPAddr == "" {
		return nil
	}
	ctx := r.ctx
	ln, err := net.Listen("tcp", e.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("walflow: listen on %s for metrics and status: %w; choose a free host:port for the HTTP address (http.addr in walflow.yaml)", e.cfg.HTTPAddr, err)
	}
	// No WriteTimeout: it would cut every realtime stream, which bounds each of its
	// writes itself.
	srv := &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 10 * time.Second}
	if e.clu != nil {
		addr := advertisedAddr(ln.Addr())
		e.clu.httpAddr.Store(&addr)
	}
	r.g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("walflow: serve HTTP: %w", err)
		}
		return nil
	})
	r.g.Go(func() error {
		<-r.gctx.Done()
		// Streams never go idle, so Shutdown would wait for them: end them first, and
		// cut the connections of those that do not end in time (Close waits for their
		// handlers before closing the ledger).
		if !e.shutdownRealtime(ctx) {
			e.log.WarnContext(ctx, "realtime streams did not end within the shutdown grace; closing their connections",
				slog.Int("connections", e.gw.Stats().Connections))
			return srv.Close()
		}
		sctx, c := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer c()
		if err := srv.Shutdown(sctx); err != nil {
			// A request still running is no reason to fail the stop: cut it.
			e.log.WarnContext(ctx, "HTTP requests did not end within 5s of the stop; closing their connections", slog.Any("error", err))
			return srv.Close()
		}
		return nil
	})
	if e.gw != nil {
		e.log.InfoContext(ctx, "serving metrics and realtime", slog.String("addr", ln.Addr().String()), slog.String("realtime_path", e.cfg.Realtime.Path))
	} else {
		e.log.InfoContext(ctx, "serving metrics", slog.String("addr", ln.Addr().String()))
	}
	return nil
}

// startProcessStatus migrates the process-status store kept in PostgreSQL and starts it and
// the tracker. When the migration fails, it stops the engine and returns Run's error.
func (e *Engine) startProcessStatus(r *runGroup) error {
	if e.psStore != nil {
		if err := e.psStore.Migrate(r.ctx); err != nil {
			stopped := r.ctx.Err() != nil
			werr := r.abort(nil)
			if stopped {
				// Stopped while starting: by the caller (werr is nil), or by the source
				// failing, whose error is the one to report, not the interrupted migration's.
				return werr
			}
			return fmt.Errorf("walflow: process status: %w", err)
		}
		ctx := r.ctx
		r.g.Go(func() error {
			// Process status is recomputed from the ledger after a restart, so a failed last
			// flush costs a rescan, not correctness: report it without failing Run.
			if err := e.psStore.Run(r.gctx); err != nil {
				e.log.WarnContext(ctx, "process status not saved at stop; it is rebuilt from the ledger at the next start", slog.Any("error", err))
			}
			return nil
		})
	}
	r.g.Go(func() error { return e.tracker.Run(r.gctx) })
	return nil
}

// startConsumers starts the projectors, the indexes and the operators.
func (e *Engine) startConsumers(r *runGroup) {
	if e.projs != nil {
		r.goConsumer(e.projs.Run, "walflow: projectors")
	}
	switch {
	case e.idx != nil && e.clu != nil:
		r.goConsumer(e.runClusterIndexes, "walflow: indexes")
	case e.idx != nil:
		r.goConsumer(e.idx.Run, "walflow: indexes")
	}
	switch {
	case e.ops != nil && e.clu != nil:
		r.goConsumer(e.runClusterOperators, "") // its errors name the operator
	case e.ops != nil:
		r.goConsumer(e.ops.Run, "") // its errors name the operator
	}
}

// sink is the ledger the source appends to: the ledger, through the index runner's feed
// when indexes are configured, so that they are computed while each event is in memory.
// In a cluster, the node that computes the indexes need not be the one that appends, so
// the indexes read the events back from the shared stream instead.
func (e *Engine) sink() pgwal.Sink {
	if e.idx != nil && e.clu == nil {
		return e.idx.Feed(e.led)
	}
	return e.led
}

// Close releases the ledger. Call it after Run has returned. With Config.Realtime, it first
// ends the gateway's open streams, waiting at most Realtime.ShutdownGrace.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() {
		if !e.shutdownRealtime(context.Background()) {
			e.log.WarnContext(context.Background(), "realtime streams did not end within the shutdown grace; closing the ledger under them",
				slog.Int("connections", e.gw.Stats().Connections))
		}
		e.snaps.close()
		e.slotReader.close(context.Background())
		if e.pool != nil {
			e.pool.Close()
		}
		if e.idxStore != nil {
			if err := e.idxStore.Close(); err != nil {
				e.log.WarnContext(context.Background(), "close the index store", slog.Any("error", err))
			}
		}
		e.closeErr = e.led.Close()
		if e.clu != nil {
			e.clu.close()
		}
	})
	return e.closeErr
}

// Ledger returns the engine's ledger, for reading history directly.
func (e *Engine) Ledger() ledger.Ledger { return e.led }

// Router returns the channel router built from Config.Tables.
func (e *Engine) Router() *channel.Router { return e.router }

// SubscribeOpts are the options of [Engine.Subscribe]. Nil means live events only.
type SubscribeOpts struct {
	// After is the position to deliver from (exclusive); nil means the current head, so
	// only new events arrive. Use a pointer to 0 for the whole history.
	After *event.Position
	// Buffer is the Events channel's capacity. Default 256.
	Buffer int
	// Snapshot is the token of a channel snapshot ([Engine.Snapshot]): the subscription
	// delivers exactly the changes the snapshot's rows do not contain, from the later of
	// After and the token's position. Default nil.
	Snapshot *snapshot.Token
}

// Subscription delivers a subscription's events; see [pubsub.Subscription].
type Subscription = pubsub.Subscription

// Subscribe delivers, in ledger order, the events of the given channels (comments,
// comments/7, posts/42/comments), from opts.After or from now. An event that belongs to
// several of the channels arrives once. A malformed channel, or a scope the table does not
// have, is an error. The subscription ends when ctx ends.
//
// A slow subscriber loses nothing and holds no memory for its backlog: it reads further
// behind in the ledger, within Config.Retention. A subscription from a position retention
// has removed, or one that falls further behind, ends with an error wrapping
// ledger.ErrTruncated: reload your state and subscribe again from the head.
func (e *Engine) Subscribe(ctx context.Context, opts *SubscribeOpts, channels ...string) (*Subscription, error) {
	if len(channels) == 0 {
		return nil, errors.New("walflow: Subscribe needs at least one channel, like comments or posts/42/comments")
	}
	keys := make([]string, len(channels))
	for i, s := range channels {
		c, err := channel.Parse(s)
		if err != nil {
			return nil, err
		}
		if err := e.router.Check(c); err != nil {
			return nil, err
		}
		keys[i] = c.String()
	}
	if opts == nil {
		opts = &SubscribeOpts{}
	}
	po := &pubsub.Options{After: opts.After, Buffer: opts.Buffer}
	if t := opts.Snapshot; t != nil {
		after := t.After
		if opts.After != nil {
			after = max(after, *opts.After)
		}
		po.After, po.Deliver = &after, t.Deliver
	}
	return pubsub.Subscribe(ctx, e.led, keys, po), nil
}
