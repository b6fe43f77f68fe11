package cluster

import (
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

	started chan struct{} // closed when Run sets fill
	mu      sync.Mutex
	fill    func() NodeInfo
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
	return &Registry{kv: kv, name: cfg.NodeName, cfg: cfg, log: cfg.Logger.With(slog.String("component", "cluster")), started: make(chan struct{})}, nil
}

// Put writes this node's entry now. info.Name is set to this node's name.
func (r *Registry) Put(ctx context.Context, info NodeInfo) error {
	info.Name = r.name
	info.UpdatedAt = time.Time{}
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("cluster: encode node %q: %w", r.name, err)
	}
	if _, err := r.kv.Put(ctx, nodeKey(r.name), b); err != nil {
		return fmt.Errorf("cluster: write node %q to the registry: %w", r.name, err)
	}
	return nil
}

// Beat writes this node's entry now, filled by the function [Registry.Run] runs with.
// Before Run has started it waits for it, until ctx ends.
func (r *Registry) Beat(ctx context.Context) error {
	select {
	case <-r.started:
	case <-ctx.Done():
		return fmt.Errorf("cluster: heartbeat of node %q is not running (start Registry.Run with the replication source): %w", r.name, ctx.Err())
	}
	r.mu.Lock()
	fill := r.fill
	r.mu.Unlock()
	return r.Put(ctx, fill())
}

// Run writes this node's entry, filled by fill, every Config.Heartbeat until ctx ends, then
// removes it so the others see the node leave at once. A failed write is logged (once
// until writes succeed again) and retried at the next heartbeat: a node that cannot reach
// NATS keeps running, and drops out of the registry after Config.NodeTTL. Run returns nil
// when ctx ends.
func (r *Registry) Run(ctx context.Context, fill func() NodeInfo) error {
	r.mu.Lock()
	first := r.fill == nil
	r.fill = fill
	r.mu.Unlock()
	if first {
		close(r.started)
	}
	t := time.NewTicker(r.cfg.Heartbeat)
	defer t.Stop()
	failing := false
	for {
		pctx, cancel := context.WithTimeout(ctx, r.cfg.Heartbeat)
		err := r.Put(pctx, fill())
		cancel()
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			failing = true
			r.log.WarnContext(ctx, "heartbeat not written; retrying every heartbeat", slog.String("node", r.name), slog.Any("error", err))
		case err == nil && failing:
			failing = false
			r.log.InfoContext(ctx, "heartbeat written again", slog.String("node", r.name))
		}
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.Heartbeat)
			err := r.kv.Delete(dctx, nodeKey(r.name))
			cancel()
			if err != nil {
				r.log.InfoContext(dctx, "node entry not removed; it expires on its own", slog.String("node", r.name), slog.Any("error", err))
			}
			return nil
		case <-t.C:
		}
	}
}

// Nodes reads every live node's entry, sorted by name.
func (r *Registry) Nodes(ctx context.Context) ([]NodeInfo, error) {
	w, err := r.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
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
				r.log.WarnContext(ctx, "registry entry is not a node; skipped", slog.String("key", e.Key()), slog.Any("error", err))
				continue
			}
			n.UpdatedAt = e.Created()
			nodes = append(nodes, n)
		}
	}
}

// nodeKey is the bucket key of a node: its name (node names are valid keys).
func nodeKey(name string) string { return "node." + name }
