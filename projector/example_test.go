package projector_test

import (
	"context"
	"fmt"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/projector"
)

// A projector that prints each order: it rehydrates the orders already in the ledger, then
// follows new ones live. An application gives it the engine's ledger (Engine.Ledger) and a
// database, where its position is kept; here both are in memory.
func ExampleRunner() {
	ctx := context.Background()
	led := memory.New(&memory.Options{Indexer: func(e *event.Event, dst []string) []string { return append(dst, e.Name) }})
	defer led.Close()
	order := func(lsn event.LSN, item string) {
		_ = led.BeginTx(ctx, event.TxMeta{CommitLSN: lsn, CommitTime: time.Now()})
		_ = led.Append(ctx, &event.Event{Name: "orders", Type: event.Insert, LSN: lsn,
			NewRecord: event.Record{{Name: "item", Value: event.Text(25, item)}}})
		_ = led.CommitTx(ctx, lsn+1)
		_ = led.Sync(ctx)
	}
	order(100, "tea")

	printed := make(chan struct{}, 10)
	r, err := projector.New(projector.Config{Ledger: led, Store: projector.NewMemoryStore(), Projectors: []projector.Projector{{
		Name: "order-log", Entities: []string{"public.orders"},
		Handle: func(_ context.Context, e event.Event) error {
			item, _ := e.NewRecord.Get("item")
			fmt.Printf("order %d: %s\n", e.Position, item)
			printed <- struct{}{}
			return nil
		},
	}}})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	if err := r.WaitLive(ctx, "order-log"); err != nil {
		panic(err)
	}
	order(200, "scones") // live
	<-printed
	<-printed
	stop()
	if err := <-done; err != nil {
		panic(err)
	}
	fmt.Println("stored position:", r.Status()[0].Position)
	// Output:
	// order 1: tea
	// order 2: scones
	// stored position: 2
}
