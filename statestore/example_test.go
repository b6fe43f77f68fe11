package statestore_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/statestore"
	"github.com/walflow/walflow/statestore/memory"
)

// A stateful consumer saves its state with the ledger position it reflects, and on restart
// resumes from the latest savepoint.
func Example() {
	ctx := context.Background()
	store := memory.New()

	// On start: initialize the run (nothing happens if it exists), then look for a
	// savepoint.
	if err := store.InitRun(ctx, "orders-by-customer"); err != nil {
		panic(err)
	}
	_, err := store.LatestSavepoint(ctx, "orders-by-customer")
	fmt.Println("fresh start:", errors.Is(err, statestore.ErrNoSavepoint))

	// Every so often: save the whole state with the position of the last event applied,
	// and keep only the two most recent savepoints.
	for i, pos := range []event.Position{120, 250, 310} {
		err := store.SaveSavepoint(ctx, "orders-by-customer", statestore.Savepoint{
			Timestamp: 1_700_000_000_000 + int64(i)*60_000,
			Position:  pos,
			Entities: []statestore.Entity{
				{ID: "customer:1", State: fmt.Appendf(nil, `{"orders":%d}`, i+1)},
				{ID: "customer:2", State: []byte(`{"orders":1}`)},
			},
		})
		if err != nil {
			panic(err)
		}
		if err := store.DeleteOldSavepoints(ctx, "orders-by-customer", 2); err != nil {
			panic(err)
		}
	}

	// After a restart: load the state and read the ledger after its position.
	sp, err := store.LatestSavepoint(ctx, "orders-by-customer")
	if err != nil {
		panic(err)
	}
	fmt.Println("resume after position", sp.Position, "saved at", sp.Time().UTC().Format("15:04"))
	for _, e := range sp.Entities {
		fmt.Printf("%s = %s\n", e.ID, e.State)
	}
	infos, _ := store.ListSavepoints(ctx, "orders-by-customer")
	fmt.Println("savepoints kept:", len(infos))
	// Output:
	// fresh start: true
	// resume after position 310 saved at 22:15
	// customer:1 = {"orders":3}
	// customer:2 = {"orders":1}
	// savepoints kept: 2
}
