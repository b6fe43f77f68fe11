package walflow

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/index"
	indexpg "github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/clustershare"
	"github.com/walflow/walflow/ledger"
	"github.com/walflow/walflow/ledger/jetstream"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/retry"
	"github.com/walflow/walflow/source/pgwal"
)

// clusterNode is what an engine with Config.Cluster adds: its NATS connection, the shared
// ledger, and its entry in the node registry.
type clusterNode struct {
	cfg     cluster.Config
	conn    *cluster.Conn
	led     *jetstream.Ledger
	reg     *cluster.Registry
	started time.Time

	httpAddr atomic.Pointer[string] // where Run serves HTTP, once it listens
	opsHeld  atomic.Bool            // this node holds the operators' lock and runs them
	idxHeld  atomic.Bool            // this node holds the indexes' lock and computes them
	idxStore index.SharedStore      // the indexes' store, shared by the nodes; nil without indexes
}

// clusterOpenRetry is how often Open retries a JetStream stream or bucket that a cluster
// still electing its leaders refuses.
const clusterOpenRetry = time.Second

// openCluster connects to NATS (or starts the embedded server), opens the shared ledger
// with the router's channels as its index, and the node registry. It retries while
// JetStream is not ready (a cluster needs a majority of its servers), until ctx ends.
func openCluster(ctx context.Context, cfg Config, router *channel.Router) (*clusterNode, error) {
	cc := *cfg.Cluster
	log := cfg.Logger.With(slog.String("component", "cluster"))
	conn, err := cluster.Connect(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("walflow: cluster: %w", err)
	}
	n := &clusterNode{cfg: cc, conn: conn, started: time.Now().UTC()}
	fail := func(err error) (*clusterNode, error) {
		if n.led != nil {
			_ = n.led.Close()
		}
		conn.Close()
		return nil, err
	}
	if err := cluster.WaitJetStream(ctx, conn.NC); err != nil {
		return fail(fmt.Errorf("walflow: cluster: %w", err))
	}
	opts := jetstream.Options{Conn: conn.NC, Stream: cc.Stream, Replicas: cc.Replicas, Indexer: router.Channels, Logger: cfg.Logger,
		IndexDir: channelIndexDir(cfg), IndexerVersion: channelIndexVersion(cfg.Tables)}
	err = retryOpen(ctx, log, "the ledger stream", func(ctx context.Context) error {
		led, err := jetstream.Open(ctx, opts)
		n.led = led
		return err
	})
	if err != nil {
		return fail(fmt.Errorf("walflow: cluster: open the ledger on stream %s: %w", cc.Stream, err))
	}
	err = retryOpen(ctx, log, "the node registry", func(ctx context.Context) error {
		reg, err := cluster.OpenRegistry(ctx, conn.NC, cc)
		n.reg = reg
		return err
	})
	if err != nil {
		return fail(fmt.Errorf("walflow: cluster: %w", err))
	}
	return n, nil
}

// channelIndexDir is where a cluster node keeps its channel index: beside LedgerDir
// (which a cluster node does not use otherwise), one directory per node name, so that
// nodes sharing a directory of configuration files on one machine do not share it.
func channelIndexDir(cfg Config) string {
	return filepath.Join(cfg.LedgerDir+".channels", cfg.Cluster.NodeName)
}

// channelIndexVersion identifies the channels the router gives each event: a channel
// index stored by a node with other table settings is rebuilt.
func channelIndexVersion(tables []channel.Table) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%#v", tables))
	return "channels/1 " + hex.EncodeToString(sum[:8])
}

