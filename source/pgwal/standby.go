package pgwal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// StandbyIntervalDefault is the default Standby.Interval.
const StandbyIntervalDefault = time.Second

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
	// ClaimFunc, when set, is called with the PostgreSQL process id of the source's
	// replication connection once it is open, before the first START_REPLICATION on it:
	// it publishes that the walsender with this pid belongs to a live node, so other
	// contenders' HolderAliveFunc can tell. An error ends the session. Default nil.
	ClaimFunc func(ctx context.Context, pid int32) error
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
	return &c
}

func (sb *Standby) validate() error {
	if sb == nil {
		return nil
	}
	if sb.LeadFunc == nil {
		return errors.New("pgwal: Standby.LeadFunc is nil; set it to make the shared sink writable by the leader (for a ledger/jetstream ledger, its Lead method)")
	}
	if sb.Interval < 0 {
		return fmt.Errorf("pgwal: Standby.Interval %s is negative; use a short interval such as 1s", sb.Interval)
	}
	return nil
}

// acquire contends for the slot on repl until it gets it (nil), ctx ends, or the session
// fails. It creates the slot when missing. start is where streaming starts as the sink's
// State knew before leading; the server starts from the slot's confirmed position when that
// is later, and the stream skips what the sink already holds. created reports whether this
// call created the slot.
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

func pluginArgs(publication string) []string {
	return []string{"proto_version '1'", "publication_names '" + publication + "'"}
}
