package pgwal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// Sink receives decoded transactions in commit order. ledger.Ledger implements it. The
// source calls it from one goroutine.
type Sink interface {
	BeginTx(ctx context.Context, meta event.TxMeta) error
	Append(ctx context.Context, e *event.Event) error
	CommitTx(ctx context.Context, endLSN event.LSN) error
	AbortTx(ctx context.Context) error
	Sync(ctx context.Context) error
	SetAcked(ctx context.Context, lsn event.LSN) error
	SetOrigin(ctx context.Context, o ledger.Origin) error
	State() ledger.State
}

// Stats are the source's counters, safe to read at any time.
type Stats struct {
	// EventsReceived counts decoded row changes, including replays that were skipped.
	EventsReceived atomic.Uint64
	// EventsAppended counts events appended to the sink.
	EventsAppended atomic.Uint64
	// TxSkipped counts transactions replayed by PostgreSQL that the sink already held.
	TxSkipped atomic.Uint64
	// Reconnects counts replication sessions started after the first.
	Reconnects atomic.Uint64
	// AckedLSN is the last LSN acknowledged to the slot.
	AckedLSN atomic.Uint64
	// Connected is 1 while streaming.
	Connected atomic.Bool
	// StreamingSince is when the current replication session started streaming, in Unix
	// nanoseconds; 0 while not streaming. With Config.Standby, it is when this source
	// became leader.
	StreamingSince atomic.Int64
	// ReplicationPID is the PostgreSQL process id of the replication connection while one
	// is open with Config.Standby (its walsender while leading), else 0.
	ReplicationPID atomic.Int32
}

// Source streams one database's changes into a Sink. Create it with [New].
type Source struct {
	cfg   Config
	log   *slog.Logger
	stats Stats
}

// New validates cfg and returns a Source. It does not connect; [Source.Run] does.
func New(cfg Config) (*Source, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Source{cfg: cfg, log: cfg.Logger.With(slog.String("component", "pgwal"))}, nil
}

// Stats returns the source's live counters.
func (s *Source) Stats() *Stats { return &s.stats }

// Run streams changes into sink until ctx ends, reconnecting with backoff when the
// connection or the server fails. It returns nil when ctx ends (unless the sink then fails
// to make the committed transactions durable), and an error for a condition retrying
// cannot fix (see the Err variables), with the sink left consistent.
func (s *Source) Run(ctx context.Context, sink Sink) error {
	backoff := s.cfg.ReconnectMin
	started := time.Now()
	streamedOnce := false
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.stats.Reconnects.Add(1)
		}
		streamed, err := s.session(ctx, sink)
		if ctx.Err() != nil {
			// Stopped; but a sink that failed to settle must not pass for a clean stop.
			if se, ok := errors.AsType[*stopError](err); ok {
				return se.err
			}
			return nil
		}
		if fatal(err) {
			return err
		}
		// A slot busy at start-up is another consumer, unless the server has not yet noticed
		// that our previous process died (it notices within moments): wait SlotBusyWait
		// before calling it another consumer. Later sessions always retry, since after a
		// reconnect the busy walsender is usually our own old one.
		streamedOnce = streamedOnce || streamed
		if errors.Is(err, ErrSlotInUse) && !streamedOnce && s.cfg.Standby == nil && time.Since(started) >= s.cfg.SlotBusyWait {
			return err
		}
		if streamed {
			backoff = s.cfg.ReconnectMin
		}
		s.log.WarnContext(ctx, "replication session ended; reconnecting", slog.Any("error", err), slog.Duration("backoff", backoff))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, s.cfg.ReconnectMax)
	}
}

