// Package bench holds walflow's end-to-end benchmarks. It has no code of its own: only
// tests and benchmarks that run the whole engine against a real PostgreSQL.
//
// # Drain
//
// BenchmarkDrain builds a backlog of row changes (1,000,000 by default: mixed inserts,
// updates and deletes of a REPLICA IDENTITY FULL table, half in 1-row and half in 100-row
// transactions) behind one logical replication slot per drain, then drains it with each
// client in turn: rounds of pg_recvlogical, walflow, walflow, pg_recvlogical, so neither
// always goes first. pg_recvlogical writing pgoutput to /dev/null is the baseline. walflow
// decodes every value and makes every event durable in its disk ledger, with the channel
// index. A last drain by a Go client that discards the stream is there for information.
//
// It reports recvlogical_events/s, walflow_events/s, their ratio (walflow over
// pg_recvlogical), peak_rss_MiB (the process's peak resident set while walflow drains,
// benchmark harness included, highest over the walflow drains) and discard_events/s, and
// logs each drain with the CPU time its client and the whole machine used, and a Markdown
// table row for the README. It fails when walflow is below 0.75× pg_recvlogical or its
// peak RSS reaches 256 MiB. Run it with
//
//	go test -run '^$' -bench BenchmarkDrain -benchtime 1x -timeout 30m ./bench
//
// with -drain.changes=N for another backlog size (a multiple of 400) and -drain.rounds=N
// for more or fewer rounds (default 2). TestDrainSmoke runs the same code on a
// 20,000-change backlog in every `go test`, so it cannot rot.
//
// On a machine with few cores the client competes with the walsender for CPU, and a client
// that reads each message as it arrives makes the walsender work harder than one that
// reads in bulk, so the rates there say as much about scheduling as about the clients:
// compare them within one run, and repeat runs.
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
// scheduling delays, and a Markdown table row for the README. It fails when a delivery is
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
package bench
