package pgwal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger"
)

// checkServer verifies wal_level and the role's REPLICATION attribute.
func checkServer(ctx context.Context, conn *pgx.Conn) error {
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("pgwal: read wal_level: %w", err)
	}
	if level != "logical" {
		return fmt.Errorf("%w: wal_level is %q; set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL", ErrWALLevel, level)
	}
	var role string
	var repl bool
	if err := conn.QueryRow(ctx, "SELECT rolname, rolreplication OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user").Scan(&role, &repl); err != nil {
		return fmt.Errorf("pgwal: read the role's attributes: %w", err)
	}
	if !repl {
		return fmt.Errorf("%w: role %q cannot stream changes; run ALTER ROLE %s WITH REPLICATION as a superuser", ErrNoReplication, role, pgx.Identifier{role}.Sanitize())
	}
	return nil
}

// checkTables verifies that each configured table exists and has a primary key, and warns
// when its replica identity is not FULL.
func checkTables(ctx context.Context, conn *pgx.Conn, tables []string, log *slog.Logger) error {
	for _, t := range tables {
		schema, name, err := splitTable(t)
		if err != nil {
			return err
		}
		var ident string
		var hasPK bool
		err = conn.QueryRow(ctx, `SELECT c.relreplident::text,
			EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
			FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, schema, name).Scan(&ident, &hasPK)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s.%s is listed in the configuration but not found; create it or remove it from tables", ErrNoTable, schema, name)
		}
		if err != nil {
			return fmt.Errorf("pgwal: inspect table %s.%s: %w", schema, name, err)
		}
		if !hasPK {
			return fmt.Errorf("%w: %s.%s; add one (ALTER TABLE %s ADD PRIMARY KEY (id)) so its changes can be identified", ErrNoPrimaryKey, schema, name, pgx.Identifier{schema, name}.Sanitize())
		}
		if ident != "f" {
			log.WarnContext(ctx, "table lacks REPLICA IDENTITY FULL: updates will have no old_record or changes, a row moving between scopes reaches only its new scope, and unchanged TOASTed columns stay marked unchanged",
				slog.String("table", schema+"."+name),
				slog.String("fix", "ALTER TABLE "+pgx.Identifier{schema, name}.Sanitize()+" REPLICA IDENTITY FULL"))
		}
	}
	return nil
}

// ensurePublication creates the publication when missing and adds configured tables it
// lacks, with a warning naming them: rows they held before produce no events.
func ensurePublication(ctx context.Context, conn *pgx.Conn, name string, tables []string, log *slog.Logger) error {
	var allTables bool
	err := conn.QueryRow(ctx, "SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = $1", name).Scan(&allTables)
	if errors.Is(err, pgx.ErrNoRows) {
		sql := "CREATE PUBLICATION " + pgx.Identifier{name}.Sanitize()
		if len(tables) == 0 {
			sql += " FOR ALL TABLES"
		} else {
			sql += " FOR TABLE " + quoteTables(tables)
		}
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("pgwal: create publication %q (%s): %w; create it yourself as a superuser or list tables in the configuration", name, sql, err)
		}
		log.InfoContext(ctx, "created publication", slog.String("publication", name), slog.Any("tables", tables))
		return nil
	}
	if err != nil {
		return fmt.Errorf("pgwal: look up publication %q: %w", name, err)
	}
	if allTables || len(tables) == 0 {
		return nil
	}
	rows, err := conn.Query(ctx, "SELECT schemaname || '.' || tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1", name)
	if err != nil {
		return fmt.Errorf("pgwal: list the tables of publication %q: %w", name, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("pgwal: list the tables of publication %q: %w", name, err)
	}
	var missing []string
	for _, t := range tables {
		s, n, _ := splitTable(t)
		found := false
		for _, h := range have {
			if h == s+"."+n {
				found = true
			}
		}
		if !found {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sql := "ALTER PUBLICATION " + pgx.Identifier{name}.Sanitize() + " ADD TABLE " + quoteTables(missing)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgwal: add tables to publication %q (%s): %w", name, sql, err)
	}
	// PostgreSQL sends a table's changes from the moment it joins the publication: its rows
	// from before never become events. Said once, now, when it is still news.
	log.WarnContext(ctx, "added tables to publication: their existing rows produce no events, only changes from now on",
		slog.String("publication", name), slog.Any("tables", missing),
		slog.String("fix", "to bring derived rows up to date, run walflow operator backfill NAME for each operator that reads these tables; consumers that need every row load the existing rows from a snapshot of the tables"))
	return nil
}

func quoteTables(tables []string) string {
	q := make([]string, len(tables))
	for i, t := range tables {
		s, n, _ := splitTable(t)
		q[i] = pgx.Identifier{s, n}.Sanitize()
	}
	return strings.Join(q, ", ")
}

// SlotInfo is the state of a replication slot as pg_replication_slots shows it.
type SlotInfo struct {
	Name           string
	Plugin         string
	Database       string
	Temporary      bool
	Active         bool
	ActivePID      int32
	ConfirmedFlush event.LSN
	RestartLSN     event.LSN
	// WALStatus is reserved, extended, unreserved or lost.
	WALStatus string
	// RetainedBytes is how much WAL the slot holds back: pg_current_wal_lsn() - restart_lsn.
	RetainedBytes int64
	// LagBytes is how far the confirmed position is behind: pg_current_wal_lsn() - confirmed_flush_lsn.
	LagBytes int64
}

// QuerySlot returns the named slot's state; ok is false when it does not exist.
func QuerySlot(ctx context.Context, conn *pgx.Conn, name string) (info SlotInfo, ok bool, err error) {
	var confirmed, restart *string
	var walStatus *string
	var pid *int32
	var retained, lag *int64
	err = conn.QueryRow(ctx, `SELECT slot_name::text, coalesce(plugin::text, ''), coalesce(database::text, ''), temporary, active, active_pid,
		confirmed_flush_lsn::text, restart_lsn::text, wal_status,
		pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint,
		pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
		FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, name).
		Scan(&info.Name, &info.Plugin, &info.Database, &info.Temporary, &info.Active, &pid, &confirmed, &restart, &walStatus, &retained, &lag)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{}, false, nil
	}
	if err != nil {
		return SlotInfo{}, false, fmt.Errorf("pgwal: query slot %q: %w", name, err)
	}
	if pid != nil {
		info.ActivePID = *pid
	}
	if confirmed != nil {
		info.ConfirmedFlush, _ = event.ParseLSN(*confirmed)
	}
	if restart != nil {
		info.RestartLSN, _ = event.ParseLSN(*restart)
	}
	if walStatus != nil {
		info.WALStatus = *walStatus
	}
	if retained != nil {
		info.RetainedBytes = *retained
	}
	if lag != nil {
		info.LagBytes = *lag
	}
	return info, true, nil
}

