package bench

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/internal/clustertest"
	"github.com/walflow/walflow/internal/pgtest"
)

var clusterKills = flag.Int("takeover.kills", envInt("WALFLOW_BENCH_TAKEOVER_KILLS", 10), "how many times BenchmarkClusterTakeover SIGKILLs the leader; -short does 3 (env WALFLOW_BENCH_TAKEOVER_KILLS)")

// BenchmarkClusterTakeover measures the takeover after a SIGKILL of the leader: three
// `walflow run` nodes of one cluster (an R3 stream on three JetStream servers in this
// process, a real PostgreSQL) while a writer commits throughout. It SIGKILLs the leader
// -takeover.kills times (10 by default, 3 with -short), each time measuring from the
// SIGKILL to another node streaming the slot (its /status), and restarts the killed node
// as a standby. It reports median_s and max_s, and fails unless the stream then holds
// every committed change once, in commit order.
func BenchmarkClusterTakeover(b *testing.B) {
	kills := *clusterKills
	if testing.Short() {
		kills = 3
	}
	if kills < 1 {
		b.Fatalf("-takeover.kills %d: need at least one kill", kills)
	}
	ctx := b.Context()
	bin := buildWalflow(b)
	lc, err := cluster.StartLocalCluster(ctx, b.TempDir(), 3)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(lc.Shutdown)
	var takeovers []time.Duration
	round := 0
	for b.Loop() {
		round++
		takeovers = append(takeovers, clusterTakeover(b, bin, lc, kills, fmt.Sprintf("takeover_%d", round))...)
	}
	med, mx := clustertest.Median(takeovers)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(med.Seconds(), "median_s")
	b.ReportMetric(mx.Seconds(), "max_s")
	var each []string
	for _, d := range takeovers {
		each = append(each, fmt.Sprintf("%.2f", d.Seconds()))
	}
	b.Logf("for docs/cluster.md: takeover after SIGKILL of the leader, %d kills: median %.1f s, max %.1f s (each: %s s)",
		len(takeovers), med.Seconds(), mx.Seconds(), strings.Join(each, ", "))
}

// clusterTakeover runs one round on a fresh database and a stream (and registry bucket)
// of its own, name: it starts three nodes, SIGKILLs the leader kills times and returns the
// takeover times.
func clusterTakeover(b *testing.B, bin string, lc *cluster.LocalCluster, kills int, name string) []time.Duration {
	b.Helper()
	ctx := b.Context()
	dsn := pgtest.NewDatabase(b)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, clustertest.Schema); err != nil {
		b.Fatalf("create schema: %v", err)
	}
	var slot string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&slot); err != nil {
		b.Fatal(err)
	}
	nodes := clustertest.NewNodes(b, b.TempDir(), 3, clustertest.Options{DSN: dsn, Slot: slot, URLs: lc.URLs(), LogLevel: "warn", Stream: name})
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		for _, n := range nodes {
			n.Kill()
		}
		if b.Failed() {
			for _, n := range nodes {
				n.LogTail(b, 40)
			}
		}
	}
	defer stop()
	for _, n := range nodes {
		n.Start(b, bin)
	}
	clustertest.WaitLeader(b, nodes, nil, 2*time.Minute)
	w := clustertest.StartWriter(ctx, conn)
	defer func() { _ = w.Stop() }()

	var takeovers []time.Duration
	for k := range kills {
		killed, next, d := clustertest.KillLeader(b, nodes, 2*time.Minute)
		takeovers = append(takeovers, d)
		b.Logf("kill %d: %s killed, %s streams %s later (writer at %d transactions)", k+1, killed.Name, next.Name, d.Round(time.Millisecond), w.Count())
		killed.Start(b, bin)
	}
	if err := w.Stop(); err != nil {
		b.Fatal(err)
	}
	want, txs := w.Changes()
	clustertest.WaitHeads(b, nodes, uint64(len(want)), 2*time.Minute)
	clustertest.CheckStream(b, lc.URLs(), name, want)
	b.Logf("%s: the stream holds the %d changes of %d transactions, once each, in commit order", name, len(want), txs)
	stop()
	return takeovers
}
