package projector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/projector"
)

// The application's own event store, and the read model the projector builds from it.
const eventsSchema = `
	CREATE TABLE events (id bigserial PRIMARY KEY, stream_identifier text NOT NULL, type text NOT NULL, payload jsonb NOT NULL);
	CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL);
	CREATE TABLE applied (id bigint PRIMARY KEY, ord bigserial, times int NOT NULL DEFAULT 1);`

// recomputed is the balances computed from the committed events; balances is the model.
const (
	recomputed = `SELECT coalesce(string_agg(account || '=' || balance, ' ' ORDER BY account), '') FROM (
		SELECT stream_identifier AS account, sum((payload->>'amount')::bigint) AS balance FROM events GROUP BY 1) s`
	modelled = `SELECT coalesce(string_agg(account || '=' || balance, ' ' ORDER BY account), '') FROM balances`
)

// seqEnv is an engine following a fresh database with the events schema.
type seqEnv struct {
	t   *testing.T
	eng *walflow.Engine
	db  *pgxpool.Pool
	dsn string
}

func newSeqEnv(t *testing.T) *seqEnv {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	ctx := t.Context()
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if _, err := db.Exec(ctx, eventsSchema); err != nil {
		t.Fatal(err)
	}
	cfg, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: cfg.Database, MemoryLedger: true, StatusInterval: 100 * time.Millisecond,
		Tables: []channel.Table{{Name: "events"}}, ProcessStatus: "none", Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("engine: %v", err)
		}
		_ = eng.Close()
	})
	poll(t, "the engine to stream", func() bool { return eng.Status(ctx).Streaming })
	return &seqEnv{t: t, eng: eng, db: db, dsn: dsn}
}