// retryOpen calls open, with a 10s bound each time, until it succeeds or ctx ends: a
// JetStream cluster answers "no leader" for a while after a server starts or stops.
func retryOpen(ctx context.Context, log *slog.Logger, what string, open func(context.Context) error) error {
	for logged := false; ; {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := open(octx)
		cancel()
		if iu := (*ledger.InUseError)(nil); err == nil || ctx.Err() != nil || errors.As(err, &iu) {
			return err // a directory in use stays in use: no retry
		}
		if !logged {
			logged = true
			log.WarnContext(ctx, "JetStream not ready; retrying every second", slog.String("opening", what), slog.Any("error", err))
		}
		t := time.NewTimer(clusterOpenRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// standby is the source's pgwal.Standby: getting the slot makes this node the ledger's
// writer, and losing it makes it a reader of the stream again.
func (n *clusterNode) standby() *pgwal.Standby {
	sb := cluster.NewElector(n.reg).Standby(n.led.Lead)
	sb.ResignFunc = n.led.Resign
	return sb
}

// close closes the NATS connection and stops the embedded server; the ledger is closed by
// Engine.Close before.
func (n *clusterNode) close() { n.conn.Close() }

// nodeInfo is this node's registry entry: its role, position, HTTP address, and the
// operators, projectors and indexes it runs.
func (e *Engine) nodeInfo() cluster.NodeInfo {
	n := e.clu
	role, since, pid := cluster.SourceRole(e.src.Stats())
	info := cluster.NodeInfo{Role: role, LeaderSince: since, StartedAt: n.started, Position: uint64(e.led.State().Head), ReplicationPID: pid}
	if a := n.httpAddr.Load(); a != nil {
		info.HTTPAddr = *a
	}
	if e.ops != nil && n.opsHeld.Load() {
		for _, o := range e.ops.Operators() {
			info.Operators = append(info.Operators, o.Name)
		}
	}
	if e.idx != nil && n.idxHeld.Load() {
		for _, ix := range e.cfg.Indexers {
			info.Indexes = append(info.Indexes, ix.Name)
		}
	}
	if e.projs != nil {
		for _, s := range e.projs.Status() {
			if s.Phase == projector.Live || s.Phase == projector.Rehydrating {
				info.Projectors = append(info.Projectors, s.Name)
			}
		}
	}
	return info
}

// advertisedAddr is where other machines reach a listener on addr: with the host name in
// place of an unspecified address (0.0.0.0 or ::).
func advertisedAddr(addr net.Addr) string {
	ta, ok := addr.(*net.TCPAddr)
	if !ok || !ta.IP.IsUnspecified() {
		return addr.String()
	}
	host, err := os.Hostname()
	if err != nil {
		return addr.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(ta.Port))
}

// leading reports whether this engine appends to the ledger: always without a cluster,
// and while it streams the slot in one.
func (e *Engine) leading() bool {
	return e.clu == nil || e.src.Stats().Connected.Load()
}

// runSource runs the WAL source. In a cluster, a ledger write that fails (the stream lost
// its quorum for a while, or another node fenced this one off) ends the node's lead, not
// the engine: the source releases the slot and contends for it again, and whichever node
// gets it resumes from the slot.
func (e *Engine) runSource(ctx context.Context) error {
	if e.clu != nil {
		// The elector names the replication connection in the registry before it tries
		// the slot, which needs the heartbeat running.
		for e.clu.reg.Beat(ctx) != nil {
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
	for {
		err := e.src.Run(ctx, e.sink())
		if e.clu == nil || err == nil || ctx.Err() != nil || !errors.Is(err, ledger.ErrWriteFailed) {
			return err
		}
		e.log.WarnContext(ctx, "ledger write failed; this node stops leading and contends for the slot again", slog.Any("error", err))
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// clusterLock is a PostgreSQL session lock that makes one node of a cluster run a set of
// consumers of an instance (its operators, or its indexes) at a time.
type clusterLock struct {
	key  string       // the lock's name, hashed into the advisory lock's key
	what string       // what it runs, for the logs: "operators", "indexes"
	held *atomic.Bool // set while this node holds the lock and runs them
}

// operatorsLock is the lock of the operators of an instance.
func (e *Engine) operatorsLock() clusterLock {
	return clusterLock{key: clustershare.OperatorsLock(e.cfg.Slot), what: "operators", held: &e.clu.opsHeld}
}

// indexesLock is the lock of the custom indexes of an instance.
func (e *Engine) indexesLock() clusterLock {
	return clusterLock{key: clustershare.IndexesLock(e.cfg.Slot), what: "indexes", held: &e.clu.idxHeld}
}

// runClusterOperators runs the operators on whichever node holds their PostgreSQL session
// lock, one node at a time; the others follow the stored checkpoints (for process status
// and retention) and try the lock every second. When the holder dies, its connection
// ends, PostgreSQL frees the lock, and another node resumes every operator from its
// stored checkpoint: each batch commits its effects with its checkpoint, and only while
// the stored checkpoint is before the batch (see package operator), so nothing is applied
// twice, even by a holder that has not noticed yet that it lost the lock. A holder that
// loses its lock connection stops its operators within a second. A start that fails
// because PostgreSQL cannot be reached (retry.IsTransient: a restart, a connection cut)
// releases the lock and contends for it again after a backoff, as the indexes do; any
// other failure (a derived table missing, a bad operator) ends the node with it, as it
// ends a single node.
func (e *Engine) runClusterOperators(ctx context.Context) error {
	classify := func(err error) lockedFailure {
		if retry.IsTransient(err) {
			return backOff
		}
		return haltLocked
	}
	return e.runLocked(ctx, e.operatorsLock(), e.ops.Follow, e.ops.Run, classify)
}

// runClusterIndexes computes the custom indexes on whichever node holds their lock, into
// the store in PostgreSQL that every node shares; the other nodes follow it (see
// index.Runner.Follow), serving reads, waits, status and subscriptions from the shared
// store. When the holder dies, another node takes the lock and resumes each indexer from
// its stored checkpoint. A deposed holder that has not noticed yet cannot write behind the
// new one: the store fences its writes (index/pg's ErrFenced), and a fenced holder stops
// computing and contends for the lock again. The same happens when walflow index rebuild
// resets an index in the store, which moves its fence too (a live indexer checks it every
// 250 ms): the holder, or whichever node takes the lock next, resumes from the stored
// state, so it rebuilds the reset index. Any other failure but an indexer's (its Func
// panicked or gave a bad value, which halts the engine) is taken as passing (PostgreSQL or
// JetStream unreachable for a while): the holder releases the lock, follows, and contends
// for it again after a backoff (retry.Policy's defaults, 500 ms doubling up to 10 s).
func (e *Engine) runClusterIndexes(ctx context.Context) error {
	classify := func(err error) lockedFailure {
		switch {
		case errors.Is(err, indexpg.ErrFenced):
			return lostLock
		case retry.IsPermanent(err):
			return haltLocked
		default:
			return backOff
		}
	}
	return e.runLocked(ctx, e.indexesLock(), e.idx.Follow, e.idx.Run, classify)
}

// lockedFailure is what runLocked does when run fails.
type lockedFailure int

const (
	haltLocked lockedFailure = iota // end runLocked with the error
	lostLock                        // another node took over: contend for the lock again
	backOff                         // a passing failure: contend for the lock again after a backoff
)

// lockedHealthy is how long run must have run for a failure to start the backoff over.
const lockedHealthy = time.Minute

// runLocked runs run while this node holds l, and follow while it does not, until ctx
// ends: a node tries the lock every second, and one that loses the lock's connection stops
// run within a second. A failure of run ends runLocked, unless classify says that another
// node took over (then the node contends for the lock again) or that the failure passes
// (then it releases the lock and contends for it again after a growing backoff).
func (e *Engine) runLocked(ctx context.Context, l clusterLock, follow, run func(context.Context) error, classify func(error) lockedFailure) error {
	policy := retry.Policy{}.WithDefaults()
	attempt := 0
	var wait time.Duration
	for {
		fctx, stopFollow := context.WithCancel(ctx)
		followed := make(chan struct{})
		go func() {
			defer close(followed)
			_ = follow(fctx)
		}()
		var conn *pgx.Conn
		err := retry.Sleep(ctx, wait)
		if err == nil {
			conn, err = e.takeClusterLock(ctx, l)
		}
		stopFollow()
		<-followed
		if err != nil {
			return nil // ctx ended
		}
		rctx, stopRun := context.WithCancel(ctx)
		kept := make(chan struct{})
		go func() {
			defer close(kept)
			e.keepLock(rctx, l, conn)
			stopRun()
		}()
		e.log.InfoContext(ctx, "running the "+l.what+": this node holds their lock", slog.String("instance", e.cfg.Slot))
		l.held.Store(true)
		started := time.Now()
		err = run(rctx)
		l.held.Store(false)
		stopRun()
		<-kept
		conn.Close(context.WithoutCancel(ctx))
		if ctx.Err() != nil {
			return nil
		}
		what := haltLocked
		if err == nil {
			what = lostLock // run ended because keepLock lost the lock's connection
		} else if classify != nil {
			what = classify(err)
		}
		switch what {
		case haltLocked:
			return err
		case lostLock:
			wait = 0
			e.log.WarnContext(ctx, "lost the "+l.what+"' lock; stopped them and contending for it again", slog.String("instance", e.cfg.Slot), slog.Any("error", err))
		case backOff:
			if time.Since(started) >= lockedHealthy {
				attempt = 0
			}
			attempt++
			wait = policy.Delay(attempt)
			e.log.WarnContext(ctx, "the "+l.what+" failed; released their lock, following, and contending for it again after a backoff",
				slog.String("instance", e.cfg.Slot), slog.Duration("backoff", wait), slog.Any("error", err))
		}
	}
}

// takeClusterLock connects and takes l, trying every second until it gets it (nil error)
// or ctx ends.
func (e *Engine) takeClusterLock(ctx context.Context, l clusterLock) (*pgx.Conn, error) {
	logged := false
	for {
		conn, err := pgx.Connect(ctx, e.cfg.DatabaseURL)
		if err == nil {
			var ok bool
			ok, err = clustershare.TryLock(ctx, conn, l.key)
			if err == nil && ok {
				return conn, nil
			}
			conn.Close(context.WithoutCancel(ctx))
			if err == nil && !logged {
				logged = true
				e.log.InfoContext(ctx, "another node runs the "+l.what+"; standing by", slog.String("instance", e.cfg.Slot))
			}
		}
		if err != nil && ctx.Err() == nil {
			e.log.WarnContext(ctx, "cannot take the "+l.what+"' lock; retrying", slog.Any("error", err))
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// keepLock pings the lock's connection every second and returns when a ping fails (the
// lock may be gone) or ctx ends.
func (e *Engine) keepLock(ctx context.Context, l clusterLock, conn *pgx.Conn) {
	if err := clustershare.KeepLock(ctx, conn); err != nil {
		e.log.WarnContext(ctx, "lost the connection that holds the "+l.what+"' lock", slog.Any("error", err))
	}
}

// clusterStatus reads the registry into the cluster part of Status.
func (e *Engine) clusterStatus(ctx context.Context) *cluster.Status {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	nodes, err := e.clu.reg.Nodes(ctx)
	st := cluster.NewStatus(e.clu.cfg.NodeName, nodes, uint64(e.led.State().Head))
	if err != nil {
		st.Error = err.Error()
	}
	return &st
}

// serving reports whether the node serves what /healthz and /readyz vouch for, and why
// not: without a cluster, the engine streams the slot; in one, the node reads the shared
// stream (it is connected to NATS), leader or standby, since every node serves readers.
func (e *Engine) serving() (ok bool, reason string) {
	if e.clu == nil {
		if e.src.Stats().Connected.Load() {
			return true, ""
		}
		return false, "not streaming: the replication connection is down or starting (see the logs)"
	}
	if e.clu.conn.NC.IsConnected() {
		return true, ""
	}
	return false, "not connected to NATS: the node cannot read the cluster's stream (see the logs)"
}
