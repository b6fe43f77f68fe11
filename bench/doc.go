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
package bench
