package projector

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
)

// LockIntervalDefault is the default Config.LockInterval.
const LockIntervalDefault = time.Second

// Locker keeps two processes from running the same projector at once. A [Runner] with a
// Locker opens one [LockSession] while it runs and takes each projector's lock in it before
// the projector loads its position. A projector whose lock another process holds waits in
// the [Standby] phase and takes over when that process stops or dies, so several replicas
// of an application may run the same projectors: one applies each, the others stand by.
//
// [PostgresStore] is a Locker (PostgreSQL advisory locks). The memory store is not: its
// positions live in one process anyway.
type Locker interface {
	// LockSession opens a session whose locks last until it is closed or lost.
	LockSession(ctx context.Context) (LockSession, error)
}

// LockSession holds projector locks. A Runner uses it from one goroutine at a time.
type LockSession interface {
	// TryLock takes the named projector's lock without waiting. It reports false when
	// another session holds it. Taking a lock the session holds again reports true.
	TryLock(ctx context.Context, name string) (bool, error)
	// Ping fails when the session, and so its locks, may be gone: another session may
	// hold them by now.
	Ping(ctx context.Context) error
	// Close releases every lock of the session.
	Close(ctx context.Context) error
}

// lockApplicationName names the lock sessions' connections in pg_stat_activity.
const lockApplicationName = "walflow projector locks"

// LockSession opens a connection of its own, outside the pool, so that held locks never
// take a pooled connection from the handlers. Its locks are session advisory locks keyed by
// a 64-bit hash of "walflow.projectors/" and the projector's name: PostgreSQL releases
// them when the connection ends, so a process that dies, or loses its connection, frees
// its projectors for another.
func (s *PostgresStore) LockSession(ctx context.Context) (LockSession, error) {
	cfg := s.db.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = lockApplicationName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("projector: open the connection that holds projector locks: %w", err)
	}
	return &pgLockSession{conn: conn}, nil
}

type pgLockSession struct{ conn *pgx.Conn }

