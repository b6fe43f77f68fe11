package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Role is a node's part in the cluster.
type Role string

const (
	// RoleLeader streams the replication slot into the ledger.
	RoleLeader Role = "leader"
	// RoleStandby serves readers from the stream and waits to take the slot over.
	RoleStandby Role = "standby"
)

func (r Role) String() string { return string(r) }

// NodeInfo is one node's entry in the registry, as its last heartbeat wrote it. The node
// fills every field but UpdatedAt; what it does not know it leaves zero.
type NodeInfo struct {
	// Name is the node's Config.NodeName.
	Name string `json:"name"`
	// HTTPAddr is where the node serves /status, /metrics and the realtime gateway.
	HTTPAddr string `json:"http_addr,omitempty"`
	// Role is leader or standby.
	Role Role `json:"role"`
	// LeaderSince is when the node became leader; zero for a standby.
	LeaderSince time.Time `json:"leader_since,omitzero"`
	// StartedAt is when the node started.
	StartedAt time.Time `json:"started_at,omitzero"`
	// Position is the last ledger position the node has read from the stream.
	Position uint64 `json:"position"`
	// ReplicationPID is the PostgreSQL backend process id of the node's replication
	// connection (its walsender while it leads), or 0 without one. Standbys use it to tell
	// a live leader's walsender from one a dead leader left behind.
	ReplicationPID int32 `json:"replication_pid,omitempty"`
	// Operators, Projectors and Indexes are the operators, projectors and custom indexes
	// that run on the node (hold their lock) now.
	Operators  []string `json:"operators,omitempty"`
	Projectors []string `json:"projectors,omitempty"`
	Indexes    []string `json:"indexes,omitempty"`
	// UpdatedAt is when the registry received the heartbeat (the NATS server's clock).
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Registry is the cluster's list of live nodes, kept in a JetStream key-value bucket: each
// node's heartbeat rewrites its entry, and an entry not rewritten for Config.NodeTTL
// expires, so a node that died, froze or lost NATS drops out on its own. A Registry is
// safe for concurrent use.
type Registry struct {
	kv   jetstream.KeyValue
	name string
	cfg  Config
	log  *slog.Logger

	nc      *nats.Conn    // the node's connection: reads, and writes while Run does not run
	started chan struct{} // closed when Run first sets fill
	mu      sync.Mutex
	fill    func() NodeInfo
	writeKV jetstream.KeyValue // the bucket on Run's own connection while Run runs, or nil
	wake    chan struct{}      // wakes Run's writer while it runs, or nil
	waiters []chan error       // Beats waiting for the writer's next write
}

// OpenRegistry creates the registry's bucket when missing (Config.Bucket, kept in memory
// with Config.Replicas replicas and entries that expire after Config.NodeTTL) and returns
// the registry as the node Config.NodeName sees it. cfg is filled by
// [Config.WithDefaults] and valid.
func OpenRegistry(ctx context.Context, nc *nats.Conn, cfg Config) (*Registry, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "walflow nodes: one entry per live node, rewritten by its heartbeat",
		History:     1,
		TTL:         cfg.NodeTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: open the node registry (bucket %q, %d replicas): %w", cfg.Bucket, cfg.Replicas, err)
	}
	return &Registry{kv: kv, nc: nc, name: cfg.NodeName, cfg: cfg, log: cfg.Logger.With(slog.String("component", "cluster")), started: make(chan struct{})}, nil
}

// Put writes this node's entry now. info.Name is set to this node's name. It is for a node
// that does not run [Registry.Run]: its writes are not ordered with Run's.
func (r *Registry) Put(ctx context.Context, info NodeInfo) error {
	r.mu.Lock()
	kv := cmp.Or(r.writeKV, r.kv)
	r.mu.Unlock()
	return r.put(ctx, kv, info)
}

func (r *Registry) put(ctx context.Context, kv jetstream.KeyValue, info NodeInfo) error {
	info.Name = r.name
	info.UpdatedAt = time.Time{}
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("cluster: encode node %q: %w", r.name, err)
	}
	if _, err := kv.Put(ctx, nodeKey(r.name), b); err != nil {
		return fmt.Errorf("cluster: write node %q to the registry: %w", r.name, err)
	}
	return nil
}

