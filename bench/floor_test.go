package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var (
	floorClients  = flag.Int("floor.clients", 10_000, "BenchmarkFanoutFloor's clients, spread evenly over the channels")
	floorChannels = flag.Int("floor.channels", 10, "BenchmarkFanoutFloor's channels")
	floorRate     = flag.Int("floor.rate", 1000, "BenchmarkFanoutFloor's events per second, over all channels")
	floorDuration = flag.Duration("floor.duration", 10*time.Second, "how long BenchmarkFanoutFloor sends events")
	floorSize     = flag.Int("floor.size", 400, "BenchmarkFanoutFloor's message size in bytes (a comment event as an SSE message is about this long)")
	floorFlushes  = flag.String("floor.flush", "0,10ms,25ms,50ms", "BenchmarkFanoutFloor's write intervals, comma-separated (0: a writer per connection writes as soon as it has bytes)")
)

// floorHeader is the part of a floor message the client reads: the send time in Unix ns
// and the channel's sequence number.
const floorHeader = 16

// floorResult is one floor run.
type floorResult struct {
	flush          time.Duration
	sent, received int64 // deliveries
	lost           int64 // deliveries missing at the end
	misordered     int64 // messages a client received out of its channel's order
	p50, p99       time.Duration
	elapsed        time.Duration // from the first send to the last receipt
	serverCPU      time.Duration // user+system CPU of the server (this process) while sending
	clientCPU      time.Duration // the same for the clients' process
	writes, reads  int64         // the server's writes and the clients' reads that returned bytes
}

// floorMember is one server-side connection and the bytes waiting for it.
type floorMember struct {
	conn   net.Conn
	mu     sync.Mutex
	buf    []byte
	signal chan struct{} // flush 0: wakes the connection's writer
}

func (m *floorMember) take(spare []byte) []byte {
	m.mu.Lock()
	b := m.buf
	m.buf = spare[:0]
	m.mu.Unlock()
	return b
}

// floorChildEnv, when set (to "addr clients size"), makes the test binary the floor's
// clients process instead of running tests: the file limit is per process, and the
// clients and the server need a descriptor per connection each.
const floorChildEnv = "WALFLOW_BENCH_FLOOR_CLIENTS"

// floorReport is what the clients' process prints when every connection ended.
type floorReport struct {
	Received   int64    `json:"received"`
	Reads      int64    `json:"reads"`
	Misordered int64    `json:"misordered"`
	LastNs     int64    `json:"last_ns"` // the last receipt, Unix ns
	CPUNs      int64    `json:"cpu_ns"`  // CPU used from connected to done
	Counts     []uint64 `json:"counts"`  // latency histogram buckets
}

