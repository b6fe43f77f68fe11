package walflow

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// waitDatabase waits, with backoff, until the database of pool answers, so that starting
// while PostgreSQL is down or restarting waits for it as the WAL source does, instead of
// failing the operators' and process status's start-up. It reports false when ctx ended
// first.
func waitDatabase(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) bool {
	backoff := 100 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := pool.Ping(pctx)
		cancel()
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		log.WarnContext(ctx, "database not reachable; waiting to start operators and process status", slog.Any("error", err), slog.Duration("backoff", backoff))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}
