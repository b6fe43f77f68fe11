// Package faulttest holds walflow's fault-injection tests, which run the whole pipeline
// (PostgreSQL, the pgwal source, the engine, the disk ledger) against real servers and break
// it on purpose. It has no code of its own: everything is in its tests.
//
// # Tests
//
//   - TestCrashSafety runs the pipeline as a child process (internal/testcmd/pipeline),
//     SIGKILLs it at random moments while two writers commit inserts, updates and deletes in
//     transactions of 1 to 200 rows, restarts it each time, and checks that the ledger holds
//     every committed change exactly once, in commit order, against the writers' own log and
//     an audit row each transaction writes.
//   - TestOperatorCrashConsistency runs the child with operators (a comments count, a sum
//     and average of ratings, a table derived from both derived tables, and a per-event
//     effect counter) while a writer commits 50,000 random changes, SIGKILLs it at 30 random
//     moments, and checks that every derived table equals its recomputation from the source
//     tables, that each event was applied exactly once and that no operator halted.
//   - ParkingUnderKills (in TestPipelineProcess) runs two parking operators (on_failure
//     park: a recomputed comments count and a one-by-one tally of inserts) while one derived
//     row fails for 15 s, a writer commits 10,000 comment changes and the child is SIGKILLed
//     twice. Every other row equals its recomputation at each check, no operator halts, and
//     after the cause is fixed and a retry requested every row does: no parked event was
//     lost or applied twice.
//   - TestProjectorCrashConsistency runs an event-sourced application: writers commit
//     deposits into their own events table from concurrent transactions whose ids commit out
//     of order and some of which roll back, while the child (internal/testcmd/projector)
//     builds a balance read model with a projector in application-sequence mode and a second
//     projector depending on it. It SIGKILLs the child at 20 random moments and checks that
//     the balances equal their recomputation from the events and that each projector
//     applied each committed event exactly once, in id order.
//   - TestMillionRowTransaction streams one transaction of 1,000,000 rows through the child
//     and checks its peak resident set size and the ledger's positions.
//   - TestUnrelatedWritesDoNotRetainWAL checks that a slot whose tables stay idle while
//     other tables take heavy writes lets PostgreSQL recycle the WAL (restart_lsn moves).
//   - TestPostgresRestarts restarts a dedicated PostgreSQL cluster five times, fast and
//     immediate, under a writer, and compares the ledger with the table.
//   - TestDiskFull runs walflow run (cmd/walflow) with each ledger backend on a 64 MiB tmpfs
//     that a writer fills, checks that it exits with status 1 and an error naming the
//     directory and "no space left on device" (no panic), that the slot is not confirmed
//     past what the ledger holds, and that after space returns a second run brings the
//     ledger to every committed row once, in commit order. It needs root, to mount.
//   - TestClusterFaults runs three walflow run children (cmd/walflow) as one cluster on a
//     three-server JetStream cluster, with a writer committing throughout; it SIGKILLs the
//     leader WALFLOW_CLUSTER_KILLS times (10 by default, about 3 minutes; 3 for a quicker
//     run) at random moments and stops one NATS server for 20 s, then checks that the
//     stream holds every committed change once in commit order, that the SQL operator's
//     table equals its recomputation, and that an SSE client per node, resuming on the
//     next node whenever its stream ends, got every event once, in order. It logs the
//     takeover times.
//   - TestSlotInvalidated makes PostgreSQL invalidate the slot (max_slot_wal_keep_size)
//     while walflow is stopped, and checks that Run refuses to resume, saying how to resync.
//
// # Running
//
// The tests need the PostgreSQL server binaries (see internal/pgtest) and the go command,
// which builds the child processes once per test that uses it, without -race so that its
// memory use is realistic:
//
//	go test -race ./internal/faulttest/
package faulttest
