package pubsub_test

import (
	"context"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/ledgertest"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/pubsub"
)

// appendTx writes one transaction of comments with the given ids and makes it visible.
func appendTx(t *testing.T, l *memory.Ledger, lsn event.LSN, ids ...int) {
	t.Helper()
	ctx := t.Context()
	if err := l.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if err := l.Append(ctx, ledgertest.Event(lsn, uint32(i), "comments", id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.CommitTx(ctx, lsn+1); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

func next(t *testing.T, s *pubsub.Subscription) event.Event {
	t.Helper()
	select {
	case e, ok := <-s.Events():
		if !ok {
			t.Fatalf("subscription ended: %v", s.Err())
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return event.Event{}
}

func TestCatchUpThenLive(t *testing.T) {
	t.Parallel()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	appendTx(t, l, 10, 1, 2, 3) // positions 1..3
	appendTx(t, l, 20, 2)       // position 4

	ctx, cancel := context.WithCancel(t.Context())
	from := event.Position(1)
	s := pubsub.Subscribe(ctx, l, []string{"comments/2", "comments/3"}, &pubsub.Options{After: &from, Batch: 1})
	var got []event.Position
	for range 3 {
		got = append(got, next(t, s).Position)
	}
	appendTx(t, l, 30, 9, 3) // positions 5 (not subscribed) and 6
	got = append(got, next(t, s).Position)
	want := []event.Position{2, 3, 4, 6}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("positions %v, want %v", got, want)
		}
	}
	// Position moves just after the hand-over, so it may trail the receive briefly.
	deadline := time.Now().Add(10 * time.Second)
	for s.Position() != 6 {
		if time.Now().After(deadline) {
			t.Fatalf("Position() = %d, want 6", s.Position())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-s.Done()
	if err := s.Err(); err != nil {
		t.Fatalf("Err after cancel: %v", err)
	}
	if _, ok := <-s.Events(); ok {
		t.Fatal("Events not closed after cancel")
	}
}

func TestDefaultStartsAtHead(t *testing.T) {
	t.Parallel()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	defer l.Close()
	appendTx(t, l, 10, 1)
	s := pubsub.Subscribe(t.Context(), l, []string{"comments"}, nil)
	appendTx(t, l, 20, 2)
	if e := next(t, s); e.Position != 2 {
		t.Fatalf("first live event at %d, want 2 (history must not be replayed)", e.Position)
	}
}

func TestLedgerClosedEndsWithError(t *testing.T) {
	t.Parallel()
	l := memory.New(&memory.Options{Indexer: ledgertest.Indexer})
	s := pubsub.Subscribe(t.Context(), l, []string{"comments"}, nil)
	_ = l.Close()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription did not end when the ledger closed")
	}
	if s.Err() == nil {
		t.Fatal("Err is nil after the ledger closed")
	}
}
