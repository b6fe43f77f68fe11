package walflow

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/snapshot"
)

// SnapshotOpts are the options of [Engine.Snapshot]; nil means the first page of
// snapshot.LimitDefault rows.
type SnapshotOpts = snapshot.Opts

// SnapshotPage is a page of a channel's rows with its resume token.
type SnapshotPage = snapshot.Page

// snapshots is the engine's snapshot reader and its own pool, opened on first use.
type snapshots struct {
	mu     sync.Mutex
	pool   *pgxpool.Pool
	reader *snapshot.Reader
	closed bool
}

func (s *snapshots) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.reader != nil {
		s.reader.Close()
		s.pool.Close()
	}
}

// Snapshot reads the rows of a channel (comments, comments/7, posts/42/comments) from
// PostgreSQL in one REPEATABLE READ snapshot, a page at a time, with a token: subscribe with
// SubscribeOpts.Snapshot set to it to receive exactly the changes the rows do not contain,
// with no gap and no duplicate. Pass opts.Cursor = the previous page's Next for the next
// page, from the same snapshot. See package snapshot for the guarantee and its argument.
// It does not authorize: the realtime gateway's /snapshot endpoint does.
func (e *Engine) Snapshot(ctx context.Context, channel string, opts *SnapshotOpts) (*SnapshotPage, error) {
	r, err := e.snapshotReader()
	if err != nil {
		return nil, err
	}
	return r.Read(ctx, channel, opts)
}

func (e *Engine) snapshotReader() (*snapshot.Reader, error) {
	s := &e.snaps
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("walflow: Snapshot after Close")
	}
	if s.reader != nil {
		return s.reader, nil
	}
	pc, err := pgxpool.ParseConfig(e.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("walflow: snapshot pool: %w", err)
	}
	// Room for the paged reads' open snapshots and as many one-page reads.
	pc.MaxConns = 2 * snapshot.MaxOpenDefault
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("walflow: snapshot pool: %w", err)
	}
	r, err := snapshot.NewReader(snapshot.Config{Pool: pool, Router: e.router, Ledger: e.led})
	if err != nil {
		pool.Close()
		return nil, err
	}
	s.pool, s.reader = pool, r
	return r, nil
}
