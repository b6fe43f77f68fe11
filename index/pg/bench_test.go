package pg_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/index/pg"
	"github.com/walflow/walflow/internal/pgtest"
)

// benchEvents is the number of events per Write, as the runner's default batch.
const benchEvents = 1000

// benchStore returns a store on a fresh database over a pool of one connection, and the
// process id of that connection's PostgreSQL backend.
func benchStore(b *testing.B) (*pg.Store, int) {
	b.Helper()
	dsn := pgtest.NewDatabase(b)
	db := pool(b, dsn+"&pool_max_conns=1")
	var pid int
	if err := db.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		b.Fatal(err)
	}
	return open(b, db, nil), pid
}

// benchBatch returns the batch of the events after pos: each has a user value, and every
// other one a tag value too, so 1.5 entries an event.
func benchBatch(pos event.Position, users int) index.Batch {
	es := make([]index.Entry, 0, benchEvents*3/2)
	for i := range event.Position(benchEvents) {
		p := pos + i + 1
		es = append(es, index.Entry{Value: strconv.Itoa(int(p) % users), Position: p})
		if p%2 == 0 {
			es = append(es, index.Entry{Value: "tag" + strconv.Itoa(int(p)%7), Position: p})
		}
	}
	return index.Batch{Indexer: "user_id", Entries: es, State: index.State{Checkpoint: pos + benchEvents, Version: "1"}}
}

// BenchmarkWrite writes batches of 1,000 events with 1.5 values each, as the runner does,
// and reports entries/s, the CPU per entry of this process's Writes and of the PostgreSQL
// backend that runs them (user + sys; the WAL writer and checkpointer excluded).
func BenchmarkWrite(b *testing.B) {
	s, pid := benchStore(b)
	ctx := context.Background()
	var (
		pos     event.Position
		entries int
		elapsed time.Duration
		cpu     float64
	)
	srv0 := backendCPUSeconds(b, pid)
	for b.Loop() {
		b.StopTimer()
		batch := benchBatch(pos, 10000)
		b.StartTimer()
		start, cpu0 := time.Now(), cpuSeconds(b)
		if err := s.Write(ctx, batch); err != nil {
			b.Fatal(err)
		}
		cpu += cpuSeconds(b) - cpu0
		elapsed += time.Since(start)
		entries += len(batch.Entries)
		pos += benchEvents
	}
	srv := backendCPUSeconds(b, pid) - srv0
	b.ReportMetric(float64(entries)/elapsed.Seconds(), "entries/s")
	b.ReportMetric(cpu/float64(entries)*1e6, "client_cpu_µs/entry")
	b.ReportMetric(srv/float64(entries)*1e6, "backend_cpu_µs/entry")
}

// BenchmarkPositions reads up to 100 positions of one of 1,000 values from an index of
// 300,000 entries, as Runner.Read does, and reports the CPU per read of this process and
// of the PostgreSQL backend.
func BenchmarkPositions(b *testing.B) {
	s, pid := benchStore(b)
	ctx := context.Background()
	const users = 1000
	var pos event.Position
	for range 200 {
		if err := s.Write(ctx, benchBatch(pos, users)); err != nil {
			b.Fatal(err)
		}
		pos += benchEvents
	}
	n, i := 0, 0
	cpu0, srv0 := cpuSeconds(b), backendCPUSeconds(b, pid)
	for b.Loop() {
		ps, err := s.Positions(ctx, "user_id", strconv.Itoa(i*7%users), event.Position(i%1000), 100)
		if err != nil {
			b.Fatal(err)
		}
		n += len(ps)
		i++
	}
	b.ReportMetric(float64(n)/float64(i), "positions/op")
	b.ReportMetric((cpuSeconds(b)-cpu0)/float64(i)*1e6, "client_cpu_µs/op")
	b.ReportMetric((backendCPUSeconds(b, pid)-srv0)/float64(i)*1e6, "backend_cpu_µs/op")
}

func cpuSeconds(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// backendCPUSeconds returns the CPU time of process pid (user + sys), from /proc.
func backendCPUSeconds(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("read the backend's CPU time: %v", err)
	}
	// Fields after the command name, which is in parentheses: utime and stime are the
	// 12th and 13th, in clock ticks (100 a second on Linux).
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parse /proc/%d/stat: %q", pid, data)
	}
	return (ut + st) / 100
}
