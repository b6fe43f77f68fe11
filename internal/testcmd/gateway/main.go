// Command gateway runs a walflow engine with a disk ledger and its realtime gateway on
// 127.0.0.1, for the fan-out benchmark in package bench, which runs it as a child process so
// that the gateway's memory is measured alone.
//
// It speaks a line protocol on stdout:
//
//	listening ADDR   the engine streams, the baseline subscription is open and the gateway
//	                 serves Server-Sent Events on http://ADDR/
//	stats JSON       just before a clean exit: see [stats]
//
// The baseline is an in-process subscriber (Engine.Subscribe) on the -channels, opened before
// the gateway listens: it records each event's latency from its commit timestamp to its
// receipt, what the gateway's clients are compared with in the same run.
//
// Logs go to stderr. SIGTERM, SIGINT or the end of stdin stops it gracefully: the gateway
// shuts down (each open stream gets its final shutdown message), the baseline subscription
// and the engine stop, the stats line is printed and it exits 0. Reading stdin to its end
// means it never outlives a parent that died. The replication slot is temporary, so nothing
// is left in the database.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/testcmd/child"
	"github.com/walflow/walflow/realtime"
)

func main() { os.Exit(run()) }

func run() int {
	dsn := flag.String("dsn", os.Getenv("WALFLOW_DATABASE_URL"), "PostgreSQL connection URL (default $WALFLOW_DATABASE_URL)")
	dir := flag.String("ledger", "", "ledger directory (default a temporary directory, removed at exit)")
	slot := flag.String("slot", "walflow_gateway", "temporary replication slot name")
	tables := flag.String("tables", "posts,comments=posts/{post_id}", "tables to follow, comma-separated, each name or name=scope")
	chans := flag.String("channels", "", "channels of the baseline subscriber, comma-separated (default none: no baseline)")
	maxConns := flag.Int("max-connections", 20000, "GatewayConfig.MaxConnections")
	buffer := flag.Int("buffer", 0, "GatewayConfig.Buffer (default realtime.BufferDefault)")
	flush := flag.Duration("flush", 0, "GatewayConfig.FlushInterval (default 0: write at once)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	memProfile := flag.String("memprofile", "", "write a heap profile to this file each time the live heap reaches a new peak")
	level := flag.String("log-level", "warn", "log level: debug, info, warn or error")
	flag.Parse()
	if *dsn == "" {
		fmt.Fprintln(os.Stderr, "gateway: -dsn or WALFLOW_DATABASE_URL is required")
		flag.Usage()
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "gateway: -log-level: %v\n", err)
		return 2
	}
	tabs, err := parseTables(*tables)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gateway: -tables: %v\n", err)
		return 2
	}
	var baseChans []string
	if *chans != "" {
		baseChans = strings.Split(*chans, ",")
	}
	if *dir == "" {
		tmp, err := os.MkdirTemp("", "walflow-gateway-*")
		if err != nil {
			fmt.Fprintf(os.Stderr, "gateway: %v\n", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		*dir = tmp
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gateway: -cpuprofile: %v\n", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "gateway: -cpuprofile: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if *memProfile != "" {
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			peakHeapProfiles(ctx, *memProfile)
		}()
	}
	go func() {
		// Ends with the process: nothing else reads stdin.
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	st, err := serve(ctx, config{
		engine: walflow.Config{
			DatabaseURL: *dsn, Slot: *slot, TemporarySlot: true, Tables: tabs, LedgerDir: *dir,
			ProcessStatus: "none", Logger: log,
		},
		gateway:  realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, MaxConnections: *maxConns, Buffer: *buffer, FlushInterval: *flush},
		channels: baseChans,
	}, os.Stdout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gateway: %v\n", err)
		return 1
	}
	pprof.StopCPUProfile()
	st.fillProcess()
	line, err := json.Marshal(st)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gateway: %v\n", err)
		return 1
	}
	if _, err := fmt.Fprintf(os.Stdout, "stats %s\n", line); err != nil {
		return 1
	}
	return 0
}

