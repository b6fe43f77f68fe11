package cluster

import (
	"context"
	"log/slog"
	"time"

	"github.com/walflow/walflow/source/pgwal"
)

// Elector connects a node's replication source to the registry, so that the node takes
// the slot over within moments of the leader's death, whatever killed it.
//
// PostgreSQL elects: the slot has one active walsender, and standbys try to start it every
// second (pgwal.Standby). When the leader's process dies, its kernel closes the connection
// and the walsender exits at once. When its machine dies or its network is cut, nothing
// tells PostgreSQL: the walsender keeps the slot until wal_sender_timeout (60s by default)
// or TCP keepalives notice. The Elector closes that gap with the registry: each contender
// publishes the process id of its replication connection before it tries the slot, and a
// standby ends (pg_terminate_backend) a walsender that holds the slot while no live node
// claims it: the leader's registry entry expired after Config.NodeTTL without heartbeat.
// The deposed leader, if it still runs, finds its connection gone and stops appending; its
// late appends are fenced by the ledger (LeadFunc).
type Elector struct {
	reg *Registry
	log *slog.Logger
}

// NewElector returns the elector of the node reg was opened as.
func NewElector(reg *Registry) *Elector {
	return &Elector{reg: reg, log: reg.log}
}

// Standby returns the pgwal.Config.Standby of this node: lead is called when the node gets
// the slot (for a JetStream ledger, its Lead method); the claim and the holder check use
// the registry. The node's heartbeat must run ([Registry.Run]) with a fill that reports
// the source's Stats.ReplicationPID (see [SourceRole]).
func (e *Elector) Standby(lead func(ctx context.Context) error) *pgwal.Standby {
	return &pgwal.Standby{
		LeadFunc:        lead,
		ClaimFunc:       e.claim,
		HolderAliveFunc: e.holderAlive,
	}
}

// claim publishes this node's entry at once, so that it names the new replication
// connection before the node tries the slot with it.
func (e *Elector) claim(ctx context.Context, pid int32) error {
	ctx, cancel := context.WithTimeout(ctx, e.reg.cfg.NodeTTL)
	defer cancel()
	return e.reg.Beat(ctx)
}

// holderAlive reports whether a live node claims the walsender pid.
func (e *Elector) holderAlive(ctx context.Context, pid int32) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.reg.cfg.NodeTTL)
	defer cancel()
	nodes, err := e.reg.Nodes(ctx)
	if err != nil {
		return false, err
	}
	for _, n := range nodes {
		if n.ReplicationPID == pid {
			return true, nil
		}
	}
	return false, nil
}

// SourceRole reads a node's role from its replication source's stats: leader while it
// streams (since when it started), standby otherwise; and the process id of its replication
// connection, for [NodeInfo].ReplicationPID.
func SourceRole(stats *pgwal.Stats) (role Role, since time.Time, pid int32) {
	pid = stats.ReplicationPID.Load()
	if ns := stats.StreamingSince.Load(); ns != 0 && stats.Connected.Load() {
		return RoleLeader, time.Unix(0, ns).UTC(), pid
	}
	return RoleStandby, time.Time{}, pid
}
