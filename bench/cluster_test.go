package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
)

var clusterChanges = flag.Int("cluster.changes", envInt("WALFLOW_BENCH_CLUSTER_CHANGES", 1_000_000), "row changes of the cluster catch-up backlog (100-row transactions), a multiple of 200; -short uses 8000 (env WALFLOW_BENCH_CLUSTER_CHANGES)")

// BenchmarkClusterCatchUp measures how fast a cluster node (an engine with Config.Cluster,
// its ledger an R3 stream on three JetStream servers of this machine, sync always)
// drains a backlog of 100-row transactions from its slot, and pg_recvlogical draining a
// copy of the same slot in the same run. It reports both rates and their ratio, and the
// CPU time per change of each: walflow's is this process's CPU time over the catch-up
// (the engine and the three in-process NATS servers together, their replication and
// fsyncs included), pg_recvlogical's that of its process. Every
// node shares this machine's cores with the three NATS servers and PostgreSQL; on
// separate machines each server's fsync and the quorum's round trip replace the shared
// CPU as the cost.
func BenchmarkClusterCatchUp(b *testing.B) {
	changes := *clusterChanges
	if testing.Short() {
		changes = smokeBulk
	}
	per := genWorkers * bulkShape.txChanges()
	if changes <= 0 || changes%per != 0 {
		b.Fatalf("-cluster.changes %d is not a positive multiple of %d", changes, per)
	}
	ctx := b.Context()
	dsn := pgtest.NewDatabase(b)
	drainSetup(b, dsn)
	lc, err := cluster.StartLocalCluster(ctx, b.TempDir(), 3)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(lc.Shutdown)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		b.Fatal(err)
	}
	origin := db + "_catchup"
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", origin); err != nil {
		b.Fatal(err)
	}
	if err := generate(ctx, dsn, bulkShape, changes/per); err != nil {
		b.Fatal(err)
	}
	var target string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&target); err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on; SELECT txid_current()"); err != nil {
		b.Fatal(err)
	}
	copySlot := func(name string) {
		if _, err := conn.Exec(ctx, "SELECT pg_copy_logical_replication_slot($1, $2)", origin, name); err != nil {
			b.Fatal(err)
		}
	}
	dropSlot := func(name string) {
		// The walsender of a node that just stopped may hold the slot a moment longer.
		for tries := 0; ; tries++ {
			_, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_drop_replication_slot($1)", name)
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "55006" && tries < 100 {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if err != nil {
				b.Errorf("drop slot %s: %v", name, err)
			}
			return
		}
	}
	defer dropSlot(origin)

	i := 0
	var cpu, machineCPU time.Duration
	for b.Loop() {
		b.StopTimer()
		slot := fmt.Sprintf("%s_%d", origin, i)
		copySlot(slot)
		stream := fmt.Sprintf("catchup_%d", i)
		cpu0, busy0 := processCPU(), machineBusy()
		b.StartTimer()
		catchUpCluster(b, dsn, slot, stream, lc.URLs(), changes)
		b.StopTimer()
		cpu += processCPU() - cpu0
		machineCPU += machineBusy() - busy0
		dropSlot(slot)
		deleteStream(b, lc.URLs(), stream)
		i++
		b.StartTimer()
	}
	walflowRate := float64(changes*b.N) / b.Elapsed().Seconds()
	slot := origin + "_recvlogical"
	copySlot(slot)
	r := drainRecvlogical(b, pgtest.Shared(b), dsn, slot, target)
	dropSlot(slot)
	recvRate := float64(changes) / r.Elapsed.Seconds()
	walflowCPU := float64(cpu.Microseconds()) / float64(changes*b.N)
	recvCPU := float64(r.CPU.Microseconds()) / float64(changes)
	b.ReportMetric(walflowRate, "changes/s")
	b.ReportMetric(recvRate, "recvlogical_changes/s")
	b.ReportMetric(walflowRate/recvRate, "ratio")
	b.ReportMetric(walflowCPU, "cpu_us/change")
	b.ReportMetric(recvCPU, "recvlogical_cpu_us/change")
	b.ReportMetric(walflowCPU/recvCPU, "cpu_ratio")
	b.Logf("cluster catch-up of %s changes in 100-row transactions: walflow (R3 stream, sync always) %s changes/s, %.1f µs CPU/change (engine and three NATS servers in this process); pg_recvlogical %s changes/s, %.2f µs CPU/change; ratio %.2f, CPU ratio %.1f; machine CPU %.1f s over walflow's %.1f s, %.1f s over pg_recvlogical's %.1f s",
		thousands(changes), thousands(int(walflowRate)), walflowCPU, thousands(int(recvRate)), recvCPU, walflowRate/recvRate, walflowCPU/recvCPU,
		machineCPU.Seconds(), b.Elapsed().Seconds(), r.MachineCPU.Seconds(), r.Elapsed.Seconds())
}

// catchUpCluster runs a cluster node on slot, its ledger on stream, until the ledger holds
// changes events.
func catchUpCluster(b *testing.B, dsn, slot, stream string, urls []string, changes int) {
	b.Helper()
	ctx := b.Context()
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: slot, Publication: publication, ProcessStatus: "none", Retention: -1, LedgerDir: filepath.Join(b.TempDir(), "data"),
		Logger:  slog.New(slog.NewTextHandler(b.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		Cluster: &cluster.Config{URLs: urls, NodeName: "bench", Replicas: 3, Stream: stream},
	})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	for eng.Ledger().State().Head < event.Position(changes) {
		select {
		case err := <-done:
			b.Fatalf("the engine stopped before it drained the backlog: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		b.Fatal(err)
	}
}

// deleteStream deletes a catch-up's stream and its state bucket, so the servers' disks
// hold one backlog at a time.
func deleteStream(b *testing.B, urls []string, stream string) {
	b.Helper()
	nc, err := nats.Connect(urls[0])
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if err := js.DeleteStream(b.Context(), stream); err != nil {
		b.Errorf("delete stream %s: %v", stream, err)
	}
	if err := js.DeleteKeyValue(b.Context(), stream+"_STATE"); err != nil {
		b.Errorf("delete bucket %s_STATE: %v", stream, err)
	}
}
