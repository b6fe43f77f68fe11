package pgwal_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/internal/syncbuf"
	"github.com/walflow/walflow/source/pgwal"
)

// waitFor polls cond every 10ms until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// checkIDs fails unless the ledger holds the inserts of ids 1..n, once each, in order.
func checkIDs(t *testing.T, h *harness, n int) {
	t.Helper()
	evs := h.waitEvents(n)
	var got []string
	for _, e := range evs {
		v, _ := e.NewRecord.Get("id")
		got = append(got, fmt.Sprint(v))
	}
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprint(i))
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("ledger ids %v, want %v", got, want)
	}
}

// TestStandbyTakesOver runs two standby sources on one shared ledger: exactly one leads;
// when it stops, the other takes the slot and goes on where it left off, nothing lost nor
// repeated.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	var leads [2]atomic.Int32
	hs := []*harness{h, {t: t, dsn: h.dsn, conn: h.conn, led: h.led, slot: h.slot}}
	for i, x := range hs {
		cfg := h.config("t")
		cfg.Standby = &pgwal.Standby{Interval: 100 * time.Millisecond, LeadFunc: func(context.Context) error {
			leads[i].Add(1)
			return nil
		}}
		x.start(cfg)
	}
	leader := func() int {
		a, b := hs[0].src.Stats().Connected.Load(), hs[1].src.Stats().Connected.Load()
		switch {
		case a && b:
			t.Fatal("both sources stream the slot")
		case a:
			return 0
		case b:
			return 1
		}
		return -1
	}
	waitFor(t, "a leader", func() bool { return leader() >= 0 })
	first := leader()
	if leads[first].Load() != 1 || leads[1-first].Load() != 0 {
		t.Fatalf("LeadFunc calls %d and %d, want 1 for the leader only", leads[0].Load(), leads[1].Load())
	}
	if pid := hs[first].src.Stats().ReplicationPID.Load(); pid == 0 {
		t.Fatal("leader reports no replication pid")
	}
	if since := hs[first].src.Stats().StreamingSince.Load(); since == 0 {
		t.Fatal("leader reports no StreamingSince")
	}
	for i := 1; i <= 5; i++ {
		h.exec(`INSERT INTO t VALUES ($1)`, i)
	}
	checkIDs(t, h, 5)
	if err := hs[first].stop(); err != nil {
		t.Fatal(err)
	}
	for i := 6; i <= 10; i++ {
		h.exec(`INSERT INTO t VALUES ($1)`, i)
	}
	waitFor(t, "the standby to lead", func() bool { return leader() == 1-first })
	checkIDs(t, h, 10)
	if leads[1-first].Load() != 1 {
		t.Fatalf("new leader's LeadFunc called %d times, want 1", leads[1-first].Load())
	}
}

// holdSlot creates the slot and starts streaming it on a replication connection that then
// reads nothing, as a frozen process or a dead machine's connection would: PostgreSQL
// keeps its walsender until wal_sender_timeout. It returns the walsender's pid.
func holdSlot(t *testing.T, h *harness) int32 {
	t.Helper()
	ctx := t.Context()
	h.exec(`CREATE PUBLICATION walflow FOR TABLE t`)
	cfg, err := pgconn.ParseConfig(h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	repl, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = repl.Close(context.Background()) })
	if _, err := pglogrepl.CreateReplicationSlot(ctx, repl, h.slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, repl, h.slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'walflow'"}}); err != nil {
		t.Fatal(err)
	}
	return int32(repl.PID())
}

func slotHolder(t *testing.T, h *harness) int32 {
	t.Helper()
	info, ok, err := pgwal.QuerySlot(t.Context(), h.conn, h.slot)
	if err != nil || !ok {
		t.Fatalf("query slot: %v (exists %v)", err, ok)
	}
	return info.ActivePID
}

// TestStandbyEndsDeadHolder: a standby whose HolderAliveFunc says no live node claims the
// walsender holding the slot ends it and leads.
func TestStandbyEndsDeadHolder(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	frozen := holdSlot(t, h)
	var mu sync.Mutex
	var asked []int32
	var claimed atomic.Int32
	cfg := h.config("t")
	cfg.Standby = &pgwal.Standby{
		Interval: 100 * time.Millisecond,
		LeadFunc: func(context.Context) error { return nil },
		ClaimFunc: func(_ context.Context, pid int32) error {
			claimed.Store(pid)
			return nil
		},
		HolderAliveFunc: func(_ context.Context, pid int32) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, pid)
			return false, nil
		},
	}
	h.start(cfg)
	h.waitConnected()
	mu.Lock()
	if len(asked) < 2 || asked[0] != frozen || asked[1] != frozen {
		t.Errorf("HolderAliveFunc asked about %v, want the frozen walsender %d twice before ending it", asked, frozen)
	}
	mu.Unlock()
	if pid := h.src.Stats().ReplicationPID.Load(); pid == 0 || pid != claimed.Load() || slotHolder(t, h) != pid {
		t.Fatalf("claimed pid %d, stats pid %d, slot holder %d: want the same", claimed.Load(), pid, slotHolder(t, h))
	}
	h.exec(`INSERT INTO t VALUES (1)`)
	checkIDs(t, h, 1)
}

// TestStandbyKeepsLiveHolder: while HolderAliveFunc says the holder is alive, the standby
// leaves it alone, says once that it stands by, and never leads.
func TestStandbyKeepsLiveHolder(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	holder := holdSlot(t, h)
	var logs syncbuf.Buffer
	var asks atomic.Int32
	var led atomic.Bool
	cfg := h.config("t")
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg.Standby = &pgwal.Standby{
		Interval: 50 * time.Millisecond,
		LeadFunc: func(context.Context) error {
			led.Store(true)
			return nil
		},
		HolderAliveFunc: func(_ context.Context, pid int32) (bool, error) {
			if pid != holder {
				t.Errorf("asked about pid %d, want %d", pid, holder)
			}
			asks.Add(1)
			return true, nil
		},
	}
	h.start(cfg)
	waitFor(t, "five holder checks", func() bool { return asks.Load() >= 5 })
	if led.Load() || h.src.Stats().Connected.Load() {
		t.Fatal("standby took the slot from a live holder")
	}
	if got := slotHolder(t, h); got != holder {
		t.Fatalf("slot holder %d, want the live holder %d", got, holder)
	}
	if n := strings.Count(logs.String(), "standing by"); n != 1 {
		t.Fatalf("standing by logged %d times, want once:\n%s", n, logs.String())
	}
}

func TestStandbyConfig(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		cfg  pgwal.Config
		want string
	}{
		{pgwal.Config{ConnString: "postgres://x@127.0.0.1/db", Standby: &pgwal.Standby{}}, "LeadFunc is nil"},
		{pgwal.Config{ConnString: "postgres://x@127.0.0.1/db", TemporarySlot: true, Standby: &pgwal.Standby{LeadFunc: func(context.Context) error { return nil }}}, "TemporarySlot"},
		{pgwal.Config{ConnString: "postgres://x@127.0.0.1/db", Standby: &pgwal.Standby{Interval: -1, LeadFunc: func(context.Context) error { return nil }}}, "negative"},
	} {
		if _, err := pgwal.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", tt.cfg, err, tt.want)
		}
	}
}
