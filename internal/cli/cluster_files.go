package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/index"
	indexpg "github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/clustershare"
	"github.com/walflow/walflow/internal/configfile"
	ledgerjs "github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/source/pgwal"
)

// clusterFiles are what a command opens of a cluster's data: the NATS connection of the
// ledger stream, and the database pool of the shared index store.
type clusterFiles struct {
	urls   string // the NATS servers, for messages
	stream string
	slot   string
	nc     *nats.Conn
	pool   *pgxpool.Pool // nil unless opened with the indexes
}

// natsTimeout bounds a command's connection to NATS and its first JetStream request.
const natsTimeout = 10 * time.Second

// openCluster opens, for a configuration with a cluster: section, the ledger's JetStream
// stream read-only (it never leads, nor creates or updates the stream or its bucket, so it
// works beside running nodes and leaves their stream's configuration as they set it), with
// withChannels the configured tables' channels (indexed in memory from the whole stream),
// and with withIndexes the instance's share of the index store in the database that the
// nodes share (index/pg, names prefixed with the slot).
func openCluster(ctx context.Context, cmd string, c *configfile.Config, path string, withIndexes, withChannels bool) (*localFiles, error) {
	cf, err := dialCluster(cmd, c, path)
	if err != nil {
		return nil, err
	}
	return openClusterOn(ctx, cf, cmd, c, path, withIndexes, withChannels)
}

// dialCluster connects to the NATS servers of the cluster: section of c (read from path),
// for command cmd; the caller closes the connection (clusterFiles.close), or hands it to
// openClusterOn.
func dialCluster(cmd string, c *configfile.Config, path string) (*clusterFiles, error) {
	cc := *c.Engine.Cluster
	cc.Logger = slog.New(slog.DiscardHandler)
	cc = cc.WithDefaults()
	urls, err := clusterURLs(cmd, cc, path)
	if err != nil {
		return nil, err
	}
	cf := &clusterFiles{urls: strings.Join(urls, ", "), stream: cc.Stream, slot: cmp.Or(c.Engine.Slot, pgwal.SlotDefault)}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.Name("walflow "+cmd), nats.Timeout(natsTimeout))
	if err != nil {
		return nil, fmt.Errorf("%s: cannot reach the cluster's NATS servers at %s (cluster in %s): %w; start them (or a walflow run node whose cluster.server runs one), or fix cluster.urls", cmd, cf.urls, path, err)
	}
	cf.nc = nc
	return cf, nil
}

// openClusterOn is openCluster on the connection cf that dialCluster made; it closes cf
// when it fails.
func openClusterOn(ctx context.Context, cf *clusterFiles, cmd string, c *configfile.Config, path string, withIndexes, withChannels bool) (*localFiles, error) {
	router, err := channel.NewRouter(c.Engine.Tables)
	if err != nil {
		cf.close()
		return nil, fmt.Errorf("%s: tables: %w", cmd, err)
	}
	quiet := slog.New(slog.DiscardHandler)
	f := &localFiles{cmd: cmd, cfg: c, path: path, router: router, clu: cf}
	fail := func(err error) (*localFiles, error) {
		_ = f.Close()
		return nil, err
	}
	opts := ledgerjs.Options{Conn: cf.nc, Stream: cf.stream, ReadOnly: true, Logger: quiet}
	if withChannels {
		opts.Indexer = router.Channels
	}
	// ReadOnly: Open only looks the stream up, and fails with ErrStreamNotFound without it.
	led, err := ledgerjs.Open(ctx, opts)
	switch {
	case errors.Is(err, natsjs.ErrStreamNotFound):
		return fail(fmt.Errorf("%s: the ledger stream %s does not exist on the NATS servers at %s yet; walflow run --config %s creates it (or set cluster.stream to the cluster's)", cmd, cf.stream, cf.urls, path))
	case err != nil:
		return fail(fmt.Errorf("%s: open the ledger stream %s at %s: %w; JetStream must be enabled, and a cluster answers once a majority of its servers run", cmd, cf.stream, cf.urls, err))
	}
	f.led = led
	if withIndexes {
		pool, err := pgxpool.New(ctx, c.Engine.DatabaseURL)
		if err != nil {
			return fail(fmt.Errorf("%s: database_url: %w", cmd, err))
		}
		cf.pool = pool
		s, err := indexpg.Open(ctx, pool, nil)
		if err != nil {
			return fail(fmt.Errorf("%s: open the cluster's index store in the database (database_url in %s): %w", cmd, path, err))
		}
		f.store = clustershare.Prefixed{Store: s, Prefix: clustershare.IndexPrefix(cf.slot)}
	}
	return f, nil
}

