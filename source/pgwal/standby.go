package pgwal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/event"
)

// Defaults for [Standby].
const (
	StandbyIntervalDefault      = time.Second
	StandbySenderTimeoutDefault = 5 * time.Second
)

// Standby makes a [Source] one of several contenders for the slot, of which PostgreSQL
// lets exactly one stream: a logical slot has at most one active walsender, and
// START_REPLICATION on a slot active elsewhere fails with SQLSTATE 55006 (object_in_use).
// A standby source keeps its connections open and tries to start the slot every Interval;
// while the slot is active elsewhere it stands by (logged once, not an error), and when
// START_REPLICATION succeeds it leads: it calls LeadFunc, then streams as a lone source
// does. A leader that loses its PostgreSQL connection stops streaming, and so appending,
// at once, and becomes a contender again.
//
// The sink of a standby source is shared with the other contenders (a replicated ledger):
// the source reads its State and writes to it only after LeadFunc returned.
type Standby struct {
	// Interval is how often a standby tries to start the slot. Default 1s.
	Interval time.Duration
	// LeadFunc is called each time the source gets the slot, before it reads the sink's
	// State or writes to it. It must make the sink writable by this process alone (fencing
	// the previous leader's late appends), and return only once the sink's State covers
	// everything a previous leader made durable. An error ends the session, which releases
	// the slot; the source then contends again after a backoff. Required.
	LeadFunc func(ctx context.Context) error
	// ResignFunc, when set, is called each time a session that LeadFunc made the leader
	// ends, once the source stopped writing to the sink: it hands the sink back to
	// whichever contender leads next (for a ledger/jetstream ledger, its Resign method).
	// Default nil.
	ResignFunc func()
	// ClaimFunc, when set, is called with the PostgreSQL process id of the source's
	// replication connection once it is open, before the first START_REPLICATION on it:
	// it publishes that the walsender with this pid belongs to a live node, so other
	// contenders' HolderAliveFunc can tell. An error ends the session. Default nil.
	ClaimFunc func(ctx context.Context, pid int32) error
	// SenderTimeout is the wal_sender_timeout of the source's replication connections
	// (PostgreSQL 12 and newer take it per connection): the walsender of a leader that
	// stopped answering (its machine is gone, or the network between it and PostgreSQL is
	// cut) exits after this long, freeing the slot for a standby. A live source answers
	// in time: it replies to the walsender's keepalives, and keeps replying while LeadFunc
	// or a sink call blocks. The leader applies the same bound the other way, as the
	// walsender does: after half of SenderTimeout spent waiting without a message it asks
	// the server for a reply, and after a whole SenderTimeout more without one it presumes
	// the connection dead, ends the session and contends again. So a leader cut off from
	// PostgreSQL stops leading 1.5 × SenderTimeout after the last message it received,
	// soon after a standby took the slot. A negative value keeps the server's setting
	// (60s by default) and turns that check off. Default 5s.
	SenderTimeout time.Duration
	// HolderAliveFunc, when set, is asked while the slot is active elsewhere whether the
	// walsender holding it (pid) serves a live contender. When it answers false twice in a
	// row, Interval apart, for the same pid, the standby ends that walsender with
	// pg_terminate_backend(pid) (the role needs to be the walsender's role, a member of
	// pg_signal_backend, or a superuser) and takes the slot at its next try. An error
	// counts as alive. Without it, a slot held by a dead machine's walsender is freed only
	// when PostgreSQL notices the dead connection (wal_sender_timeout, 60s by default, or
	// TCP keepalives). Default nil.
	HolderAliveFunc func(ctx context.Context, pid int32) (bool, error)
}

func (sb *Standby) withDefaults() *Standby {
	if sb == nil {
		return nil
	}
	c := *sb
	if c.Interval == 0 {
		c.Interval = StandbyIntervalDefault
	}
	if c.SenderTimeout == 0 {
		c.SenderTimeout = StandbySenderTimeoutDefault
	}
	return &c
}

