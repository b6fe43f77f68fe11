package faulttest

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/source/pgwal"
)

const (
	// retainedWrites is how much WAL the unrelated writes produce, well above the bound.
	retainedWrites = 192 << 20
	// retainedBound is what the slot may keep once the writes are over.
	retainedBound = 64 << 20
)

// TestUnrelatedWritesDoNotRetainWAL follows an idle table while another table, outside the
// publication, takes heavy writes, and checks that the slot lets PostgreSQL recycle that
// WAL: restart_lsn catches up, so the retained WAL falls back under a bound, and the
// confirmed position passes the writes.
func TestUnrelatedWritesDoNotRetainWAL(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	slot := dbName(t, dsn)
	conn := connect(t, dsn)
	exec1(t, conn, `CREATE TABLE followed (id int PRIMARY KEY); CREATE TABLE unrelated (id bigserial PRIMARY KEY, pad text NOT NULL)`)
	r := startEngine(t, dsn, slot, t.TempDir(), "followed")
	r.waitStreaming(60 * time.Second)
	exec1(t, conn, `INSERT INTO followed VALUES (1)`)
	led := r.eng.Ledger()
	waitHead(t, led, 1, 60*time.Second)

	start := currentLSN(t, conn)
	var peak int64
	statements := 0
	for lsn := start; lsn-start < retainedWrites; lsn = currentLSN(t, conn) {
		// About 8 MiB of WAL per statement, each its own transaction.
		exec1(t, conn, `INSERT INTO unrelated (pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 6000) g`)
		statements++
		if info := querySlot(t, conn, slot); info.RetainedBytes > peak {
			peak = info.RetainedBytes
		}
	}
	end := currentLSN(t, conn)
	t.Logf("%d transactions wrote %.0f MiB of WAL to an unpublished table; the slot retained up to %.0f MiB meanwhile",
		statements, float64(end-start)/(1<<20), float64(peak)/(1<<20))

	after := time.Now()
	var info pgwal.SlotInfo
	poll(t, 2*time.Minute, "the slot to release the WAL of the unrelated writes", func() (bool, string, error) {
		info = querySlot(t, conn, slot)
		return info.RetainedBytes < retainedBound && info.ConfirmedFlush >= end,
			fmt.Sprintf("retained %.1f MiB (restart_lsn %s), confirmed %s, writes ended at %s",
				float64(info.RetainedBytes)/(1<<20), info.RestartLSN, info.ConfirmedFlush, end), nil
	})
	t.Logf("%s after the writes: retained %.1f MiB (restart_lsn %s), confirmed %s past the writes' end %s",
		time.Since(after).Round(100*time.Millisecond), float64(info.RetainedBytes)/(1<<20), info.RestartLSN, info.ConfirmedFlush, end)
	if info.RestartLSN < start {
		t.Fatalf("restart_lsn %s is still before the writes began at %s", info.RestartLSN, start)
	}

	// The unrelated writes never reached the ledger, and the followed table still does.
	if head := led.State().Head; head != 1 {
		t.Fatalf("ledger head %d after unrelated writes, want 1", head)
	}
	exec1(t, conn, `INSERT INTO followed VALUES (2)`)
	waitHead(t, led, 2, 60*time.Second)
	r.stop()
}

// querySlot reads the slot's state from pg_replication_slots.
func querySlot(t *testing.T, conn *pgx.Conn, slot string) pgwal.SlotInfo {
	t.Helper()
	info, ok, err := pgwal.QuerySlot(t.Context(), conn, slot)
	if err != nil || !ok {
		t.Fatalf("slot %s: exists %v, error %v", slot, ok, err)
	}
	return info
}
