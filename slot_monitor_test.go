package walflow_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/pgtest"
)

// TestSlotMonitorKeepsOneConnection: the slot monitor reads the slot over one kept
// connection, poll after poll (it used to open one per poll), and connects again when that
// connection is cut, without reporting the cut as a slot error.
func TestSlotMonitorKeepsOneConnection(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	ctx := t.Context()
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	const interval = 20 * time.Millisecond
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: pc.Database, MemoryLedger: true, ProcessStatus: "none",
		Tables:         []channel.Table{{Name: "posts"}, {Name: "comments"}},
		StatusInterval: interval,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	runEngine(t, eng)

	// monitors returns the pids of the slot monitor's connections to the database.
	monitors := func() []int32 {
		t.Helper()
		var pids []int32
		err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(pid ORDER BY pid), '{}') FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'walflow_slot_monitor'`).Scan(&pids)
		if err != nil {
			t.Fatal(err)
		}
		return pids
	}
	// one waits until the only monitor connection open is one other than not, and returns
	// its pid.
	one := func(not int32) int32 {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			pids := monitors()
			if len(pids) == 1 && pids[0] != not {
				return pids[0]
			}
			if time.Now().After(deadline) {
				t.Fatalf("slot monitor connections: %v, want one (other than %d)", pids, not)
			}
			time.Sleep(interval)
		}
	}

	pid := one(0)
	// Many polls later, the same connection, and only it.
	for range 5 {
		time.Sleep(10 * interval)
		if pids := monitors(); len(pids) != 1 || pids[0] != pid {
			t.Fatalf("slot monitor connections %v after polls, want the same one, %d", pids, pid)
		}
	}

	// A cut connection is replaced; the read that finds it cut tries again over a new one.
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("terminate the monitor's connection: %v %v", ok, err)
	}
	if st := eng.Status(ctx); st.SlotError != "" || !st.SlotExists {
		t.Errorf("Status after the monitor's connection was cut: slot exists %v, error %q; want the slot read again", st.SlotExists, st.SlotError)
	}
	one(pid)
}

// TestMeasureSlot: MeasureSlot reports a missing slot as missing without creating it, an
// existing one as PostgreSQL has it, and an unreachable database as the slot's error; it
// leaves no connection behind.
func TestMeasureSlot(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	ctx := t.Context()
	slot := conn.Config().Database
	st := walflow.MeasureSlot(ctx, dsn, slot)
	if st.Slot != slot || st.SlotExists || st.SlotError != "" {
		t.Fatalf("MeasureSlot of a missing slot = %+v; want it missing, without error", st)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n); err != nil || n != 0 {
		t.Fatalf("after MeasureSlot, %d slots %s (%v); want none", n, slot, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		t.Fatal(err)
	}
	var confirmed string
	if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	st = walflow.MeasureSlot(ctx, dsn, slot)
	if !st.SlotExists || st.SlotActive || st.SlotError != "" || st.ConfirmedLSN.String() != confirmed || st.SlotWALStatus == "" {
		t.Fatalf("MeasureSlot of an inactive slot = %+v; want it inactive, confirmed at %s", st, confirmed)
	}
	// The server ends the closed connection's backend soon after.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'walflow_slot_monitor'`).Scan(&n)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after MeasureSlot, %d slot monitor connections (%v); want none", n, err)
		}
	}
	if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
		t.Fatal(err)
	}
	st = walflow.MeasureSlot(ctx, "postgres://app@127.0.0.1:1/app", slot)
	if st.SlotExists || !strings.Contains(st.SlotError, "connect to read the slot") {
		t.Fatalf("MeasureSlot of an unreachable database = %+v; want the connection's error", st)
	}
}
