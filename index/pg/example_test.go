package pg_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/pgtest"
	ledgermem "github.com/walflow/walflow/ledger/memory"
)

// Keep an index by user_id in PostgreSQL, read one user's events, and read what the
// runner wrote by position, as another node's follower does.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn, err := pgtest.DatabaseForExample(ctx) // your database's URL
	if err != nil {
		panic(err)
	}
	db, err := pgxpool.New(ctx, dsn)
	if err != nil {
		panic(err)
	}
	defer db.Close()
	store, err := pg.Open(ctx, db, nil) // tables in schema walflow, created when missing
	if err != nil {
		panic(err)
	}

	led := ledgermem.New(nil) // walflow's engine fills the ledger from PostgreSQL's WAL
	defer led.Close()
	appendRows(ctx, led, postRow("1", "7"), postRow("2", "8"), postRow("3", "7"))

	r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{index.Field("user_id", "user_id")}})
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	if err := r.Wait(ctx, "user_id", led.State().Head); err != nil {
		panic(err)
	}
	evs, err := r.Read(ctx, "user_id", "7", 0, 100)
	if err != nil {
		panic(err)
	}
	for _, e := range evs {
		fmt.Println("user 7:", e.Position, e.Type)
	}
	stop()
	if err := <-done; err != nil {
		panic(err)
	}

	err = store.EntriesSince(ctx, "user_id", 1, 3, func(e index.Entry) error {
		fmt.Printf("entry: %d %q\n", e.Position, e.Value)
		return nil
	})
	if err != nil {
		panic(err)
	}

	// Another store, as on another node, writes the index: this one's next write fails.
	other, err := pg.Open(ctx, db, nil)
	if err != nil {
		panic(err)
	}
	st, _, err := other.State(ctx, "user_id")
	if err != nil {
		panic(err)
	}
	if err := other.Write(ctx, index.Batch{Indexer: "user_id", State: st}); err != nil {
		panic(err)
	}
	err = store.Write(ctx, index.Batch{Indexer: "user_id", State: st})
	fmt.Println("fenced:", errors.Is(err, pg.ErrFenced))
	// Output:
	// user 7: 1 insert
	// user 7: 3 insert
	// entry: 2 "8"
	// entry: 3 "7"
	// fenced: true
}

func postRow(id, user string) *event.Event {
	return &event.Event{Name: "posts", Type: event.Insert, NewRecord: event.Record{
		{Name: "id", Value: event.Text(23, id)},
		{Name: "user_id", Value: event.Text(23, user)},
	}}
}

// appendRows appends events to the ledger in one transaction, as the engine does.
func appendRows(ctx context.Context, led *ledgermem.Ledger, evs ...*event.Event) {
	lsn := led.State().LastCommitLSN + 1
	if err := led.BeginTx(ctx, event.TxMeta{CommitLSN: lsn}); err != nil {
		panic(err)
	}
	for _, e := range evs {
		if err := led.Append(ctx, e); err != nil {
			panic(err)
		}
	}
	if err := led.CommitTx(ctx, lsn+1); err != nil {
		panic(err)
	}
	if err := led.Sync(ctx); err != nil {
		panic(err)
	}
}
