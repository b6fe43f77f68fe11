// Package bench holds walflow's end-to-end benchmarks. It has no code of its own: only
// tests and benchmarks that run the whole engine against a real PostgreSQL.
//
// # Drain
//
// BenchmarkDrain builds a backlog of row changes (1,000,000 by default: mixed inserts,
// updates and deletes of a REPLICA IDENTITY FULL table, half in 1-row and half in 100-row
// transactions) behind four logical replication slots, then drains it in the order
// pg_recvlogical, walflow, walflow, pg_recvlogical. pg_recvlogical writing pgoutput to
// /dev/null is the baseline: the fastest any client of the slot can go. walflow decodes
// every value and makes every event durable in the disk ledger, with its channel index.
//
// It reports recvlogical_events/s, walflow_events/s, their ratio (walflow over
// pg_recvlogical) and peak_rss_MiB (the process's peak resident set while walflow drains,
// benchmark harness included), and logs a Markdown table row for the README. It fails when
// walflow is below 0.75× pg_recvlogical or its peak RSS reaches 256 MiB. Run it with
//
//	go test -run '^$' -bench BenchmarkDrain -benchtime 1x -timeout 30m ./bench
//
// and -drain.changes=N for another backlog size (a multiple of 400). TestDrainSmoke runs
// the same code on a 20,000-change backlog in every `go test`, so it cannot rot.
package bench