func (sb *Standby) validate() error {
	if sb == nil {
		return nil
	}
	if sb.LeadFunc == nil {
		return errors.New("pgwal: Standby.LeadFunc is nil; set it to make the shared sink writable by the leader (for a ledger/jetstream ledger, its Lead method)")
	}
	if sb.SenderTimeout > 0 && sb.SenderTimeout < 100*time.Millisecond {
		return fmt.Errorf("pgwal: Standby.SenderTimeout %s is too short for a walsender to wait for its client; use a few seconds (default 5s), or a negative value to keep the server's wal_sender_timeout", sb.SenderTimeout)
	}
	if sb.Interval < 0 {
		return fmt.Errorf("pgwal: Standby.Interval %s is negative; use a short interval such as 1s", sb.Interval)
	}
	return nil
}

// acquire contends for the slot on repl until it gets it (nil), ctx ends, or the session
// fails. It creates the slot when missing. start is where streaming starts as the sink's
// State knew before leading; the server starts from the slot's confirmed position when that
// is later, and the stream skips what the sink already holds. created reports whether the
// slot was created on the try that got it.
func (s *Source) acquire(ctx context.Context, sqlConn *pgx.Conn, repl *pgconn.PgConn, start pglogrepl.LSN) (created bool, err error) {
	sb := s.cfg.Standby
	pid := int32(repl.PID())
	if sb.ClaimFunc != nil {
		if err := sb.ClaimFunc(ctx, pid); err != nil {
			return false, fmt.Errorf("pgwal: claim replication connection %d: %w", pid, err)
		}
	}
	var (
		loggedPID  int32 // the holder last logged, so standing by is logged once per holder
		suspect    int32 // a holder HolderAliveFunc said was dead once
		terminated int32
	)
	for {
		// Only a slot created on the try that gets it is new: one created on an earlier try
		// may since have been streamed into the sink by another contender.
		created = false
		info, exists, err := QuerySlot(ctx, sqlConn, s.cfg.Slot)
		if err != nil {
			return false, err
		}
		if !exists {
			if _, err := createSlot(ctx, repl, s.cfg); err != nil {
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "42710" { // duplicate_object: another contender created it
					return false, fmt.Errorf("pgwal: create replication slot %q: %w", s.cfg.Slot, err)
				}
			} else {
				created = true
				s.log.InfoContext(ctx, "created replication slot", slog.String("slot", s.cfg.Slot), slog.Bool("temporary", s.cfg.TemporarySlot), slog.Bool("failover", s.cfg.SlotFailover))
			}
		}
		err = pglogrepl.StartReplication(ctx, repl, s.cfg.Slot, start, pglogrepl.StartReplicationOptions{
			Mode:       pglogrepl.LogicalReplication,
			PluginArgs: pluginArgs(s.cfg.Publication),
		})
		var pe *pgconn.PgError
		switch {
		case err == nil:
			return created, nil
		case errors.As(err, &pe) && pe.Code == "55000":
			return false, fmt.Errorf("%w: start replication on slot %q: %s; drop the slot and %s", ErrSlotInvalidated, s.cfg.Slot, pe.Message, resyncHint)
		case errors.As(err, &pe) && (pe.Code == "55006" || pe.Code == "42704"):
			// In use elsewhere, or dropped between the query and the start: try again.
		default:
			return false, fmt.Errorf("pgwal: start replication on slot %q: %w", s.cfg.Slot, err)
		}
		holder := info.ActivePID
		if info, ok, err := QuerySlot(ctx, sqlConn, s.cfg.Slot); err == nil && ok && info.Active {
			holder = info.ActivePID
		}
		if holder != 0 && holder != loggedPID {
			loggedPID = holder
			s.log.InfoContext(ctx, "replication slot is active in another process; standing by", slog.String("slot", s.cfg.Slot), slog.Int("active_pid", int(holder)))
		}
		if holder != 0 && holder != terminated && sb.HolderAliveFunc != nil {
			alive, err := sb.HolderAliveFunc(ctx, holder)
			if err != nil {
				s.log.WarnContext(ctx, "cannot tell whether the slot's holder is alive; standing by", slog.Int("active_pid", int(holder)), slog.Any("error", err))
				alive = true
			}
			switch {
			case alive:
				suspect = 0
			case suspect != holder:
				suspect = holder
			default:
				s.log.WarnContext(ctx, "ending the slot's walsender: no live node claims it", slog.String("slot", s.cfg.Slot), slog.Int("active_pid", int(holder)))
				if _, err := sqlConn.Exec(ctx, "SELECT pg_catalog.pg_terminate_backend($1)", holder); err != nil {
					return false, fmt.Errorf("pgwal: end the walsender %d that holds slot %q for a dead node (pg_terminate_backend; the role needs pg_signal_backend or the walsender's role): %w", holder, s.cfg.Slot, err)
				}
				terminated, suspect = holder, 0
				if err := s.waitReleased(ctx, sqlConn, holder, 5*time.Second); err != nil {
					return false, err
				}
				continue
			}
		}
		t := time.NewTimer(sb.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
	}
}

// waitReleased polls until the walsender pid no longer holds the slot, for at most max.
func (s *Source) waitReleased(ctx context.Context, sqlConn *pgx.Conn, pid int32, max time.Duration) error {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		info, ok, err := QuerySlot(ctx, sqlConn, s.cfg.Slot)
		if err != nil {
			return err
		}
		if !ok || !info.Active || info.ActivePID != pid {
			return nil
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// keepSlot keeps a just started replication session alive while the caller does not read
// it (LeadFunc may take longer than wal_sender_timeout): it sends a standby status update
// at each tick of every, which the walsender counts as a reply, and returns a function that stops
// and waits for it. The updates carry no position (InvalidXLogRecPtr), so the slot's
// confirmed position stays where it is. What the walsender sends meanwhile waits in the
// connection, unread.
func keepSlot(repl *pgconn.PgConn, every time.Duration) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			// Write-only: the caller's goroutine does not touch the connection until stop.
			if err := pglogrepl.SendStandbyStatusUpdate(context.Background(), repl, pglogrepl.StandbyStatusUpdate{}); err != nil {
				return // the session is broken; the stream that follows reports it
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// keepaliveEvery is how often a session not read for a while is answered for: a fifth of
// its wal_sender_timeout, at most a second. The walsender asks for a reply after half its
// timeout without one, so this answers in time even when the last reply is that old.
func keepaliveEvery(sb *Standby) time.Duration {
	if sb.SenderTimeout <= 0 {
		return time.Second
	}
	return min(time.Second, sb.SenderTimeout/5)
}

// sinkGuard keeps a replication session alive while a call to its sink blocks: at each
// tick of keepaliveEvery that finds a sink call running, it sends a position-less standby
// status update (as keepSlot does). It writes to the connection only
// while the stream's goroutine is inside a sink call, so never concurrently with it.
type sinkGuard struct {
	Sink
	conn *pgconn.PgConn

	every time.Duration // see keepaliveEvery

	mu     sync.Mutex
	inSink bool
	broken bool // a write failed; the stream reports the broken session itself
}

func (g *sinkGuard) enter() {
	g.mu.Lock()
	g.inSink = true
	g.mu.Unlock()
}

func (g *sinkGuard) leave() {
	g.mu.Lock()
	g.inSink = false
	g.mu.Unlock()
}

// run starts the guard's goroutine and returns a function that stops it and waits for it.
func (g *sinkGuard) run() (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(g.every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			g.mu.Lock()
			if g.inSink && !g.broken {
				if err := pglogrepl.SendStandbyStatusUpdate(context.Background(), g.conn, pglogrepl.StandbyStatusUpdate{}); err != nil {
					g.broken = true
				}
			}
			g.mu.Unlock()
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

func (g *sinkGuard) BeginTx(ctx context.Context, meta event.TxMeta) error {
	g.enter()
	defer g.leave()
	return g.Sink.BeginTx(ctx, meta)
}

func (g *sinkGuard) Append(ctx context.Context, e *event.Event) error {
	g.enter()
	defer g.leave()
	return g.Sink.Append(ctx, e)
}

func (g *sinkGuard) CommitTx(ctx context.Context, endLSN event.LSN) error {
	g.enter()
	defer g.leave()
	return g.Sink.CommitTx(ctx, endLSN)
}

func (g *sinkGuard) AbortTx(ctx context.Context) error {
	g.enter()
	defer g.leave()
	return g.Sink.AbortTx(ctx)
}

func (g *sinkGuard) Sync(ctx context.Context) error {
	g.enter()
	defer g.leave()
	return g.Sink.Sync(ctx)
}

func (g *sinkGuard) SetAcked(ctx context.Context, lsn event.LSN) error {
	g.enter()
	defer g.leave()
	return g.Sink.SetAcked(ctx, lsn)
}

func pluginArgs(publication string) []string {
	return []string{"proto_version '1'", "publication_names '" + publication + "'"}
}