// checkSlot decides whether streaming may start from an existing slot, given what the
// ledger remembers. create is true when the slot is missing and may be created.
func checkSlot(info SlotInfo, exists bool, db string, st ledger.State) (create bool, err error) {
	followed := st.Head > 0 || !st.Origin.IsZero()
	if !exists {
		if followed {
			return false, fmt.Errorf("%w: slot %q does not exist, but the ledger has followed it up to %s (position %d); it was dropped (or was temporary), so changes since then are gone; %s",
				ErrSlotMissing, info.Name, maxLSN(st.AckedLSN, st.LastEndLSN), st.Head, resyncHint)
		}
		return true, nil
	}
	if info.Plugin != "pgoutput" {
		return false, fmt.Errorf("%w: slot %q uses plugin %q, walflow needs pgoutput; pick another slot name or drop it (SELECT pg_drop_replication_slot('%s'))", ErrSlotConfig, info.Name, info.Plugin, info.Name)
	}
	if info.Database != db {
		return false, fmt.Errorf("%w: slot %q belongs to database %q, not %q; pick another slot name", ErrSlotConfig, info.Name, info.Database, db)
	}
	if info.WALStatus == "lost" {
		return false, fmt.Errorf("%w: slot %q lost WAL it still needed (wal_status lost, usually max_slot_wal_keep_size exceeded while walflow was behind or stopped); changes are gone; drop the slot (SELECT pg_drop_replication_slot('%s')) and %s",
			ErrSlotInvalidated, info.Name, info.Name, resyncHint)
	}
	if info.Active {
		return false, fmt.Errorf("%w: slot %q is streaming to another process (pid %d); stop the other walflow or consumer, or give this one another slot name", ErrSlotInUse, info.Name, info.ActivePID)
	}
	if bound := maxLSN(st.AckedLSN, st.LastEndLSN); followed && info.ConfirmedFlush > bound {
		return false, fmt.Errorf("%w: slot %q is confirmed up to %s but walflow never acknowledged past %s; the slot was dropped and recreated or another client consumed it, so changes in between are missing; %s",
			ErrSlotRecreated, info.Name, info.ConfirmedFlush, bound, resyncHint)
	}
	return false, nil
}

func maxLSN(a, b event.LSN) event.LSN {
	if a > b {
		return a
	}
	return b
}

// checkOrigin compares the connected database with the one the ledger follows.
func checkOrigin(have, want ledger.Origin) error {
	if have.IsZero() {
		return nil
	}
	switch {
	case have.SystemID != want.SystemID:
		return fmt.Errorf("%w: the ledger follows database system %s, but this server is system %s (restored from a backup, or another cluster); %s", ErrOriginChanged, have.SystemID, want.SystemID, resyncHint)
	case have.Timeline != want.Timeline:
		return fmt.Errorf("%w: the ledger follows timeline %d, but the server is on timeline %d (a standby was promoted or a backup restored, so the slot's history may differ); %s", ErrOriginChanged, have.Timeline, want.Timeline, resyncHint)
	case have.Database != want.Database:
		return fmt.Errorf("%w: the ledger follows database %q, but the connection string names %q; point walflow at %q or use another ledger directory", ErrOriginChanged, have.Database, want.Database, have.Database)
	case have.Slot != want.Slot:
		return fmt.Errorf("%w: the ledger follows slot %q, but the configuration names %q; use slot %q or another ledger directory", ErrOriginChanged, have.Slot, want.Slot, have.Slot)
	}
	return nil
}