// floorRun fans fixed-size messages out to clients over loopback TCP with the least work a
// server can do: no HTTP, no ledger, no PostgreSQL, no rendering; each message is
// appended to each member's buffer and written either by a goroutine per connection as
// soon as it has bytes (flush 0) or by one sweeper per core every flush interval. The
// clients run in a child process (this test binary again) that reads each connection and
// records each message's latency from its send time. It measures what the machine's
// kernel and scheduler cost for the fan-out alone.
func floorRun(tb testing.TB, clients, channels, rate, size int, d, flush time.Duration) floorResult {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()

	// The clients dial one at a time, so that accepted connection i is client i, on
	// channel i % channels.
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", floorChildEnv, ln.Addr(), clients, size))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start the clients' process: %v", err)
	}
	defer func() {
		_ = cmd.Process.Kill() // a no-op once it reported and exited
		_ = cmd.Wait()
	}()
	members := make([]*floorMember, clients)
	for i := range clients {
		c, err := ln.Accept()
		if err != nil {
			tb.Fatal(err)
		}
		members[i] = &floorMember{conn: c, signal: make(chan struct{}, 1)}
	}
	closed := false
	closeAll := func() {
		if !closed {
			closed = true
			for _, m := range members {
				m.conn.Close()
			}
		}
	}
	defer closeAll()
	lines := bufio.NewReader(out)
	if l, err := lines.ReadString('\n'); err != nil || l != "ready\n" {
		tb.Fatalf("the clients' process said %q, %v; want ready", l, err)
	}
	byChan := make([][]*floorMember, channels)
	for i, m := range members {
		byChan[i%channels] = append(byChan[i%channels], m)
	}

	// Writers.
	var pending atomic.Int64 // bytes appended and not yet written
	var writes atomic.Int64
	var writers sync.WaitGroup
	write := func(m *floorMember, b []byte) {
		if len(b) == 0 {
			return
		}
		if _, err := m.conn.Write(b); err != nil && ctx.Err() == nil {
			tb.Errorf("write: %v", err)
		}
		writes.Add(1)
		pending.Add(-int64(len(b)))
	}
	if flush == 0 {
		for _, m := range members {
			writers.Add(1)
			go func() {
				defer writers.Done()
				var spare []byte
				for {
					select {
					case <-ctx.Done():
						return
					case <-m.signal:
					}
					b := m.take(spare)
					write(m, b)
					spare = b
				}
			}()
		}
	} else {
		procs := runtime.GOMAXPROCS(0)
		for w := range procs {
			writers.Add(1)
			go func() {
				defer writers.Done()
				t := time.NewTicker(flush)
				defer t.Stop()
				spares := make([][]byte, len(members))
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
					for i := w; i < len(members); i += procs {
						b := members[i].take(spares[i])
						write(members[i], b)
						spares[i] = b
					}
				}
			}()
		}
	}

	// Send: event k at start + k/rate, on channel k % channels.
	before := cpuTime()
	start := time.Now()
	events := int(d.Seconds() * float64(rate))
	seqs := make([]uint64, channels)
	msg := make([]byte, size)
	for k := range events {
		if wait := time.Until(start.Add(time.Duration(k) * time.Second / time.Duration(rate))); wait > 0 {
			time.Sleep(wait)
		}
		ch := k % channels
		binary.BigEndian.PutUint64(msg, uint64(time.Now().UnixNano()))
		binary.BigEndian.PutUint64(msg[8:], seqs[ch])
		seqs[ch]++
		for _, m := range byChan[ch] {
			pending.Add(int64(size))
			m.mu.Lock()
			m.buf = append(m.buf, msg...)
			m.mu.Unlock()
			if flush == 0 {
				select {
				case m.signal <- struct{}{}:
				default:
				}
			}
		}
	}
	var sent int64
	for ch := range channels {
		sent += int64(seqs[ch]) * int64(len(byChan[ch]))
	}
	// Once everything is written, closing the connections ends the clients after they
	// read it all.
	deadline := time.Now().Add(time.Minute)
	for pending.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	serverCPU := cpuTime() - before
	cancel()
	writers.Wait()
	closeAll()
	var rep floorReport
	if err := json.NewDecoder(lines).Decode(&rep); err != nil {
		tb.Fatalf("read the clients' report: %v", err)
	}
	var hist latencyHist
	for b, n := range rep.Counts {
		hist.shards[0][b].Add(n)
	}
	return floorResult{flush: flush, sent: sent, received: rep.Received, lost: sent - rep.Received, misordered: rep.Misordered,
		p50: hist.quantile(0.50), p99: hist.quantile(0.99), elapsed: time.Duration(rep.LastNs - start.UnixNano()),
		serverCPU: serverCPU, clientCPU: time.Duration(rep.CPUNs), writes: writes.Load(), reads: rep.Reads}
}

// floorClientsMain is the floor's clients process: it dials the server, says ready, reads
// every connection until the server closes it, and prints a floorReport.
func floorClientsMain(spec string) int {
	var addr string
	var clients, size int
	if _, err := fmt.Sscanf(spec, "%s %d %d", &addr, &clients, &size); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", floorChildEnv, spec, err)
		return 2
	}
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dial client %d: %v\n", i, err)
			return 1
		}
		conns[i] = c
	}
	var hist latencyHist
	var received, reads, misordered, last atomic.Int64
	var wg sync.WaitGroup
	before := cpuTime()
	fmt.Println("ready")
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 64<<10)
			have := 0
			next := uint64(0)
			for {
				n, err := c.Read(buf[have:])
				now := time.Now().UnixNano()
				if n > 0 {
					reads.Add(1)
				}
				have += n
				k := 0
				for ; have-k >= size; k += size {
					sent := int64(binary.BigEndian.Uint64(buf[k:]))
					seq := binary.BigEndian.Uint64(buf[k+8:])
					if seq != next {
						misordered.Add(1)
					}
					next = seq + 1
					hist.add(i, time.Duration(now-sent))
					received.Add(1)
				}
				if k > 0 {
					for {
						old := last.Load()
						if now <= old || last.CompareAndSwap(old, now) {
							break
						}
					}
				}
				have = copy(buf, buf[k:have])
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	rep := floorReport{Received: received.Load(), Reads: reads.Load(), Misordered: misordered.Load(), LastNs: last.Load(), CPUNs: int64(cpuTime() - before)}
	rep.Counts = hist.counts()
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime))
}

