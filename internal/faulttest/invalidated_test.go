package faulttest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/source/pgwal"
)

// TestSlotInvalidated stops the engine, lets PostgreSQL invalidate its slot for holding too
// much WAL (max_slot_wal_keep_size), and checks that the next Run refuses to resume past
// the lost changes and says how to resync.
func TestSlotInvalidated(t *testing.T) {
	t.Parallel()
	cluster := startCluster(t, &pgtest.Options{Settings: map[string]string{
		"max_slot_wal_keep_size": "1MB",
		"wal_keep_size":          "0",
		"min_wal_size":           "32MB",
		"max_wal_size":           "32MB",
	}})
	dsn := cluster.DSN("app")
	const slot = "walflow_invalidated"
	conn := connect(t, dsn)
	exec1(t, conn, `CREATE TABLE t (id bigserial PRIMARY KEY, pad text NOT NULL)`)
	ledgerDir := t.TempDir()

	r := startEngine(t, dsn, slot, ledgerDir, "t")
	r.waitStreaming(60 * time.Second)
	exec1(t, conn, `INSERT INTO t (pad) SELECT 'before' FROM generate_series(1, 3)`)
	waitHead(t, r.eng.Ledger(), 3, 60*time.Second)
	r.stop()

	// Write WAL while nothing consumes the slot, switching segments and checkpointing so
	// that PostgreSQL removes the segments the slot still needs.
	rounds := 0
	poll(t, 2*time.Minute, "PostgreSQL to invalidate the slot", func() (bool, string, error) {
		rounds++
		for _, sql := range []string{
			`INSERT INTO t (pad) SELECT repeat('x', 500) FROM generate_series(1, 2000)`,
			`SELECT pg_switch_wal()`,
			`CHECKPOINT`,
		} {
			if _, err := conn.Exec(t.Context(), sql); err != nil {
				return false, "", fmt.Errorf("%s: %w", sql, err)
			}
		}
		info := querySlot(t, conn, slot)
		return info.WALStatus == "lost", fmt.Sprintf("wal_status %s after %d rounds", info.WALStatus, rounds), nil
	})
	t.Logf("slot invalidated after %d rounds of writes, WAL switches and checkpoints", rounds)

	eng, err := walflow.Open(t.Context(), walflow.Config{
		DatabaseURL: dsn, Slot: slot, Tables: []channel.Table{{Name: "t"}}, LedgerDir: ledgerDir,
		StatusInterval: 200 * time.Millisecond, Logger: testLogger(t, slog.LevelInfo),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	err = eng.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("Run kept going on an invalidated slot until its context ended (returned %v)", err)
	}
	if !errors.Is(err, pgwal.ErrSlotInvalidated) {
		t.Fatalf("Run returned %v, want an error wrapping pgwal.ErrSlotInvalidated", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "to resync") || !strings.Contains(msg, "pg_drop_replication_slot") {
		t.Fatalf("the error does not say how to resync: %v", err)
	}
	if head := eng.Ledger().State().Head; head != 3 {
		t.Fatalf("ledger head %d after the refused run, want 3", head)
	}
	t.Logf("Run: %v", err)
}
