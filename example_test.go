package walflow_test

import (
	"context"
	"fmt"
	"log"
	"os/signal"
	"syscall"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
)

// Follow a blog database and print every change to the comments of post 42, starting from
// the beginning of the ledger. (Compile-only: it needs a PostgreSQL server.)
func ExampleEngine_Subscribe() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: "postgres://app@localhost:5432/blog",
		Tables: []channel.Table{
			{Name: "posts"},
			{Name: "comments", Scopes: []channel.Scope{channel.MustParseScope("posts/{post_id}")}},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer eng.Close()
	go func() {
		if err := eng.Run(ctx); err != nil {
			log.Print(err)
			stop()
		}
	}()

	var from event.Position // 0: the whole history
	sub, err := eng.Subscribe(ctx, &walflow.SubscribeOpts{After: &from}, "posts/42/comments")
	if err != nil {
		log.Fatal(err)
	}
	for e := range sub.Events() {
		fmt.Printf("%d %s comment %v\n", e.Position, e.Type, e.Changes)
	}
	if err := sub.Err(); err != nil {
		log.Fatal(err)
	}
	// A later run can resume exactly after the last event seen with
	// SubscribeOpts{After: &last}, where last is sub.Position().
}