func (s *pgLockSession) TryLock(ctx context.Context, name string) (bool, error) {
	var ok bool
	err := s.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended('walflow.projectors/' || $1, 0))`, name).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("projector: take the lock of %s: %w", name, err)
	}
	return ok, nil
}

func (s *pgLockSession) Ping(ctx context.Context) error {
	if err := s.conn.Ping(ctx); err != nil {
		return fmt.Errorf("projector: the connection holding projector locks: %w", err)
	}
	return nil
}

func (s *pgLockSession) Close(ctx context.Context) error { return s.conn.Close(ctx) }

var _ Locker = (*PostgresStore)(nil)

// Holder is the PostgreSQL session holding a projector's lock: the process running it.
type Holder struct {
	// PID is the session's backend process id (pg_stat_activity.pid).
	PID int32 `json:"pid"`
	// Address is the client's address, "local" over a Unix socket, or "" when the role may
	// not see it (pg_read_all_stats shows it).
	Address string `json:"address"`
	// Since is when the session began.
	Since time.Time `json:"since"`
}

// Holders returns, by name, the sessions holding the locks of the projectors stored in
// walflow.projectors: where each runs. A projector missing from the map runs nowhere, or
// in a runner without a Locker.
func (s *PostgresStore) Holders(ctx context.Context) (map[string]Holder, error) {
	// A bigint advisory key shows in pg_locks as its high half (classid) and low half
	// (objid), with objsubid 1.
	rows, err := s.db.Query(ctx, `
		SELECT p.name, a.pid, CASE WHEN a.client_addr IS NOT NULL THEN host(a.client_addr)
			WHEN a.client_port = -1 THEN 'local' ELSE '' END, a.backend_start
		FROM walflow.projectors p
		CROSS JOIN LATERAL (SELECT hashtextextended('walflow.projectors/' || p.name, 0) AS k) h
		JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
			AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND l.classid::bigint = (h.k >> 32) & 4294967295 AND l.objid::bigint = h.k & 4294967295
		JOIN pg_stat_activity a ON a.pid = l.pid`)
	if err != nil {
		return nil, fmt.Errorf("projector: read the projectors' lock holders: %w", err)
	}
	out := map[string]Holder{}
	var name string
	var h Holder
	_, err = pgx.ForEachRow(rows, []any{&name, &h.PID, &h.Address, &h.Since}, func() error {
		out[name] = h
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("projector: read the projectors' lock holders: %w", err)
	}
	return out, nil
}

// keepLocks owns the runner's lock session until ctx ends: it takes the lock of every
// projector it does not hold yet (a projector only once those it depends on are held, so
// that two processes never split a dependency chain and wait on each other), and checks
// the session every LockInterval. It tells Run on taken each projector whose lock it took,
// or nil when every lock was lost; Run starts and stops the projectors.
func (r *Runner) keepLocks(ctx context.Context, taken chan<- *proj) {
	held := map[*proj]bool{}
	told := map[*proj]bool{} // standing by, and logged
	readFailed := false      // the last read of the standby projectors' positions failed
	backoff := r.cfg.LockInterval
	var sess LockSession
	closeSess := func() {
		if sess != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = sess.Close(cctx)
			cancel()
			sess = nil
		}
	}
	defer closeSess()
	send := func(p *proj) bool {
		select {
		case taken <- p:
			return true
		case <-ctx.Done():
			return false
		}
	}
	lose := func(err error) bool {
		if ctx.Err() != nil {
			return false
		}
		if len(held) > 0 {
			r.log.WarnContext(ctx, "projector locks lost; stopping the projectors until they are taken again", slog.Any("error", err))
		}
		closeSess()
		clear(held)
		return send(nil)
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		wait := r.cfg.LockInterval
		if sess == nil {
			s, err := withTimeout(ctx, lockCallTimeout, r.locker.LockSession)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				r.log.WarnContext(ctx, "projectors cannot open their lock session; waiting", slog.Duration("delay", backoff), slog.Any("error", err))
				timer.Reset(backoff)
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			sess, backoff = s, r.cfg.LockInterval
		} else if _, err := withTimeout(ctx, lockCallTimeout, func(ctx context.Context) (struct{}, error) { return struct{}{}, sess.Ping(ctx) }); err != nil {
			if !lose(err) {
				return
			}
			timer.Reset(0)
			continue
		}
		for _, i := range r.order {
			p := r.projs[i]
			if held[p] || !allHeld(held, p.deps) {
				continue
			}
			ok, err := withTimeout(ctx, lockCallTimeout, func(ctx context.Context) (bool, error) { return sess.TryLock(ctx, p.Name) })
			if err != nil {
				if !lose(err) {
					return
				}
				wait = 0
				break
			}
			if !ok {
				if !told[p] {
					told[p] = true
					r.log.InfoContext(ctx, "projector stands by: another process holds its lock; it starts when that process stops",
						slog.String("projector", p.Name))
				}
				continue
			}
			held[p], told[p] = true, false
			if !send(p) {
				return
			}
		}
		r.readStandby(ctx, held, &readFailed)
		timer.Reset(wait)
	}
}

// readStandby reads, when the store is a [PositionReader], the stored positions of the
// projectors the runner does not hold and that stand by, so that Status shows (and a walflow
// engine's retention keeps) what the process running them stored. A failed read keeps the
// positions last read; it is logged once until a read succeeds again.
func (r *Runner) readStandby(ctx context.Context, held map[*proj]bool, failed *bool) {
	pr, ok := r.store.(PositionReader)
	if !ok {
		return
	}
	var names []string
	for _, p := range r.projs {
		if !held[p] {
			names = append(names, p.Name)
		}
	}
	if len(names) == 0 {
		return
	}
	pos, err := withTimeout(ctx, lockCallTimeout, func(ctx context.Context) (map[string]event.Position, error) {
		return pr.StoredPositions(ctx, names)
	})
	if err != nil {
		if !*failed && ctx.Err() == nil {
			r.log.WarnContext(ctx, "projectors cannot read the positions stored for those another process runs; their status keeps the positions last read", slog.Any("error", err))
		}
		*failed = true
		return
	}
	*failed = false
	moved := false
	for _, p := range r.projs {
		// Only standing by: a projector Run starts or stops keeps its own position.
		if at, ok := pos[p.Name]; ok && !held[p] && Phase(p.phase.Load()) == Standby {
			moved = p.stored.Swap(uint64(at)) != uint64(at) || moved
		}
	}
	if moved {
		r.publish()
	}
}

// lockCallTimeout bounds each call to the lock session, so that a connection that hangs
// (a half-open TCP connection) counts as lost instead of blocking the keeper.
const lockCallTimeout = 10 * time.Second

func withTimeout[T any](ctx context.Context, d time.Duration, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(ctx)
}

func allHeld(held map[*proj]bool, ps []*proj) bool {
	for _, p := range ps {
		if !held[p] {
			return false
		}
	}
	return true
}