// poll waits until cond holds, looking again every 10ms.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within 60s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// balance is the projector's handler: it applies one deposit and records the application.
func (e *seqEnv) balance(ctx context.Context, tx pgx.Tx, ev event.Event) error {
	idv, _ := ev.NewRecord.Get("id")
	ids, _ := idv.Text()
	id, err := strconv.ParseInt(ids, 10, 64)
	if err != nil {
		return err
	}
	acct, _ := ev.NewRecord.Get("stream_identifier")
	account, _ := acct.Text()
	pv, _ := ev.NewRecord.Get("payload")
	ps, _ := pv.Text()
	var payload struct{ Amount int64 }
	if err := json.Unmarshal([]byte(ps), &payload); err != nil {
		return fmt.Errorf("payload of event %d: %w", id, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO balances VALUES ($1, $2) ON CONFLICT (account) DO UPDATE SET balance = balances.balance + EXCLUDED.balance`, account, payload.Amount); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO applied (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET times = applied.times + 1`, id)
	return err
}

func (e *seqEnv) run(seq projector.SequenceConfig) *runner {
	e.t.Helper()
	r, err := projector.New(projector.Config{Ledger: e.eng.Ledger(), DB: e.db, Logger: testLogger(e.t), Projectors: []projector.Projector{
		{Name: "balances", Entities: []string{"events"}, HandleTx: e.balance, Sequence: &seq},
	}})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("Run: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	return &runner{Runner: r, stop: stop}
}

func (e *seqEnv) str(sql string) string {
	e.t.Helper()
	var s string
	if err := e.db.QueryRow(e.t.Context(), sql).Scan(&s); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// insert adds a deposit through q (a pool, or a connection inside a transaction).
func insert(t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, account string, amount int) int64 {
	t.Helper()
	var id int64
	err := q.QueryRow(t.Context(), `INSERT INTO events (stream_identifier, type, payload) VALUES ($1, 'deposited', jsonb_build_object('amount', $2::int)) RETURNING id`,
		account, amount).Scan(&id)
	if err != nil {
		t.Fatalf("insert an event: %v", err)
	}
	return id
}

// settled waits until the ledger holds every commit made so far and the projector has read
// all of it.
func (e *seqEnv) settled(r *projector.Runner) {
	e.t.Helper()
	var s string
	if err := e.db.QueryRow(e.t.Context(), "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	target, _ := event.ParseLSN(s)
	led := e.eng.Ledger()
	poll(e.t, "the ledger to hold every commit", func() bool {
		st := led.State()
		return max(st.LastEndLSN, st.AckedLSN) >= target
	})
	poll(e.t, "the projector to read the ledger", func() bool {
		st := status(r, "balances")
		return st.Seen >= led.State().Head || st.Phase == projector.Halted
	})
}

// checkOrder fails unless the committed applications (in the order of applied.ord, which
// their transactions took one after the other) have increasing ids.
func (e *seqEnv) checkOrder() {
	e.t.Helper()
	if n := e.str(`SELECT count(*)::text FROM (SELECT id, lag(id) OVER (ORDER BY ord) AS prev FROM applied) s WHERE id <= prev`); n != "0" {
		e.t.Fatalf("%s events applied after a larger id", n)
	}
}

func (e *seqEnv) order() string {
	return e.str(`SELECT coalesce(string_agg(id::text, ' ' ORDER BY ord), '') FROM applied`)
}

func TestSequenceOutOfOrderAndRollback(t *testing.T) {
	t.Parallel()
	e := newSeqEnv(t)
	ctx := t.Context()
	r := e.run(projector.SequenceConfig{Grace: 5 * time.Second})
	begin := func() pgx.Tx {
		tx, err := e.db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tx
	}

	// Id 1 commits after ids 2 and 3.
	tx1 := begin()
	if id := insert(t, tx1, "alice", 10); id != 1 {
		t.Fatalf("first id %d", id)
	}
	insert(t, e.db, "alice", 5)
	insert(t, e.db, "bob", 7)
	e.settled(r.Runner)
	if s := status(r.Runner, "balances"); s.Buffered != 2 || e.order() != "" {
		t.Fatalf("before id 1 commits: applied %q, status %+v; want nothing applied and 2 buffered", e.order(), s)
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	poll(t, "ids 1 to 3", func() bool { return e.order() == "1 2 3" })

	// Id 4 rolls back; 5 waits for it for the grace period only.
	tx4 := begin()
	insert(t, tx4, "bob", 1000)
	if err := tx4.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	insert(t, e.db, "bob", 1)
	poll(t, "id 5 after the rolled-back 4", func() bool { return e.order() == "1 2 3 5" })

	// A restart while id 7 waits for 6: 7 is read again, 1 to 5 are not applied again.
	tx6 := begin()
	insert(t, tx6, "carol", 3)
	insert(t, e.db, "carol", 4)
	e.settled(r.Runner)
	if s := status(r.Runner, "balances"); s.Buffered != 1 || s.Position >= s.Seen {
		t.Fatalf("status %+v, want id 7 buffered, the position before it", s)
	}
	r.stop()
	r2 := e.run(projector.SequenceConfig{Grace: 10 * time.Second})
	e.settled(r2.Runner)
	if err := tx6.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	poll(t, "ids 6 and 7", func() bool { return e.order() == "1 2 3 5 6 7" })
	if got, want := e.str(modelled), e.str(recomputed); got != want {
		t.Fatalf("balances %q, recomputed %q", got, want)
	}
	if n := e.str(`SELECT count(*)::text FROM applied WHERE times <> 1`); n != "0" {
		t.Fatalf("%s events applied more than once", n)
	}
	e.checkOrder()
}

func TestSequenceBufferFull(t *testing.T) {
	t.Parallel()
	e := newSeqEnv(t)
	ctx := t.Context()
	r := e.run(projector.SequenceConfig{Buffer: 3, Grace: time.Hour})
	tx1, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	insert(t, tx1, "alice", 1)
	for range 4 {
		insert(t, e.db, "alice", 1)
	}
	e.settled(r.Runner)
	s := status(r.Runner, "balances")
	if s.Phase != projector.Halted || !strings.Contains(s.Error, "reorder buffer full") || !strings.Contains(s.Error, "raise Sequence.Buffer") {
		t.Fatalf("status %+v, want halted on a full buffer", s)
	}
	if err := r.WaitLive(ctx, "balances"); err == nil {
		t.Fatal("WaitLive on a halted projector returned nil")
	}
	// With a bigger buffer, a restart applies everything once 1 commits.
	r.stop()
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := e.run(projector.SequenceConfig{Buffer: 10, Grace: time.Hour})
	if err := r2.Restart(ctx, "balances"); err != nil {
		t.Fatal(err)
	}
	poll(t, "all five", func() bool { return e.order() == "1 2 3 4 5" })
}

func TestSequenceLate(t *testing.T) {
	t.Parallel()
	e := newSeqEnv(t)
	ctx := t.Context()
	r := e.run(projector.SequenceConfig{Grace: 100 * time.Millisecond})
	tx1, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	insert(t, tx1, "alice", 1)
	insert(t, e.db, "alice", 2)
	poll(t, "id 2 after the grace", func() bool { return e.order() == "2" })
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	e.settled(r.Runner)
	s := status(r.Runner, "balances")
	if s.Phase != projector.Halted || !strings.Contains(s.Error, "after it was skipped") {
		t.Fatalf("status %+v, want halted on a late id", s)
	}
	if err := r.WaitLive(ctx, "balances"); err == nil || !strings.Contains(err.Error(), "halted") {
		t.Fatalf("WaitLive: %v", err)
	}
}

// TestSequenceConcurrentWriters has writers commit deposits from concurrent transactions,
// which take ids in one order and commit in another, some rolling back, while the
// projector is restarted; the balances must equal their recomputation, each committed event
// applied once, in id order.
func TestSequenceConcurrentWriters(t *testing.T) {
	t.Parallel()
	e := newSeqEnv(t)
	ctx := t.Context()
	seq := projector.SequenceConfig{Grace: time.Second}
	r := e.run(seq)
	const writers, txs = 6, 60
	var wg sync.WaitGroup
	var progress atomic.Int32
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range txs {
				tx, err := e.db.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				for range 1 + rng.IntN(3) {
					insert(t, tx, "acct"+strconv.Itoa(rng.IntN(5)), rng.IntN(100)-30)
				}
				// Hold the ids a moment, so later ids of other writers commit first.
				time.Sleep(time.Duration(rng.IntN(8)) * time.Millisecond)
				if rng.IntN(7) == 0 {
					err = tx.Rollback(ctx)
				} else {
					err = tx.Commit(ctx)
				}
				if err != nil {
					t.Error(err)
					return
				}
				progress.Add(1)
			}
		})
	}
	// Restart the projector twice while they write.
	for _, at := range []int32{writers * txs / 3, writers * txs * 2 / 3} {
		poll(t, "the writers' progress", func() bool { return progress.Load() >= at })
		r.stop()
		r = e.run(seq)
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	committed := e.str(`SELECT count(*)::text FROM events`)
	poll(t, "every committed event", func() bool {
		return e.str(`SELECT count(*)::text FROM applied`) == committed
	})
	if got, want := e.str(modelled), e.str(recomputed); got != want {
		t.Fatalf("balances %q, recomputed %q", got, want)
	}
	if n := e.str(`SELECT count(*)::text FROM applied a LEFT JOIN events e USING (id) WHERE e.id IS NULL OR a.times <> 1`); n != "0" {
		t.Fatalf("%s applications of rolled-back ids or repeated applications", n)
	}
	e.checkOrder()
	if s := status(r.Runner, "balances"); s.Phase == projector.Halted {
		t.Fatalf("halted: %+v", s)
	}
	t.Logf("%s events committed, %s ids rolled back", committed, e.str(`SELECT (max(id) - count(*))::text FROM events`))
}
