package index_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmem "github.com/walflow/walflow/index/memory"
	ledgermem "github.com/walflow/walflow/ledger/memory"
)

// Index the ledger by user_id and by a custom indexer, then read one user's events and
// follow the "indexed" notifications.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	led := ledgermem.New(nil) // walflow's engine fills the ledger from PostgreSQL's WAL
	defer led.Close()
	appendRows(ctx, led,
		postRow("1", "7", "go"), postRow("2", "8", "go db"), postRow("3", "7", ""),
	)

	// A custom indexer: zero, one or many values per event.
	words := index.Indexer{
		Name:    "tag",
		Version: "1",
		Func: func(e *event.Event, dst []string) []string {
			if v, ok := e.ID("tags"); ok {
				s, _ := v.Text()
				dst = append(dst, strings.Fields(s)...)
			}
			return dst
		},
	}
	r, err := index.New(index.Config{
		Ledger:   led,
		Store:    indexmem.New(), // index/disk keeps the indexes across restarts
		Indexers: []index.Indexer{index.Field("user_id", "user_id"), index.Type("type"), words},
	})
	if err != nil {
		panic(err)
	}
	sub, err := r.Subscribe(ctx, []string{"tag"}, nil)
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()

	for range 2 { // events 1 and 2 have tags; event 3 has none
		n := <-sub.Notifications()
		fmt.Printf("indexed: %s at %d %q\n", n.Indexer, n.Position, n.Values)
	}
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
	// Output:
	// indexed: tag at 1 ["go"]
	// indexed: tag at 2 ["go" "db"]
	// user 7: 1 insert
	// user 7: 3 insert
}

func postRow(id, user, tags string) *event.Event {
	return &event.Event{Name: "posts", Type: event.Insert, NewRecord: event.Record{
		{Name: "id", Value: event.Text(23, id)},
		{Name: "user_id", Value: event.Text(23, user)},
		{Name: "tags", Value: event.Text(25, tags)},
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

// Two runners share one store: one computes the index, the other follows it and answers
// reads, waits and notifications from the shared store. In a walflow cluster each node has
// a runner on the shared stream and on index/pg, and the holder of a lock computes.
func ExampleRunner_Follow() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	led := ledgermem.New(nil)
	defer led.Close()
	store := indexmem.New() // index/pg shares it between processes
	newRunner := func() *index.Runner {
		r, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{index.Field("user_id", "user_id")},
			FollowInterval: 10 * time.Millisecond})
		if err != nil {
			panic(err)
		}
		return r
	}
	writer, follower := newRunner(), newRunner()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- writer.Run(runCtx) }()
	go func() { done <- follower.Follow(runCtx) }()

	appendRows(ctx, led, postRow("1", "7", ""), postRow("2", "8", ""))
	if err := follower.Wait(ctx, "user_id", 2); err != nil {
		panic(err)
	}
	ps, err := follower.Positions(ctx, "user_id", "8", 0, 10)
	if err != nil {
		panic(err)
	}
	sts, err := follower.Status(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("user 8 at", ps, "following:", sts[0].Following)
	stop()
	for range 2 {
		if err := <-done; err != nil {
			panic(err)
		}
	}
	// Output: user 8 at [2] following: true
}
