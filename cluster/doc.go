// Package cluster runs walflow on several nodes that share one ledger on NATS JetStream.
//
// # Concepts
//
// A node is one walflow process. Every node connects to the same NATS servers ([Config]
// URLs) or runs one of them in-process ([ServerConfig], routed to the others'), and reads
// the ledger from the same JetStream stream. Exactly one node, the leader, streams the
// PostgreSQL replication slot into the ledger; the others are standbys.
//
// Leadership is PostgreSQL's: a logical replication slot has at most one active reader, so
// the node whose START_REPLICATION succeeds leads, and a standby that tries while the slot
// is active gets SQLSTATE 55006 and keeps trying (see pgwal.Standby). The [Elector] adds
// what PostgreSQL cannot know: when the leader's machine is gone or cut off, its walsender
// stays active until wal_sender_timeout; a standby that sees the slot held by a walsender
// no live node claims in the [Registry] ends it, and takes the slot.
//
// The [Registry] is a JetStream key-value bucket with one entry per live node, rewritten by
// the node's heartbeat and expiring after Config.NodeTTL. [NewStatus] turns it into the
// cluster part of /status.
//
// # Testing
//
// [StartLocalCluster] starts one or more routed servers on loopback, each of which can be
// stopped and restarted, for tests and for walflow demo --cluster.
package cluster