// session runs one connection's worth of streaming. streamed reports whether it got as far
// as receiving data, which resets the backoff.
func (s *Source) session(ctx context.Context, sink Sink) (streamed bool, err error) {
	sqlConn, err := pgx.Connect(ctx, s.cfg.ConnString)
	if err != nil {
		return false, fmt.Errorf("pgwal: connect: %w", err)
	}
	defer sqlConn.Close(context.WithoutCancel(ctx))

	if err := checkServer(ctx, sqlConn); err != nil {
		return false, err
	}
	if s.cfg.SlotFailover {
		if err := checkFailover(ctx, sqlConn); err != nil {
			return false, err
		}
	}
	if err := checkTables(ctx, sqlConn, s.cfg.Tables, s.log); err != nil {
		return false, err
	}
	if err := ensurePublication(ctx, sqlConn, s.cfg.Publication, s.cfg.Tables, s.log); err != nil {
		return false, err
	}

	rcfg, err := pgconn.ParseConfig(s.cfg.ConnString)
	if err != nil {
		return false, fmt.Errorf("pgwal: parse ConnString: %w", err)
	}
	rcfg.RuntimeParams["replication"] = "database"
	rcfg.RuntimeParams["application_name"] = "walflow"
	// Values arrive in text form written by the walsender's output functions, so pin the
	// settings those depend on: ISO dates, UTC, and floats that round-trip exactly.
	rcfg.RuntimeParams["DateStyle"] = "ISO, YMD"
	rcfg.RuntimeParams["TimeZone"] = "UTC"
	rcfg.RuntimeParams["IntervalStyle"] = "postgres"
	rcfg.RuntimeParams["extra_float_digits"] = "3"
	if sb := s.cfg.Standby; sb != nil && sb.SenderTimeout > 0 {
		rcfg.RuntimeParams["wal_sender_timeout"] = fmt.Sprintf("%dms", sb.SenderTimeout.Milliseconds())
	}
	repl, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return false, fmt.Errorf("pgwal: open replication connection: %w", err)
	}
	defer repl.Close(context.WithoutCancel(ctx))

	sys, err := pglogrepl.IdentifySystem(ctx, repl)
	if err != nil {
		return false, fmt.Errorf("pgwal: identify system: %w", err)
	}
	origin := ledger.Origin{SystemID: sys.SystemID, Timeline: sys.Timeline, Database: sys.DBName, Slot: s.cfg.Slot}
	st := sink.State()
	if s.cfg.Standby != nil {
		return s.standbySession(ctx, sink, sqlConn, repl, origin)
	}
	if err := checkOrigin(st.Origin, origin); err != nil {
		return false, err
	}

	info, exists, err := QuerySlot(ctx, sqlConn, s.cfg.Slot)
	if err != nil {
		return false, err
	}
	info.Name = s.cfg.Slot
	create, err := checkSlot(info, exists, sys.DBName, st)
	if err != nil {
		return false, err
	}
	slotStart := info.ConfirmedFlush
	if create {
		res, err := createSlot(ctx, repl, s.cfg)
		if err != nil {
			return false, fmt.Errorf("pgwal: create replication slot %q: %w", s.cfg.Slot, err)
		}
		s.log.InfoContext(ctx, "created replication slot", slog.String("slot", s.cfg.Slot), slog.Bool("temporary", s.cfg.TemporarySlot), slog.Bool("failover", s.cfg.SlotFailover), slog.String("consistent_point", res.ConsistentPoint))
		if slotStart, err = event.ParseLSN(res.ConsistentPoint); err != nil {
			return false, fmt.Errorf("pgwal: create replication slot %q: consistent point: %w", s.cfg.Slot, err)
		}
	}
	if st, err = recordOrigin(ctx, sink, st, origin, slotStart); err != nil {
		return false, err
	}

	start := pglogrepl.LSN(st.LastEndLSN)
	err = pglogrepl.StartReplication(ctx, repl, s.cfg.Slot, start, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: pluginArgs(s.cfg.Publication),
	})
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == pgerrcode.ObjectNotInPrerequisiteState {
			return false, fmt.Errorf("%w: start replication on slot %q: %s; drop the slot and %s", ErrSlotInvalidated, s.cfg.Slot, pe.Message, resyncHint)
		}
		if errors.As(err, &pe) && pe.Code == pgerrcode.ObjectInUse {
			return false, fmt.Errorf("%w: start replication on slot %q: %s", ErrSlotInUse, s.cfg.Slot, pe.Message)
		}
		return false, fmt.Errorf("pgwal: start replication on slot %q: %w", s.cfg.Slot, err)
	}
	return true, s.streamSlot(ctx, sink, repl, sqlConn, sys.DBName, st, start)
}

// recordOrigin records, in a ledger that follows no slot yet, the origin and the slot's
// start position, and returns the sink's new state.
func recordOrigin(ctx context.Context, sink Sink, st ledger.State, origin ledger.Origin, slotStart event.LSN) (ledger.State, error) {
	if !st.Origin.IsZero() {
		return st, nil
	}
	// The slot is confirmed up to where this ledger starts following it. Record that as
	// acknowledged before the origin, or a crash before the first acknowledgement would
	// make the slot look consumed by another client on the next start (ErrSlotRecreated).
	if st.Head == 0 && slotStart > st.AckedLSN {
		if err := sink.SetAcked(ctx, slotStart); err != nil {
			return st, fmt.Errorf("pgwal: record the slot's start position: %w", err)
		}
	}
	if err := sink.SetOrigin(ctx, origin); err != nil {
		return st, fmt.Errorf("pgwal: record origin: %w", err)
	}
	return sink.State(), nil
}