func parseFlushes(s string) ([]time.Duration, error) {
	var out []time.Duration
	for f := range strings.SplitSeq(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("-floor.flush: %q: %w (give durations like 0,10ms,25ms)", f, err)
		}
		out = append(out, d)
	}
	return out, nil
}

func (r floorResult) summary(clients, rate int) string {
	secs := r.elapsed.Seconds()
	per := func(d time.Duration, n int64) float64 { return float64(d.Nanoseconds()) / 1000 / float64(max(n, 1)) }
	return fmt.Sprintf("floor, %d clients, %d events/s, flush %s: p50 %s, p99 %s, %.0f msgs/s, lost %d; "+
		"server %.2f cores, %.0f writes/s, %.2f µs/message, %.1f µs/write; clients %.2f cores, %.0f reads/s, %.2f µs/message, %.1f µs/read",
		clients, rate, r.flush, readableMs(ms(r.p50)), readableMs(ms(r.p99)), float64(r.received)/secs, r.lost,
		r.serverCPU.Seconds()/secs, float64(r.writes)/secs, per(r.serverCPU, r.received), per(r.serverCPU, r.writes),
		r.clientCPU.Seconds()/secs, float64(r.reads)/secs, per(r.clientCPU, r.received), per(r.clientCPU, r.reads))
}

// TestFanoutFloorSmoke runs the floor on a small load in every `go test`, so that it
// cannot rot: every message must arrive once, in order.
func TestFanoutFloorSmoke(t *testing.T) {
	t.Parallel()
	for _, flush := range []time.Duration{0, 5 * time.Millisecond} {
		r := floorRun(t, 50, 5, 200, 64, time.Second, flush)
		t.Log(r.summary(50, 200))
		if r.lost != 0 || r.misordered != 0 || r.sent != 50*200/5 {
			t.Fatalf("flush %s: sent %d, received %d, misordered %d; want %d each, in order", flush, r.sent, r.received, r.misordered, 50*200/5)
		}
	}
}

// BenchmarkFanoutFloor is the fan-out's floor on this machine: the same clients, channels,
// rate and message size as BenchmarkFanout, served by the least a server can do (see
// floorRun), in one process. When the floor misses a latency bar, no gateway on this
// machine can meet it.
func BenchmarkFanoutFloor(b *testing.B) {
	flushes, err := parseFlushes(*floorFlushes)
	if err != nil {
		b.Fatal(err)
	}
	if *floorSize < floorHeader {
		b.Fatalf("-floor.size is %d; a message needs at least %d bytes", *floorSize, floorHeader)
	}
	raiseFileLimit(b, *floorClients+200)
	for _, flush := range flushes {
		b.Run("flush="+flush.String(), func(b *testing.B) {
			var r floorResult
			for range b.N {
				r = floorRun(b, *floorClients, *floorChannels, *floorRate, *floorSize, *floorDuration, flush)
			}
			b.Log(r.summary(*floorClients, *floorRate))
			if r.lost != 0 || r.misordered != 0 {
				b.Errorf("%d messages lost, %d out of order", r.lost, r.misordered)
			}
			b.ReportMetric(ms(r.p50), "p50-ms")
			b.ReportMetric(ms(r.p99), "p99-ms")
			b.ReportMetric(float64(r.received)/r.elapsed.Seconds(), "msgs/s")
			b.ReportMetric(r.serverCPU.Seconds()/r.elapsed.Seconds(), "server-cores")
			b.ReportMetric(r.clientCPU.Seconds()/r.elapsed.Seconds(), "client-cores")
		})
	}
}
