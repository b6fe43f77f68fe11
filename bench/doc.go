// Package bench holds walflow's end-to-end benchmarks. It has no code of its own: only
// tests and benchmarks that run the whole engine against a real PostgreSQL.
//
// # Drain
//
// BenchmarkDrain measures how fast walflow drains a backlog of row changes from a logical
// replication slot into its disk ledger (decoding every value, with the channel index),
// against pg_recvlogical writing the same slot's pgoutput stream to /dev/null with the
// options walflow streams with (proto_version 1, the same publication). The changes are
// to two REPLICA IDENTITY FULL tables, posts and comments (comments with the scope
// posts/{post_id}), 50% inserts, 35% updates and 15% deletes of each. There are two
// backlogs, reported separately:
//
//   - bulk: 1,000,000 changes in 100-row transactions (five 20-row statements each);
//   - single: 300,000 changes in 1-row transactions.
//
// Each backlog is written once behind one slot; each drain reads its own copy of that slot
// (pg_copy_logical_replication_slot), so every drain reads the identical backlog. The
// drains alternate in rounds of pg_recvlogical, walflow, walflow, pg_recvlogical, so
// neither client always goes first. walflow runs in a child process (the test binary,
// re-executed), so that its CPU time and peak RSS are its own as pg_recvlogical's are; a
// drain runs from starting the client's process to the backlog drained (for walflow, durable
// in its ledger), start-up included for both.
//
// For each backlog it reports, with the backlog's name as prefix, walflow_changes/s,
// recvlogical_changes/s, their ratio (walflow over pg_recvlogical), walflow_cpu_us/change
// and recvlogical_cpu_us/change (the client process's user and system CPU time over its
// drains, per change), cpu_ratio (walflow's over pg_recvlogical's) and walflow_peak_rss_MiB,
// and logs each drain and a Markdown table row for docs/performance.md. The bars (walflow at 0.75×
// pg_recvlogical's rate or more, peak RSS under 256 MiB) are logged when missed, not
// asserted. Run it with
//
//	go test -v -run '^$' -bench BenchmarkDrain -benchtime 1x -timeout 60m ./bench
//
// with -drain.bulk=N (a multiple of 200) and -drain.single=N (a multiple of 2) for other
// backlog sizes, 0 to skip one, and -drain.rounds=N for more or fewer rounds (default 2);
// the environment variables WALFLOW_BENCH_DRAIN_BULK, _SINGLE and _ROUNDS set the same.
// With -short it runs the smoke test's sizes. Without -v a benchmark's log is cut to ten
// lines.
//
// The long drain, off by default, drains one bulk-shaped backlog of -drain.long changes
// (WALFLOW_BENCH_DRAIN_LONG, e.g. 10000000) with walflow alone and reports
// long_first_changes/s and long_last_changes/s (over its first and last -drain.window
// events, 1,000,000 by default), long_peak_rss_MiB and long_ledger_bytes/change (the
// ledger directory's size after the drain over the changes).
//
// TestDrainSmoke runs the same code on small backlogs in every `go test` and checks that
// walflow's ledger holds exactly the changes generated, by table and type, with every old
// record, and that the channel index returns a scoped channel's events.
//
// On a machine with few cores the client competes with the walsender for CPU, and a client
// that reads each message as it arrives makes the walsender work harder than one that
// reads in bulk, so the rates there say as much about scheduling as about the clients:
// compare them within one run, and repeat runs. The CPU per change is the steadier figure.
//
// # Fan-out
//
// BenchmarkFanout measures the realtime gateway fanning events out over Server-Sent Events
// on one node: 10,000 SSE clients over loopback, 1,000 on each of 10 scoped channels
// (posts/N/comments), while 1,000 events/s (one comment per transaction, round-robin over
// the posts) are committed for 10 seconds, on its own cluster with fsync and
// synchronous_commit on. The gateway runs in a child process (internal/testcmd/gateway:
// the engine with its disk ledger and the gateway on 127.0.0.1), so that its peak RSS is
// its own. The clients are bare sockets with a minimal HTTP/1.1 and SSE parser in the
// benchmark process. A message's latency runs from its event's commit timestamp (taken by
// PostgreSQL, in microseconds, from the same clock) to the client's read that returned it.
// The baseline is an in-process subscriber (Engine.Subscribe) on the same channels in the
// gateway process, in the same run.
//
// It reports p50-ms and p99-ms over every delivery, msgs/s (deliveries over the time from
// the first commit to the last delivery), lost, gateway-rss-MiB (the gateway process's
// VmHWM), baseline-p50-ms, baseline-p99-ms and p99-ratio (the clients' p99 over the
// baseline's), and logs the CPU time each process used, the gateway process's GC and
// scheduling delays, and a Markdown table row for docs/performance.md. It fails when a delivery is
// lost (a stream the gateway ends, as overflow for instance, counts: the client does not
// resume), duplicated, out of order or on the wrong channel, or when a client's sequence
// of positions differs from the baseline's. The bars (p99 under 100 ms, RSS under 1 GiB)
// are logged when missed, not asserted. Run it with
//
//	go test -run '^$' -bench BenchmarkFanout -benchtime 1x -timeout 30m ./bench
//
// with -fanout.clients, -fanout.channels, -fanout.rate (events/s), -fanout.duration and
// -fanout.buffer (GatewayConfig.Buffer) and -fanout.flush (GatewayConfig.FlushInterval)
// for other loads and settings, and -fanout.cpuprofile=FILE for a
// CPU profile of the gateway process. Each process needs a file descriptor per client; the
// benchmark raises its soft limit to the hard one. TestFanoutSmoke runs the same code with
// 200 clients for 2 seconds in every `go test`.
//
// The gateway, the clients and PostgreSQL share the machine's cores: the logged CPU times
// say how they were shared, and the commit rate achieved says whether PostgreSQL kept up.
//
// # Fan-out floor
//
// BenchmarkFanoutFloor measures what the same fan-out costs this machine with nothing of
// walflow in it: the same 10,000 clients on 10 channels, 1,000 messages/s of the size of a
// comment's SSE message, sent by the least a server can do (each message appended to each
// member's buffer, written by a goroutine per connection as soon as it has bytes, or by
// one sweeper per core every -floor.flush interval) over loopback TCP to clients that
// only read and time the messages, in a child process. There is no PostgreSQL, ledger,
// HTTP or rendering, and a message's latency runs from its send, not from a commit. It
// reports p50-ms, p99-ms, msgs/s, server-cores and client-cores per write interval, and
// fails only when a message is lost or out of order. When the floor misses a latency bar
// at a load, no gateway on this machine can meet it there. Run it with
//
//	go test -run '^$' -bench BenchmarkFanoutFloor -benchtime 1x -timeout 20m ./bench
//
// with -floor.clients, -floor.channels, -floor.rate, -floor.duration, -floor.size and
// -floor.flush (comma-separated intervals, 0 for a writer per connection) for other loads.
// TestFanoutFloorSmoke runs it with 50 clients in every `go test`.
//
// # Cluster fan-out
//
// BenchmarkClusterFanout measures realtime fan-out spread over three `walflow run` nodes of
// one cluster (an R3 stream on three JetStream servers in the benchmark's process) against
// one node at the same total load: 1,500 SSE clients on 10 channels and 200 events/s for
// 20 s, all on one node, then a third on each of three. It reports msgs/s, p99-ms and
// cpu-µs/msg (the walflow processes' CPU per delivered message) for each shape, and their
// ratios, and fails only when a message is lost, duplicated or misordered. Run it with
//
//	go test -run '^$' -bench BenchmarkClusterFanout -benchtime 1x -timeout 30m ./bench
//
// with -clusterfanout.clients, -clusterfanout.channels, -clusterfanout.rate and
// -clusterfanout.duration (after -args) for other loads. Every node shares this machine's
// cores, so here spreading shows its cost, not its gain: see docs/cluster.md.
//
// # Cluster takeover
//
// BenchmarkClusterTakeover measures the takeover after a SIGKILL of the leader: three
// `walflow run` nodes of one cluster (an R3 stream on three JetStream servers in the
// benchmark's process, default heartbeat and node_ttl) while a writer commits throughout.
// It SIGKILLs the leader 10 times, from the kill to another node's /status reporting that
// it streams, restarting the killed node as a standby each time, and reports median_s and
// max_s. It fails unless the stream then holds every committed change once, in commit
// order. Run it with
//
//	go test -run '^$' -bench BenchmarkClusterTakeover -benchtime 1x -timeout 30m ./bench
//
// with -takeover.kills=N (WALFLOW_BENCH_TAKEOVER_KILLS) for another count; -short kills 3
// times.
package bench