// standbySession contends for the slot (see [Standby]); once it has it, it leads the sink,
// checks the slot against the sink's state as the previous leader left it, and streams.
func (s *Source) standbySession(ctx context.Context, sink Sink, sqlConn *pgx.Conn, repl *pgconn.PgConn, origin ledger.Origin) (streamed bool, err error) {
	s.stats.ReplicationPID.Store(int32(repl.PID()))
	defer s.stats.ReplicationPID.Store(0)
	start := pglogrepl.LSN(sink.State().LastEndLSN)
	created, err := s.acquire(ctx, sqlConn, repl, start)
	if err != nil {
		return false, err
	}
	stopKeepalive := keepSlot(repl, keepaliveEvery(s.cfg.Standby))
	err = s.cfg.Standby.LeadFunc(ctx)
	stopKeepalive()
	if err != nil {
		return false, fmt.Errorf("pgwal: take the lead of the ledger after getting slot %q: %w", s.cfg.Slot, err)
	}
	if resign := s.cfg.Standby.ResignFunc; resign != nil {
		defer resign()
	}
	st := sink.State()
	if err := checkOrigin(st.Origin, origin); err != nil {
		return false, err
	}
	info, exists, err := QuerySlot(ctx, sqlConn, s.cfg.Slot)
	if err != nil {
		return false, err
	}
	if !exists {
		return false, fmt.Errorf("pgwal: replication slot %q was dropped while this node took it; it is created again at the next try", s.cfg.Slot)
	}
	info.Name = s.cfg.Slot
	if info.ActivePID == int32(repl.PID()) {
		info.Active = false // held by this session
	}
	// A slot this session created is as new as a missing one: refused when the ledger
	// followed another.
	if _, err := checkSlot(info, exists && !created, origin.Database, st); err != nil {
		return false, err
	}
	if st, err = recordOrigin(ctx, sink, st, origin, info.ConfirmedFlush); err != nil {
		return false, err
	}
	s.log.InfoContext(ctx, "leading: this node streams the slot", slog.String("slot", s.cfg.Slot), slog.Int("replication_pid", int(repl.PID())))
	return true, s.streamSlot(ctx, sink, repl, sqlConn, origin.Database, st, pglogrepl.LSN(st.LastEndLSN))
}

// streamSlot runs the receive loop of a started replication session.
func (s *Source) streamSlot(ctx context.Context, sink Sink, repl *pgconn.PgConn, sqlConn *pgx.Conn, db string, st ledger.State, start pglogrepl.LSN) error {
	s.log.InfoContext(ctx, "streaming", slog.String("slot", s.cfg.Slot), slog.String("start_lsn", start.String()),
		slog.Uint64("head", uint64(st.Head)))
	s.stats.Connected.Store(true)
	defer s.stats.Connected.Store(false)
	s.stats.StreamingSince.Store(time.Now().UnixNano())
	defer s.stats.StreamingSince.Store(0)

	if s.cfg.Standby != nil {
		// A leader's shared sink may stall (its servers elect a new leader) for longer
		// than the short wal_sender_timeout of a standby session: answer for it meanwhile.
		g := &sinkGuard{Sink: sink, conn: repl, every: keepaliveEvery(s.cfg.Standby)}
		stop := g.run()
		defer stop()
		sink = g
	}
	st2 := &stream{
		src: s, sink: sink, conn: repl, sql: sqlConn, types: newTypeResolver(),
		rels:       map[uint32]*relation{},
		db:         db,
		lastCommit: st.LastCommitLSN,
		acked:      maxLSN(st.AckedLSN, st.LastEndLSN),
	}
	return st2.run(ctx)
}

