package clustershare_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/internal/clustershare"
	"github.com/walflow/walflow/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// TestLock: one session at a time gets a lock, Held sees it from another session without
// taking it, and closing the holder's connection frees it.
func TestLock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(ctx) })
		return c
	}
	a, b := connect(), connect()
	key := clustershare.IndexesLock("app")
	held := func(want bool) {
		t.Helper()
		got, err := clustershare.Held(ctx, b, key)
		if err != nil || got != want {
			t.Fatalf("Held = %v, %v; want %v", got, err, want)
		}
	}
	held(false)
	if ok, err := clustershare.TryLock(ctx, a, key); err != nil || !ok {
		t.Fatalf("TryLock on a free lock = %v, %v", ok, err)
	}
	held(true)
	if got, err := clustershare.Held(ctx, b, clustershare.OperatorsLock("app")); err != nil || got {
		t.Fatalf("Held of another lock = %v, %v; want false", got, err)
	}
	if ok, err := clustershare.TryLock(ctx, b, key); err != nil || ok {
		t.Fatalf("TryLock on a held lock = %v, %v; want false", ok, err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The server ends the holder's session, freeing the lock, soon after the close.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := clustershare.Held(ctx, b, key)
		if err != nil {
			t.Fatal(err)
		}
		if !got {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lock is still held 30 s after its holder's connection closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ok, err := clustershare.TryLock(ctx, b, key); err != nil || !ok {
		t.Fatalf("TryLock once the holder closed = %v, %v", ok, err)
	}
}

// TestKeepLock: a lock whose connection KeepLock pings outlasts the connection's idle
// timeout, and KeepLock returns an error once the connection's session ends.
func TestKeepLock(t *testing.T) {
	const idle = 2 * time.Second
	defer clustershare.SetLockIdleTimeout(idle)()
	ctx := t.Context()
	dsn := pgtest.NewDatabase(t)
	a, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	b, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	key := clustershare.IndexesLock("app")
	if ok, err := clustershare.TryLock(ctx, a, key); err != nil || !ok {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kept := make(chan error, 1)
	go func() { kept <- clustershare.KeepLock(kctx, a) }()
	for end := time.Now().Add(2 * idle); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if held, err := clustershare.Held(ctx, b, key); err != nil || !held {
			t.Fatalf("Held while KeepLock pings its connection = %v, %v", held, err)
		}
	}
	if _, err := b.Exec(ctx, `SELECT pg_terminate_backend($1)`, a.PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	if err := <-kept; err == nil {
		t.Fatal("KeepLock on a terminated session returned nil")
	}
}
