package pgwal

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// failoverMinVersion is the first server_version_num whose logical slots can fail over to a
// standby (PostgreSQL 17).
const failoverMinVersion = 170000

// checkFailover refuses Config.SlotFailover on a server older than PostgreSQL 17.
func checkFailover(ctx context.Context, conn *pgx.Conn) error {
	var num int
	var version string
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, current_setting('server_version')").Scan(&num, &version); err != nil {
		return fmt.Errorf("pgwal: read the server version: %w", err)
	}
	if num < failoverMinVersion {
		return fmt.Errorf("%w: the server runs PostgreSQL %s, and only PostgreSQL 17 or newer creates slots that fail over to a standby; turn SlotFailover off (slot_failover in walflow.yaml) or upgrade the server", ErrFailoverUnsupported, version)
	}
	return nil
}

// createSlot creates the logical slot with pgoutput, without a snapshot: with failover,
// through the option list of PostgreSQL 15's syntax, which pglogrepl does not write.
func createSlot(ctx context.Context, repl *pgconn.PgConn, cfg Config) (pglogrepl.CreateReplicationSlotResult, error) {
	if !cfg.SlotFailover {
		return pglogrepl.CreateReplicationSlot(ctx, repl, cfg.Slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{Temporary: cfg.TemporarySlot, SnapshotAction: "NOEXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
	}
	// The slot name is validated (lower-case letters, digits, underscores); a failover slot
	// is never temporary (validate refuses the pair).
	sql := fmt.Sprintf("CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER true)", cfg.Slot)
	return pglogrepl.ParseCreateReplicationSlot(repl.Exec(ctx, sql))
}