// stopError is a failure to leave the sink consistent while stopping. Run returns it even
// though its context ended: the caller would otherwise take the stop for a clean one.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// stream is the state of one replication connection's receive loop.
type stream struct {
	src   *Source
	sink  Sink
	conn  *pgconn.PgConn
	sql   *pgx.Conn
	types *typeResolver
	rels  map[uint32]*relation
	db    string

	// Transaction state.
	inTx    bool
	skipTx  bool
	tx      event.TxMeta
	ordinal uint32
	ev      event.Event

	lastCommit   event.LSN // last transaction committed to the sink (synced or not)
	pending      int       // committed transactions not yet synced
	pendingBytes int
	pendingSince time.Time

	walEnd     event.LSN // the WAL end of the last keepalive: everything before it was sent
	acked      event.LSN // last flush position sent or recorded
	nextStatus time.Time

	// silence is how long the loop has waited on the connection since the server last sent
	// anything, and pinged whether it asked for a reply meanwhile (see checkSilence).
	silence time.Duration
	pinged  bool

	// Read deadlines: the watcher goroutine sets one in the past when ctx ends.
	mu       sync.Mutex
	stopping bool
	deadline time.Time // the read deadline last set
}

func (st *stream) run(ctx context.Context) (err error) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			st.mu.Lock()
			st.stopping = true
			_ = st.conn.Conn().SetReadDeadline(time.Now())
			st.mu.Unlock()
		case <-done:
		}
	}()
	defer func() {
		close(done)
		wg.Wait()
		var failed []error // settling the sink, reported even after a clean stop
		if errors.Is(err, ledger.ErrWriteFailed) {
			// The sink refuses every write after a failed one: aborting or syncing again
			// would only report the same failure twice.
			if st.pending > 0 || st.inTx {
				err = fmt.Errorf("%w; the transactions since the last sync are not durable, and are streamed again at the next start", err)
			}
			return
		}
		if st.inTx && !st.skipTx {
			if aerr := st.sink.AbortTx(context.WithoutCancel(ctx)); aerr != nil {
				failed = append(failed, fmt.Errorf("pgwal: abort the open transaction at stop: %w", aerr))
			}
		}
		// Make what was committed durable and tell the server, so a graceful stop leaves
		// nothing to replay.
		synced := true
		if st.pending > 0 {
			if serr := st.sync(context.WithoutCancel(ctx)); serr != nil {
				failed = append(failed, fmt.Errorf("%w; the transactions since the last sync are not durable, and are streamed again at the next start", serr))
				synced = false
			}
		}
		if failed != nil {
			err = errors.Join(err, &stopError{errors.Join(failed...)})
		}
		if !synced {
			return
		}
		if !st.conn.IsClosed() {
			_ = st.conn.Conn().SetReadDeadline(time.Time{})
			_ = st.sendStatus(context.WithoutCancel(ctx), false)
		}
	}()

	st.nextStatus = time.Now().Add(st.src.cfg.StatusInterval)
	for {
		if err := st.tick(ctx); err != nil {
			return err
		}
		if err := st.checkSilence(ctx); err != nil {
			return err
		}
		waitStart := time.Now()
		deadline := st.nextStatus
		if st.pending > 0 {
			deadline = minTime(deadline, st.pendingSince.Add(st.src.cfg.SyncDelay))
		}
		if limit := st.silenceLimit(); limit > 0 {
			// Rounded up to 100ms, so that a busy stream moves the deadline rarely.
			deadline = minTime(deadline, waitStart.Add(limit-st.silence+100*time.Millisecond).Truncate(100*time.Millisecond))
		}
		st.mu.Lock()
		if st.stopping {
			st.mu.Unlock()
			return ctx.Err()
		}
		// Setting a deadline costs a timer update, so only do it when it moves.
		if !deadline.Equal(st.deadline) {
			_ = st.conn.Conn().SetReadDeadline(deadline)
			st.deadline = deadline
		}
		st.mu.Unlock()

		msg, err := st.conn.ReceiveMessage(context.Background())
		if err == nil {
			st.silence, st.pinged = 0, false
		}
		if err != nil {
			if pgconn.Timeout(err) || isTimeout(err) {
				st.silence += time.Since(waitStart)
				if ctx.Err() != nil {
					return ctx.Err()
				}
				continue
			}
			return fmt.Errorf("pgwal: receive: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := st.handleCopyData(ctx, m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			pe := pgconn.ErrorResponseToPgError(m)
			return fmt.Errorf("pgwal: server error while streaming: %w", pe)
		case *pgproto3.CopyDone:
			return errors.New("pgwal: server ended the replication stream")
		}
	}
}

// silenceLimit is how long the loop waits on a standby session's connection without
// hearing from the server before checkSilence acts: half its wal_sender_timeout before it
// asks for a reply, and the whole of it more before it gives up. Zero means no limit (a
// lone source, or one that keeps the server's setting).
func (st *stream) silenceLimit() time.Duration {
	ping, dead := silenceLimits(st.src.cfg.Standby)
	if st.pinged {
		return dead
	}
	return ping
}

