package walflow_test

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/walflow/walflow/cluster"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/projector"
)

// followComments is the README's example, compiled here so it cannot rot; TestDocsGoExamples
// checks that README.md shows exactly this code.
func followComments(ctx context.Context) error {
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: os.Getenv("DATABASE_URL"), // a role with REPLICATION; wal_level=logical
		Tables: []channel.Table{
			{Name: "posts"},
			{Name: "comments", Scopes: []channel.Scope{channel.MustParseScope("posts/{post_id}")}},
		},
	})
	if err != nil {
		return err
	}
	defer eng.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// Live events from now on; SubscribeOpts.After replays from any ledger position.
	sub, err := eng.Subscribe(ctx, nil, "posts/42/comments")
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { err := eng.Run(ctx); cancel(err); done <- err }()
	for e := range sub.Events() {
		b, _ := json.Marshal(&e)
		fmt.Printf("%s\n", b)
	}
	return <-done
}

// The functions below are the Go examples of docs/*.md, compiled here so they cannot rot;
// TestDocsGoExamples checks that every go block of README.md and docs/*.md is code of this
// package's tests.

// processStatusExample is docs/process-status.md's example.
func processStatusExample(ctx context.Context, eng *walflow.Engine, pool *pgxpool.Pool, mux *http.ServeMux,
	postsHandler http.Handler, w http.ResponseWriter, c struct{ UpdatedAt time.Time }) {
	mux.Handle("/posts/", eng.Middleware(&processstatus.MiddlewareOpts{Wait: 2 * time.Second})(postsHandler))
	// After a write: either the row's timestamp column...
	w.Header().Set("X-Walflow-Entity-Timestamp", processstatus.HeaderValue("comments", c.UpdatedAt))
	// ...or, stronger (a total order), the database position of the commit.
	lsn, _ := processstatus.CurrentLSN(ctx, pool)
	w.Header().Set("X-Walflow-LSN", lsn.String())
}

// clusterConfigExample is docs/cluster.md's configuration of one node of three.
func clusterConfigExample() walflow.Config {
	cfg := walflow.Config{
		DatabaseURL: "postgres://walflow@db:5432/app",
		Cluster: &cluster.Config{
			NodeName: "node-1", // node-2, node-3 on the others
			Server: &cluster.ServerConfig{
				Listen:        "0.0.0.0:4222",
				ClusterListen: "0.0.0.0:6222",
				Routes:        []string{"10.0.0.1:6222", "10.0.0.2:6222", "10.0.0.3:6222"},
				StoreDir:      "/var/lib/walflow/nats",
			},
		},
	}
	return cfg
}

// indexReadExample is docs/read-models.md's index example.
func indexReadExample(ctx context.Context, eng *walflow.Engine, after event.Position) ([]event.Event, error) {
	evs, err := eng.Indexes().Read(ctx, "by_user", "7", after, 100) // user 7's next 100 events
	return evs, err
}

// balances is docs/read-models.md's projector example.
var balances = projector.Projector{
	Name: "balances", Entities: []string{"events"},
	HandleTx: func(ctx context.Context, tx pgx.Tx, e event.Event) error {
		amount, _ := e.NewRecord.Get("amount") // values in PostgreSQL's text form
		account, _ := e.NewRecord.Get("account")
		a, _ := amount.Text()
		id, _ := account.Text()
		_, err := tx.Exec(ctx, `UPDATE balances SET amount = amount + $1::numeric WHERE account = $2`, a, id)
		return err
	},
}
