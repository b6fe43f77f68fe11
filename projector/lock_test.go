package projector_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/projector"
)

// Two replicas of an application run the same projector on one database: one applies the
// events, the other stands by and takes over when the first stops, and every event is
// applied exactly once.
func TestLockStandbyTakesOver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.exec(`CREATE TABLE applied (position bigint PRIMARY KEY, by_replica text NOT NULL, times int NOT NULL DEFAULT 1)`)
	b.add("accounts", 100)
	handle := func(replica string) projector.TxHandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, e event.Event) error {
			_, err := tx.Exec(ctx, `INSERT INTO applied (position, by_replica) VALUES ($1, $2)
				ON CONFLICT (position) DO UPDATE SET times = applied.times + 1`, int64(e.Position), replica)
			return err
		}
	}
	cfg := func(replica string) projector.Config {
		return projector.Config{LockInterval: 20 * time.Millisecond, BatchSize: 10,
			Projectors: []projector.Projector{{Name: "balances", HandleTx: handle(replica)}}}
	}
	a := b.run(cfg("a"))
	if err := a.WaitLive(t.Context(), "balances"); err != nil {
		t.Fatal(err)
	}
	bb := b.run(cfg("b"))
	until(t, bb.Runner, "b standing by", func() bool { return status(bb.Runner, "balances").Phase == projector.Standby })
	// The store tells which session runs it: a's lock session.
	holders, err := projector.NewPostgresStore(b.db).Holders(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	lockPID := b.int(`SELECT pid FROM pg_stat_activity WHERE application_name = 'walflow projector locks' AND datname = current_database()
		AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)`)
	if h, ok := holders["balances"]; !ok || int64(h.PID) != lockPID || h.Address == "" || h.Since.IsZero() {
		t.Fatalf("holders %+v, want balances held by pid %d", holders, lockPID)
	}
	// A restart asked of the standby changes nothing: it still stands by.
	if err := bb.Restart(t.Context(), "balances"); err != nil {
		t.Fatalf("Restart of a standby projector: %v", err)
	}
	if s := status(bb.Runner, "balances"); s.Phase != projector.Standby {
		t.Fatalf("after a restart the standby is %s", s.Phase)
	}
	b.add("accounts", 100)
	until(t, a.Runner, "a applying the new events", func() bool { return status(a.Runner, "balances").Position == 200 })
	// The standby shows the position a stored (which retention keeps), not 0.
	until(t, bb.Runner, "b showing the position a stored", func() bool {
		s := status(bb.Runner, "balances")
		return s.Phase == projector.Standby && s.Position == 200 && s.Lag == 0
	})
	// b must still stand by, having applied nothing.
	time.Sleep(100 * time.Millisecond) // five lock intervals: b would have taken a free lock
	if s := status(bb.Runner, "balances"); s.Phase != projector.Standby {
		t.Fatalf("b is %s while a holds the lock; want standby", s.Phase)
	}
	if n := b.int(`SELECT count(*) FROM applied WHERE by_replica = 'b'`); n != 0 {
		t.Fatalf("the standby applied %d events", n)
	}
	a.stop()
	if err := bb.WaitLive(t.Context(), "balances"); err != nil {
		t.Fatal(err)
	}
	b.add("accounts", 100)
	until(t, bb.Runner, "b applying the new events", func() bool { return status(bb.Runner, "balances").Position == 300 })
	if n, twice := b.int(`SELECT count(*) FROM applied`), b.int(`SELECT count(*) FROM applied WHERE times <> 1`); n != 300 || twice != 0 {
		t.Fatalf("%d events applied, %d more than once; want 300 and 0", n, twice)
	}
	if n := b.int(`SELECT count(*) FROM applied WHERE by_replica = 'b'`); n != 100 {
		t.Fatalf("b applied %d events, want the 100 after it took over", n)
	}
}

// A lost lock session (its backend terminated, as by a network cut or a PostgreSQL
// restart) stops the projectors at once; they start again once the locks are taken again.
func TestLockLostStopsThenResumes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.add("accounts", 50)
	rc := &recorder{}
	r := b.run(projector.Config{LockInterval: 20 * time.Millisecond, Projectors: []projector.Projector{
		{Name: "first", Handle: rc.handle},
		{Name: "second", DependsOn: []string{"first"}, Handle: func(context.Context, event.Event) error { return nil }},
	}})
	if err := r.WaitLive(t.Context(), "second"); err != nil {
		t.Fatal(err)
	}
	// Watch the phases from here: both must leave live (standby) before they are live again.
	left := map[string]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ch := r.Changed()
			all := true
			for _, s := range r.Status() {
				if s.Phase == projector.Standby {
					left[s.Name] = true
				}
				all = all && left[s.Name] && s.Phase == projector.Live
			}
			if all {
				return
			}
			select {
			case <-ch:
			case <-time.After(30 * time.Second):
				return
			}
		}
	}()
	if n := b.int(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'walflow projector locks' AND datname = current_database()`); n != 1 {
		t.Fatalf("terminated %d lock sessions, want 1", n)
	}
	<-done
	if !left["first"] || !left["second"] {
		t.Fatalf("after the lock session ended the projectors did not stand by: %v; status %+v", left, r.Status())
	}
	b.add("accounts", 10)
	until(t, r.Runner, "the events after the new lock", func() bool { return status(r.Runner, "first").Position == 60 })
	got := rc.positions()
	if got[len(got)-1] != 60 {
		t.Fatalf("last event handled %d, want 60", got[len(got)-1])
	}
}

// A runner whose store keeps positions in memory has no locks: its projectors start at
// once.
func TestNoLockerNoStandby(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.add("accounts", 5)
	r := b.run(projector.Config{Store: projector.NewMemoryStore(), Projectors: []projector.Projector{{Name: "m", Handle: func(context.Context, event.Event) error { return nil }}}})
	if err := r.WaitLive(t.Context(), "m"); err != nil {
		t.Fatal(err)
	}
	if n := b.int(`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'walflow projector locks' AND datname = current_database()`); n != 0 {
		t.Fatalf("%d lock sessions without a Locker", n)
	}
}