// Beat writes this node's entry now, filled by the function [Registry.Run] runs with, and
// returns once an entry filled after the call has landed: no older entry lands after it.
// Before Run has started it waits for it, until ctx ends; after Run returned it writes on
// the node's connection.
func (r *Registry) Beat(ctx context.Context) error {
	select {
	case <-r.started:
	case <-ctx.Done():
		return fmt.Errorf("cluster: heartbeat of node %q is not running (start Registry.Run with the replication source): %w", r.name, ctx.Err())
	}
	r.mu.Lock()
	if r.wake == nil {
		fill := r.fill
		r.mu.Unlock()
		return r.put(ctx, r.kv, fill())
	}
	done := make(chan error, 1)
	r.waiters = append(r.waiters, done)
	wake := r.wake
	r.mu.Unlock()
	select {
	case wake <- struct{}{}:
	default:
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("cluster: heartbeat of node %q: %w", r.name, ctx.Err())
	}
}

// errHeartbeatStopped answers the Beats that Run's writer did not serve before it stopped.
var errHeartbeatStopped = errors.New("the heartbeat stopped before writing; retry")

// Run writes this node's entry, filled by fill, every Config.Heartbeat until ctx ends, then
// removes it so the others see the node leave at once.
//
// The node stays in the registry as long as one of its writes lands within every
// Config.NodeTTL. Run writes on a NATS connection of its own (opened with the options of
// the connection the registry was opened with), so its small writes never queue behind
// the node's other traffic (the ledger's appends and reads). One writer fills and writes
// the entry at a time, each write with Config.NodeTTL to finish, so entries land in the
// order they were filled; a heartbeat or [Registry.Beat] that comes while a write is in
// flight is served by one fresh write after it. A write that fails is retried after a
// tenth of a heartbeat, and the failure is logged (once until writes succeed again). A
// node that cannot reach NATS keeps running, and drops out of the registry after
// Config.NodeTTL. Run returns nil when ctx ends.
func (r *Registry) Run(ctx context.Context, fill func() NodeInfo) error {
	kv := r.kv
	if nc, err := r.dial(); err != nil {
		r.log.WarnContext(ctx, "heartbeat: no connection of its own; writing on the node's connection", slog.String("node", r.name), slog.Any("error", err))
	} else {
		defer nc.Close()
		if kv, err = r.bucketOn(ctx, nc); err != nil {
			r.log.WarnContext(ctx, "heartbeat: cannot open the registry on its own connection; writing on the node's connection", slog.String("node", r.name), slog.Any("error", err))
			kv = r.kv
		}
	}
	wake := make(chan struct{}, 1)
	r.mu.Lock()
	first := r.fill == nil
	r.fill = fill
	r.writeKV = kv
	r.wake = wake
	r.mu.Unlock()
	if first {
		close(r.started)
	}
	defer func() {
		// Later Beats and Puts write on the node's connection, not on this one, which
		// closes; the Beats waiting now are told to retry.
		r.mu.Lock()
		r.writeKV, r.wake = nil, nil
		waiters := r.waiters
		r.waiters = nil
		r.mu.Unlock()
		for _, w := range waiters {
			w <- fmt.Errorf("cluster: heartbeat of node %q: %w", r.name, errHeartbeatStopped)
		}
	}()

	t := time.NewTicker(r.cfg.Heartbeat)
	defer t.Stop()
	failing := false
	for {
		r.mu.Lock()
		waiters := r.waiters
		r.waiters = nil
		r.mu.Unlock()
		pctx, cancel := context.WithTimeout(ctx, r.cfg.NodeTTL)
		err := r.put(pctx, kv, fill())
		cancel()
		for _, w := range waiters {
			w <- err
		}
		if ctx.Err() != nil {
			break
		}
		var again *time.Timer
		switch {
		case err != nil:
			if !failing {
				failing = true
				r.log.WarnContext(ctx, "heartbeat not written; retrying", slog.String("node", r.name), slog.Any("error", err))
			}
			// Retried without waiting for the next heartbeat, but not faster than a tenth
			// of one.
			again = time.NewTimer(r.cfg.Heartbeat / 10)
		case failing:
			failing = false
			r.log.InfoContext(ctx, "heartbeat written again", slog.String("node", r.name))
		}
		if again != nil {
			select {
			case <-ctx.Done():
			case <-again.C:
			}
			again.Stop()
		} else {
			select {
			case <-ctx.Done():
			case <-t.C:
			case <-wake:
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.Heartbeat)
	err := kv.Delete(dctx, nodeKey(r.name))
	cancel()
	if err != nil {
		r.log.InfoContext(dctx, "node entry not removed; it expires on its own", slog.String("node", r.name), slog.Any("error", err))
	}
	return nil
}

// dial opens a connection of the registry's own, with the options of the node's
// connection. It connects in the background, as the node's connection reconnects, when
// no server answers yet.
func (r *Registry) dial() (*nats.Conn, error) {
	opts := r.nc.Opts
	opts.Name += " (heartbeat)"
	opts.RetryOnFailedConnect = true
	opts.MaxReconnect = -1
	// The node's connection's handlers log for it; this one's state shows in its writes.
	opts.DisconnectedErrCB, opts.ReconnectedCB, opts.ClosedCB, opts.ConnectedCB = nil, nil, nil, nil
	nc, err := opts.Connect()
	if err != nil {
		return nil, fmt.Errorf("cluster: connect the heartbeat of node %q to NATS: %w", r.name, err)
	}
	return nc, nil
}

// bucketOn opens the registry's bucket on nc.
func (r *Registry) bucketOn(ctx context.Context, nc *nats.Conn) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.NodeTTL)
	defer cancel()
	kv, err := js.KeyValue(ctx, r.cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("cluster: open the node registry (bucket %q): %w", r.cfg.Bucket, err)
	}
	return kv, nil
}