// silenceLimits returns how long a standby session's connection may stay silent before
// the source asks the server for a reply (ping: half of SenderTimeout, as the walsender
// does before it asks the client), and before it presumes the connection dead (dead: a
// whole SenderTimeout after the ping, the time a live server has to answer it). Both are
// zero without a limit.
func silenceLimits(sb *Standby) (ping, dead time.Duration) {
	if sb == nil || sb.SenderTimeout <= 0 {
		return 0, 0
	}
	return sb.SenderTimeout / 2, sb.SenderTimeout/2 + sb.SenderTimeout
}

// checkSilence notices a leader's dead connection, which nothing reports when the network
// to PostgreSQL is cut: neither end closes it, and writes to it succeed. After half of
// wal_sender_timeout spent waiting without a message, it asks the server for a reply (a
// status update with ReplyRequested, which a live walsender answers at once); after a
// whole wal_sender_timeout more without one, it ends the session, so the node stops
// leading about when a standby has taken the slot that PostgreSQL freed (wal_sender_timeout
// after the cut). Only time spent waiting counts, so a sink call that blocks does not.
func (st *stream) checkSilence(ctx context.Context) error {
	limit := st.silenceLimit()
	if limit == 0 || st.silence < limit {
		return nil
	}
	if st.pinged {
		return fmt.Errorf("pgwal: the server sent nothing for %s, not even the reply it was asked for; the replication connection is presumed dead (the network to PostgreSQL is cut?)", st.silence.Round(time.Millisecond))
	}
	st.pinged = true
	return st.sendStatus(ctx, true)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// tick syncs pending transactions when due and sends a status update when due.
func (st *stream) tick(ctx context.Context) error {
	now := time.Now()
	if st.pending > 0 && (st.pendingBytes >= st.src.cfg.SyncBytes || now.Sub(st.pendingSince) >= st.src.cfg.SyncDelay) {
		if err := st.sync(ctx); err != nil {
			return err
		}
	}
	if !now.Before(st.nextStatus) {
		return st.sendStatus(ctx, false)
	}
	return nil
}

func (st *stream) sync(ctx context.Context) error {
	if err := st.sink.Sync(ctx); err != nil {
		return fmt.Errorf("pgwal: sync the ledger: %w", err)
	}
	st.pending, st.pendingBytes = 0, 0
	return nil
}

// sendStatus acknowledges what is durable. When nothing is in flight, everything the server
// sent up to its WAL end is accounted for, so that position is acknowledged too, which keeps
// an idle slot from retaining WAL. Every new acknowledgement is recorded in the sink first
// (SetAcked), so the sink's durable bookkeeping covers every transaction the slot will not
// send again: a sink that recovers to less than that can tell damage from a torn write.
// That costs one bookkeeping write per status interval, not per transaction.
func (st *stream) sendStatus(ctx context.Context, reply bool) error {
	ack := st.sink.State().LastEndLSN
	if !st.inTx && st.pending == 0 && st.walEnd > ack {
		ack = st.walEnd
	}
	if ack > st.acked {
		if err := st.sink.SetAcked(ctx, ack); err != nil {
			return fmt.Errorf("pgwal: record acknowledged position: %w", err)
		}
		st.acked = ack
	}
	st.nextStatus = time.Now().Add(st.src.cfg.StatusInterval)
	err := pglogrepl.SendStandbyStatusUpdate(ctx, st.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(st.acked),
		WALFlushPosition: pglogrepl.LSN(st.acked),
		WALApplyPosition: pglogrepl.LSN(st.acked),
		ReplyRequested:   reply,
	})
	if err != nil {
		return fmt.Errorf("pgwal: send standby status: %w", err)
	}
	st.src.stats.AckedLSN.Store(uint64(st.acked))
	return nil
}

func (st *stream) handleCopyData(ctx context.Context, b []byte) error {
	x, err := parseCopyData(b)
	if err != nil {
		return err
	}
	if x.Keepalive {
		// Only a keepalive's WAL end is safe to acknowledge when idle: it is the position the
		// server has decoded and sent up to. An XLogData header's WAL end is not (logical
		// walsenders put the change's own LSN there), and acknowledging a server-wide WAL end
		// could skip transactions not yet sent.
		if x.WALEnd > st.walEnd {
			st.walEnd = x.WALEnd
		}
		if x.Reply {
			if st.pending > 0 {
				if err := st.sync(ctx); err != nil {
					return err
				}
			}
			return st.sendStatus(ctx, false)
		}
		return nil
	}
	return st.handleMessage(ctx, x.Data)
}