// clusterURLs are the NATS servers of the cluster configuration cc: cluster.urls, or the
// client address of the server cluster.server runs in a walflow run node.
func clusterURLs(cmd string, cc cluster.Config, path string) ([]string, error) {
	if cc.Server == nil {
		return cc.URLs, nil
	}
	host, port, err := net.SplitHostPort(cc.Server.Listen)
	if err != nil || port == "0" {
		return nil, usagef("%s: cluster.server.listen %q in %s names no port this command can connect to; give the NATS servers in cluster.urls instead", cmd, cc.Server.Listen, path)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return []string{"nats://" + net.JoinHostPort(host, port)}, nil
}

// close closes the NATS connection and the database pool.
func (cf *clusterFiles) close() {
	cf.nc.Close()
	if cf.pool != nil {
		cf.pool.Close()
	}
}

// source says where a cluster command's figures come from.
func (cf *clusterFiles) source() string {
	return fmt.Sprintf("the stream %s at %s and the index store in the database", cf.stream, cf.urls)
}

// next counts looks in a row that found something: n+1 when found, else 0.
func next(n int, found bool) int {
	if found {
		return n + 1
	}
	return 0
}

// errLockLost is the cause a rebuild is cancelled with when the connection holding the
// indexes' lock fails.
var errLockLost = errors.New("lost the connection that holds the lock")

// lockRetry is how often a rebuild that waits for a node tries the indexes' lock.
const lockRetry = time.Second

// rebuildInCluster resets the index ix in the shared store and has it rebuilt, never
// computing beside a node that computes the indexes: when no node holds the indexes' lock
// (clustershare.IndexesLock), it takes the lock and rebuilds the index from the stream
// itself; otherwise the holder finds the reset (its store's fence moved) and rebuilds it,
// and rebuildInCluster waits until the stored checkpoint reaches the stream's head as of
// the reset, taking the lock itself when it finds it free twice a second apart (no node
// holds it any more). by names who rebuilt it.
func (f *localFiles) rebuildInCluster(ctx context.Context, ix index.Indexer, progress operator.ProgressFunc) (by string, err error) {
	cf := f.clu
	conn, err := pgx.Connect(ctx, f.cfg.Engine.DatabaseURL)
	if err != nil {
		return "", fmt.Errorf("%s: connect to the database to take the indexes' lock: %w", f.cmd, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	key := clustershare.IndexesLock(cf.slot)
	held, err := clustershare.TryLock(ctx, conn, key)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f.cmd, err)
	}
	if err := f.store.Reset(ctx, ix.Name); err != nil {
		return "", fmt.Errorf("%s: reset %s in the index store: %w", f.cmd, ix.Name, err)
	}
	head := f.led.State().Head
	started := time.Now()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	lastTry := time.Now()
	free := 0 // looks in a row that found the lock free
	for !held {
		st, ok, err := f.store.State(ctx, ix.Name)
		if err != nil {
			return "", fmt.Errorf("%s: read the state of %s: %w", f.cmd, ix.Name, err)
		}
		done := ok && st.Checkpoint >= head
		if progress != nil {
			p := operator.BackfillProgress{Operator: ix.Name, Entity: "events", Total: int64(head), Started: started, At: time.Now(), Finished: done}
			if ok {
				base := min(st.Since, head)
				p.Done, p.Total = int64(min(st.Checkpoint, head)-base), int64(head-base)
			}
			progress(p)
		}
		if done {
			return "the node holding the lock " + key, nil
		}
		if time.Since(lastTry) >= lockRetry {
			// A node that the reset fenced releases the lock and takes it again at once:
			// only a lock free at two looks a second apart has no node to compute.
			lastTry = time.Now()
			taken, err := clustershare.Held(ctx, conn, key)
			if err != nil {
				return "", fmt.Errorf("%s: %w", f.cmd, err)
			}
			if free = next(free, !taken); free >= 2 {
				if held, err = clustershare.TryLock(ctx, conn, key); err != nil {
					return "", fmt.Errorf("%s: %w", f.cmd, err)
				}
				if held {
					break
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%s: wait for the node holding the lock %s to rebuild %s: %w", f.cmd, key, ix.Name, ctx.Err())
		case <-tick.C:
		}
	}
	// This process holds the indexes' lock: no node computes them until it ends. Pinging
	// the lock's connection keeps its session from idling out (which frees the lock); a
	// failed ping cancels the rebuild, since a node may compute beside it from then on.
	kctx, cancel := context.WithCancelCause(ctx)
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		if err := clustershare.KeepLock(kctx, conn); err != nil {
			cancel(fmt.Errorf("%w: %w", errLockLost, err))
		}
	}()
	defer func() {
		cancel(nil)
		<-kept
	}()
	r, err := f.runner([]index.Indexer{ix})
	if err != nil {
		return "", err
	}
	if err := f.catchUp(kctx, r, progress); err != nil {
		if cause := context.Cause(kctx); errors.Is(cause, errLockLost) {
			return "", fmt.Errorf("%s: rebuild %s: the lock %s was lost (%w); a node may compute the indexes now: run walflow index rebuild %s again", f.cmd, ix.Name, key, cause, ix.Name)
		}
		return "", err
	}
	return "this command, holding the lock " + key, nil
}