// config is what serve runs.
type config struct {
	engine   walflow.Config
	gateway  realtime.GatewayConfig
	channels []string // of the baseline subscriber
}

// serve runs the engine, the baseline subscriber and the gateway until ctx ends, then
// stops them in that order's reverse and returns their figures. It writes the listening
// line to out once everything is up.
func serve(ctx context.Context, cfg config, out io.Writer) (*stats, error) {
	eng, err := walflow.Open(ctx, cfg.engine)
	if err != nil {
		return nil, fmt.Errorf("open the engine: %w", err)
	}
	defer eng.Close()
	// The engine stops last, after the gateway and the baseline, so it has its own context.
	runCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	ran := make(chan error, 1)
	go func() { ran <- eng.Run(runCtx) }()
	stopRun := func() error {
		stopEngine()
		if err := <-ran; err != nil {
			return fmt.Errorf("run the engine: %w", err)
		}
		return eng.Close()
	}
	if err := waitStreaming(ctx, eng, ran); err != nil {
		stopEngine()
		return nil, err
	}

	st := &stats{}
	var base *baseline
	if len(cfg.channels) > 0 {
		// The baseline outlives ctx: at the end it reads on to the ledger's head.
		subCtx, stopBase := context.WithCancel(context.WithoutCancel(ctx))
		sub, err := eng.Subscribe(subCtx, &walflow.SubscribeOpts{Buffer: 4096}, cfg.channels...)
		if err != nil {
			stopBase()
			return nil, errors.Join(fmt.Errorf("subscribe the baseline: %w", err), stopRun())
		}
		base = newBaseline(eng.Router(), cfg.channels, sub, stopBase)
		go base.run()
		defer base.stop(0, 0)
	}

	gw, err := eng.Gateway(cfg.gateway)
	if err != nil {
		return nil, errors.Join(err, stopRun())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("listen: %w", err), stopRun())
	}
	// No WriteTimeout: it would cut every stream (see package realtime).
	srv := &http.Server{Handler: gw, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if _, err := fmt.Fprintf(out, "listening %s\n", ln.Addr()); err != nil {
		_ = srv.Close()
		<-served
		return nil, errors.Join(err, stopRun())
	}

	select {
	case <-ctx.Done():
	case err := <-ran:
		_ = srv.Close()
		<-served
		return nil, fmt.Errorf("the engine stopped while serving: %v", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if err := gw.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("shut the gateway down: %w", err))
	}
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("shut the HTTP server down: %w", err))
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("serve: %w", err))
	}
	st.Gateway = gatewayStats(gw.Stats())
	if base != nil {
		base.stop(eng.Ledger().State().Head, 30*time.Second)
		st.Baseline = base.result()
	}
	errs = append(errs, stopRun())
	return st, errors.Join(errs...)
}

// waitStreaming waits until the engine streams from its slot, so that everything committed
// after the listening line reaches the ledger.
func waitStreaming(ctx context.Context, eng *walflow.Engine, ran <-chan error) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(time.Minute)
	for !eng.Status(ctx).Streaming {
		select {
		case err := <-ran:
			return fmt.Errorf("the engine stopped before streaming: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errors.New("the engine did not stream from its slot within a minute")
		case <-t.C:
		}
	}
	return nil
}

// parseTables parses the -tables flag: name or name=scope, comma-separated.
func parseTables(s string) ([]channel.Table, error) {
	var out []channel.Table
	for part := range strings.SplitSeq(s, ",") {
		name, scope, ok := strings.Cut(strings.TrimSpace(part), "=")
		t := channel.Table{Name: name}
		if ok {
			sc, err := channel.ParseScope(scope)
			if err != nil {
				return nil, err
			}
			t.Scopes = []channel.Scope{sc}
		}
		out = append(out, t)
	}
	return out, nil
}