func (st *stream) handleMessage(ctx context.Context, data []byte) error {
	msg, err := parseMessage(data)
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case beginMsg:
		if st.inTx {
			return fmt.Errorf("%w: Begin inside a transaction", ErrProtocol)
		}
		st.ordinal = 0
		st.tx = event.TxMeta{CommitLSN: m.FinalLSN, XID: m.XID, CommitTime: m.CommitTime}
		st.skipTx = m.FinalLSN <= st.lastCommit
		if st.skipTx {
			st.inTx = true
			st.src.stats.TxSkipped.Add(1)
			return nil
		}
		// inTx only once the sink holds the transaction: a Begin the sink refused (the stop
		// cancelled it) leaves nothing to abort at stop.
		if err := st.sink.BeginTx(ctx, st.tx); err != nil {
			return err
		}
		st.inTx = true
		return nil
	case commitMsg:
		if !st.inTx {
			return fmt.Errorf("%w: Commit outside a transaction", ErrProtocol)
		}
		st.inTx = false
		if st.skipTx {
			return nil
		}
		if m.CommitLSN != st.tx.CommitLSN {
			return fmt.Errorf("%w: Commit LSN %s differs from Begin's %s", ErrProtocol, m.CommitLSN, st.tx.CommitLSN)
		}
		if err := st.sink.CommitTx(ctx, m.EndLSN); err != nil {
			return fmt.Errorf("pgwal: commit transaction %d to the ledger: %w", st.tx.XID, err)
		}
		st.lastCommit = m.CommitLSN
		if st.pending == 0 {
			st.pendingSince = time.Now()
		}
		st.pending++
		return nil
	case relationMsg:
		rel, err := st.types.resolveRelation(ctx, st.sql, m)
		if err != nil {
			return err
		}
		st.rels[m.ID] = rel
		return nil
	case changeMsg:
		rel, err := st.relation(m.Relation)
		if err != nil {
			return err
		}
		if rel.msg.Namespace == InternalSchema {
			// walflow's own bookkeeping (operator checkpoints, process status) is not an event,
			// even when the publication is FOR ALL TABLES.
			return nil
		}
		st.src.stats.EventsReceived.Add(1)
		if st.skipTx {
			return nil
		}
		e := st.next()
		if err := rel.buildChange(e, m, st.tx.CommitLSN); err != nil {
			return err
		}
		return st.append(ctx, e, len(data))
	case truncateMsg:
		for _, id := range m.Relations {
			rel, err := st.relation(id)
			if err != nil {
				return err
			}
			if rel.msg.Namespace == InternalSchema {
				continue
			}
			st.src.stats.EventsReceived.Add(1)
			if st.skipTx {
				continue
			}
			e := st.next()
			e.Type, e.Name = event.Truncate, rel.msg.Name
			e.Source.Schema, e.Source.Table, e.Source.Columns = rel.msg.Namespace, rel.msg.Name, rel.columns
			e.NewRecord, e.OldRecord, e.Changes = nil, nil, nil
			if err := st.append(ctx, e, 16); err != nil {
				return err
			}
		}
		return nil
	}
	return nil // Origin, Type and logical messages carry nothing walflow records.
}

func (st *stream) relation(id uint32) (*relation, error) {
	rel, ok := st.rels[id]
	if !ok {
		return nil, fmt.Errorf("%w: change for relation %d before its Relation message", ErrProtocol, id)
	}
	return rel, nil
}

// next prepares the reusable event for the next change of the current transaction.
func (st *stream) next() *event.Event {
	if !st.inTx {
		// A change outside Begin/Commit breaks the protocol; buildChange's caller reports it.
		st.tx = event.TxMeta{}
	}
	e := &st.ev
	e.Position = 0
	e.LSN = st.tx.CommitLSN
	e.XID = st.tx.XID
	e.Ordinal = st.ordinal
	e.Timestamp = st.tx.CommitTime
	e.Source.DB = st.db
	st.ordinal++
	return e
}

func (st *stream) append(ctx context.Context, e *event.Event, size int) error {
	if !st.inTx {
		return fmt.Errorf("%w: change outside a transaction", ErrProtocol)
	}
	if err := st.sink.Append(ctx, e); err != nil {
		return fmt.Errorf("pgwal: append %s event of %s (transaction %d) to the ledger: %w", e.Type, e.Name, e.XID, err)
	}
	st.src.stats.EventsAppended.Add(1)
	st.pendingBytes += size
	return nil
}