// ErrNoRegistry is wrapped by [ReadNodes] when the registry's bucket does not exist: no
// node of the cluster has run yet (or Config.Bucket names another bucket).
var ErrNoRegistry = errors.New("cluster: the node registry does not exist")

// ReadNodes reads every live node's entry in the registry of the cluster cfg (filled by
// [Config.WithDefaults]), sorted by name, as [Registry.Nodes] does, for a tool that is no
// node: it only looks the bucket up, never creating or updating it, and fails with an
// error wrapping [ErrNoRegistry] when it is missing.
func ReadNodes(ctx context.Context, nc *nats.Conn, cfg Config) ([]NodeInfo, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w (bucket %q): no node has run with it yet", ErrNoRegistry, cfg.Bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: look the node registry (bucket %q) up: %w", cfg.Bucket, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return readNodes(ctx, kv, log)
}

// Nodes reads every live node's entry, sorted by name.
func (r *Registry) Nodes(ctx context.Context) ([]NodeInfo, error) {
	return readNodes(ctx, r.kv, r.log)
}

// readNodes reads every entry of the registry's bucket kv, sorted by name, logging the
// entries that are not nodes to log.
func readNodes(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) ([]NodeInfo, error) {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("cluster: read the node registry: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var nodes []NodeInfo
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: read the node registry: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("cluster: read the node registry: the watch ended early; retry")
			}
			if e == nil { // every current entry has been delivered
				slices.SortFunc(nodes, func(a, b NodeInfo) int { return strings.Compare(a.Name, b.Name) })
				return nodes, nil
			}
			var n NodeInfo
			if err := json.Unmarshal(e.Value(), &n); err != nil {
				log.WarnContext(ctx, "registry entry is not a node; skipped", slog.String("key", e.Key()), slog.Any("error", err))
				continue
			}
			n.UpdatedAt = e.Created()
			nodes = append(nodes, n)
		}
	}
}

// nodeKey is the bucket key of a node: its name (node names are valid keys).
func nodeKey(name string) string { return "node." + name }
