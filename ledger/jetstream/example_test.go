package jetstream_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/ledger/jetstream/embedded"
)

// A writer node and a reader node share a ledger on an embedded server.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "walflow-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Options{StoreDir: dir}) // sync always
	if err != nil {
		log.Fatal(err)
	}
	defer srv.WaitForShutdown()
	defer srv.Shutdown()

	indexer := func(e *event.Event, dst []string) []string { return append(dst, e.Name) }
	openNode := func() (*nats.Conn, *jetstream.Ledger) {
		nc, err := nats.Connect(srv.ClientURL())
		if err != nil {
			log.Fatal(err)
		}
		l, err := jetstream.Open(ctx, jetstream.Options{Conn: nc, Stream: "EXAMPLE", Indexer: indexer})
		if err != nil {
			log.Fatal(err)
		}
		return nc, l
	}
	wc, writer := openNode()
	defer wc.Close()
	defer writer.Close()
	rc, reader := openNode()
	defer rc.Close()
	defer reader.Close()

	// The leader writes one transaction of two events.
	if err := writer.Lead(ctx); err != nil {
		log.Fatal(err)
	}
	if err := writer.BeginTx(ctx, event.TxMeta{CommitLSN: 0x100}); err != nil {
		log.Fatal(err)
	}
	for i, table := range []string{"comments", "posts"} {
		e := &event.Event{LSN: 0x100, Ordinal: uint32(i), Name: table, Type: event.Insert, Timestamp: time.Unix(0, 0).UTC()}
		if err := writer.Append(ctx, e); err != nil {
			log.Fatal(err)
		}
	}
	if err := writer.CommitTx(ctx, 0x101); err != nil {
		log.Fatal(err)
	}
	if err := writer.Sync(ctx); err != nil {
		log.Fatal(err)
	}

	// The other node sees it at the same positions.
	if err := reader.Wait(ctx, 1); err != nil {
		log.Fatal(err)
	}
	es, err := reader.ReadKeys(ctx, []string{"posts"}, 0, 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range es {
		fmt.Println(e.Position, e.Name, e.LSN)
	}
	fmt.Println("head", reader.State().Head)
	// Output:
	// 2 posts 0/100
	// head 2
}
