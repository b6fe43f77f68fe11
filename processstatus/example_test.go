package processstatus_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/processstatus/pg"
	"github.com/walflow/walflow/processstatus/processstatustest"
)

func ExampleHeaderValue() {
	// The updated_at PostgreSQL returned for the new row (INSERT ... RETURNING updated_at).
	updatedAt := time.Date(2015, 1, 31, 23, 50, 7, 123000000, time.UTC)
	fmt.Println(processstatus.HeaderValue("posts", updatedAt))
	// Output: posts/1422748207123000
}

func ExampleParseMicros() {
	for _, s := range []string{"2015-01-31 23:50:07.123+00", "2015-02-01 00:50:07.123+01", "1422748207123000"} {
		micros, err := processstatus.ParseMicros(s)
		fmt.Println(micros, err)
	}
	// Output:
	// 1422748207123000 <nil>
	// 1422748207123000 <nil>
	// 1422748207123000 <nil>
}

// The read-your-writes flow: the write handler returns the row's timestamp and the LSN after
// its commit; the read API holds requests carrying them until they are processed. In an
// application the Watermark is the operator runner (operator.Runner, whose Changed method is
// the ChangedFunc) and the ledger is the engine's.
func ExampleMiddleware() {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, "postgres://app@localhost/app")
	if err != nil {
		log.Fatal(err)
	}
	led := memory.New(nil)
	operators := processstatustest.NewWatermarks() // stands in for the operator runner
	store, err := pg.New(pg.Config{DB: conn})
	if err != nil {
		log.Fatal(err)
	}
	tracker, err := processstatus.New(processstatus.Config{
		Ledger: led, Watermark: operators, ChangedFunc: operators.Changed, Store: store,
	})
	if err != nil {
		log.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /posts", func(w http.ResponseWriter, r *http.Request) {
		var updatedAt time.Time
		err := conn.QueryRow(r.Context(), "INSERT INTO posts (title) VALUES ($1) RETURNING updated_at", "Hello").Scan(&updatedAt)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set(processstatus.HeaderEntityTimestamp, processstatus.HeaderValue("posts", updatedAt))
		if lsn, err := processstatus.CurrentLSN(r.Context(), conn); err == nil {
			w.Header().Set(processstatus.HeaderLSN, lsn.String())
		}
		w.WriteHeader(http.StatusCreated)
	})
	mux.HandleFunc("GET /post_with_comments_counts/{id}", func(w http.ResponseWriter, r *http.Request) {
		// Reached only once the client's write is processed: a missing row is a real 404.
	})
	// Wait up to 2 seconds for processing before answering 425 Too Early.
	handler := processstatus.Middleware(tracker, &processstatus.MiddlewareOpts{Wait: 2 * time.Second})(mux)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return tracker.Run(gctx) })
	g.Go(func() error { return store.Run(gctx) })
	g.Go(func() error { return http.ListenAndServe("localhost:8080", handler) })
	log.Fatal(g.Wait())
}