// stats is the JSON of the stats line.
type stats struct {
	// Baseline is the in-process subscriber's figures; absent without -channels.
	Baseline *baselineStats `json:"baseline,omitempty"`
	// Gateway is the gateway's counters at shutdown.
	Gateway gatewayCounters `json:"gateway"`
	// VmHWMKiB is the process's peak resident set size, over its whole life.
	VmHWMKiB int64 `json:"vmhwm_kib"`
	// CPUSeconds is the CPU time the process used, user and system.
	CPUSeconds float64 `json:"cpu_seconds"`
	// GCCycles and GCCPUSeconds are the garbage collector's cycles and estimated CPU time.
	GCCycles     uint64  `json:"gc_cycles"`
	GCCPUSeconds float64 `json:"gc_cpu_seconds"`
	// SchedP99Ms and SchedMaxMs are the 99th percentile and the highest bucket of the time
	// goroutines waited to run after becoming runnable: how starved the process was.
	SchedP99Ms float64 `json:"sched_p99_ms"`
	SchedMaxMs float64 `json:"sched_max_ms"`
}

// fillProcess reads the process's peak RSS and CPU time.
func (s *stats) fillProcess() {
	s.VmHWMKiB, _ = child.StatusKiB("VmHWM")
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.CPUSeconds = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	samples := []metrics.Sample{
		{Name: "/gc/cycles/total:gc-cycles"},
		{Name: "/cpu/classes/gc/total:cpu-seconds"},
		{Name: "/sched/latencies:seconds"},
	}
	metrics.Read(samples)
	if samples[0].Value.Kind() == metrics.KindUint64 {
		s.GCCycles = samples[0].Value.Uint64()
	}
	if samples[1].Value.Kind() == metrics.KindFloat64 {
		s.GCCPUSeconds = samples[1].Value.Float64()
	}
	if samples[2].Value.Kind() == metrics.KindFloat64Histogram {
		s.SchedP99Ms, s.SchedMaxMs = histQuantiles(samples[2].Value.Float64Histogram())
	}
}

// histQuantiles returns a runtime/metrics histogram's 99th percentile and its highest
// non-empty bucket, as the buckets' upper bounds in milliseconds.
func histQuantiles(h *metrics.Float64Histogram) (p99, highest float64) {
	var total uint64
	for _, n := range h.Counts {
		total += n
	}
	if total == 0 {
		return 0, 0
	}
	upper := func(i int) float64 {
		b := h.Buckets[i+1]
		if math.IsInf(b, 1) {
			b = h.Buckets[i]
		}
		return b * 1000
	}
	rank := uint64(math.Ceil(0.99 * float64(total)))
	var seen uint64
	for i, n := range h.Counts {
		if n == 0 {
			continue
		}
		seen += n
		if seen >= rank && p99 == 0 {
			p99 = upper(i)
		}
		highest = upper(i)
	}
	return p99, highest
}

// gatewayCounters are realtime.Stats as JSON.
type gatewayCounters struct {
	ConnectionsTotal uint64            `json:"connections_total"`
	MessagesSent     uint64            `json:"messages_sent"`
	Rejected         map[string]uint64 `json:"rejected"`
	Disconnects      map[string]uint64 `json:"disconnects"`
}

func gatewayStats(s realtime.Stats) gatewayCounters {
	c := gatewayCounters{ConnectionsTotal: s.ConnectionsTotal, MessagesSent: s.MessagesSent,
		Rejected: map[string]uint64{}, Disconnects: map[string]uint64{}}
	for k, v := range s.Rejected {
		c.Rejected[fmt.Sprint(k)] = v
	}
	for k, v := range s.Disconnects {
		c.Disconnects[k.String()] = v
	}
	return c
}

// peakHeapProfiles writes a heap profile to path each time the heap in use reaches a new
// peak, every half second until ctx ends, so the file shows what the peak was made of.
func peakHeapProfiles(ctx context.Context, path string) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var peak uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse <= peak {
			continue
		}
		peak = ms.HeapInuse
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gateway: -memprofile: %v\n", err)
			return
		}
		_ = pprof.WriteHeapProfile(f)
		f.Close()
	}
}
