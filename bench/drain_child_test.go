package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/testcmd/child"
)

// drainChildEnv, when set (to a JSON drainChildSpec), makes the test binary a walflow
// process that drains one slot instead of running tests. BenchmarkDrain runs walflow in a
// child process so that its CPU time and peak RSS are its own, as pg_recvlogical's are.
const drainChildEnv = "WALFLOW_BENCH_DRAIN_CHILD"

// drainChildSpec tells the child what to drain.
type drainChildSpec struct {
	DSN     string `json:"dsn"`
	Slot    string `json:"slot"`
	Ledger  string `json:"ledger"`  // ledger directory
	Changes int    `json:"changes"` // the backlog's row changes: done when the ledger holds them all
	Marks   []int  `json:"marks"`   // ledger heads to report the time of, ascending, each ≤ Changes
	Verify  bool   `json:"verify"`  // read the ledger back after the drain and report what it holds
}

// drainVerify is what a child with Verify read back from its ledger.
type drainVerify struct {
	Counts      map[string]int `json:"counts"`       // events by "table type": "comments insert"
	MissingOlds int            `json:"missing_olds"` // updates and deletes without an old record
	Read        int            `json:"read"`         // events read back
	// Channel is the scoped channel of the first comment event; ChannelWant the comment
	// events whose row (new or old) has its post_id, and ChannelGot the events the ledger's
	// channel index returns for it.
	Channel     string `json:"channel"`
	ChannelWant int    `json:"channel_want"`
	ChannelGot  int    `json:"channel_got"`
}

// The child's protocol on stdout, one line each:
//
//	mark N NS                  the ledger's head reached N (a mark, or the whole backlog), NS
//	                           nanoseconds after the child started
//	done UTIME STIME VMHWM     the ledger durably holds every change: the process's user and
//	                           system CPU so far (ns) and its peak RSS (KiB)
//	verify JSON                a drainVerify, with Verify only
//
// It exits 0 after a clean stop, 1 on a failure (said on stderr), and 3 when stdin closes
// first (the test that started it is gone).

// drainTables is the configuration both the child and the checks use: posts, and comments
// with the scope posts/{post_id}.
func drainTables() ([]channel.Table, error) {
	scope, err := channel.ParseScope("posts/{post_id}")
	if err != nil {
		return nil, err
	}
	return []channel.Table{{Name: "posts"}, {Name: "comments", Scopes: []channel.Scope{scope}}}, nil
}

// drainChildMain is the child's main.
func drainChildMain(specJSON string) int {
	start := time.Now()
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "drain child: "+format+"\n", args...)
		return 1
	}
	var spec drainChildSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fail("%s=%q: %v", drainChildEnv, specJSON, err)
	}
	child.ExitOnEOF("drain child")
	tables, err := drainTables()
	if err != nil {
		return fail("tables: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: spec.DSN,
		Slot:        spec.Slot,
		Publication: publication,
		Tables:      tables,
		LedgerDir:   spec.Ledger,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return fail("open: %v", err)
	}
	defer eng.Close()

	// WALFLOW_BENCH_DRAIN_CPUPROFILE=FILE profiles the child's drain into FILE (the last
	// drain's profile wins), for looking at where walflow's CPU per change goes.
	if path := os.Getenv("WALFLOW_BENCH_DRAIN_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return fail("cpu profile: %v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail("cpu profile: %v", err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	ran := make(chan error, 1)
	go func() { ran <- eng.Run(ctx) }()
	// The marks, then the whole backlog, in order; the goroutine stops with ctx.
	type reached struct {
		head int
		at   time.Duration
		err  error
	}
	marks := make(chan reached, len(spec.Marks)+1)
	go func() {
		defer close(marks)
		for _, m := range append(spec.Marks, spec.Changes) {
			if err := eng.Ledger().Wait(ctx, event.Position(m-1)); err != nil {
				marks <- reached{head: m, err: err}
				return
			}
			marks <- reached{head: m, at: time.Since(start)}
		}
	}()
	out := bufio.NewWriter(os.Stdout)
	for done := false; !done; {
		select {
		case m, ok := <-marks:
			if !ok {
				done = true
				break
			}
			if m.err != nil {
				return fail("wait for %d events: %v", m.head, m.err)
			}
			fmt.Fprintf(out, "mark %d %d\n", m.head, m.at.Nanoseconds())
			if m.head < spec.Changes {
				if err := out.Flush(); err != nil {
					return fail("write stdout: %v", err)
				}
				continue
			}
			var ru syscall.Rusage
			if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
				return fail("getrusage: %v", err)
			}
			hwm, err := child.StatusKiB("VmHWM")
			if err != nil {
				return fail("peak RSS: %v", err)
			}
			fmt.Fprintf(out, "done %d %d %d\n", ru.Utime.Nano(), ru.Stime.Nano(), hwm)
			if err := out.Flush(); err != nil {
				return fail("write stdout: %v", err)
			}
		case err := <-ran:
			return fail("walflow stopped before draining the backlog: %v", err)
		}
	}
	cancel()
	if err := <-ran; err != nil {
		return fail("run: %v", err)
	}
	st := eng.Status(context.Background())
	if st.LedgerHead != uint64(spec.Changes) || st.EventsAppended != uint64(spec.Changes) {
		return fail("ledger head %d, %d events appended; want %d of each", st.LedgerHead, st.EventsAppended, spec.Changes)
	}
	if spec.Verify {
		v, err := verifyLedger(eng)
		if err != nil {
			return fail("verify: %v", err)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fail("verify: %v", err)
		}
		fmt.Fprintf(out, "verify %s\n", b)
		if err := out.Flush(); err != nil {
			return fail("write stdout: %v", err)
		}
	}
	if err := eng.Close(); err != nil {
		return fail("close: %v", err)
	}
	return 0
}

// verifyLedger reads the whole ledger back: the events by table and type, the updates and
// deletes without their old record, and one scoped channel read through the index against
// the events that belong to it.
func verifyLedger(eng *walflow.Engine) (drainVerify, error) {
	ctx := context.Background()
	v := drainVerify{Counts: map[string]int{}}
	postOf := func(e *event.Event) string {
		r := e.NewRecord
		if r == nil {
			r = e.OldRecord
		}
		if p, ok := r.Get("post_id"); ok {
			return p.String()
		}
		return ""
	}
	var post string
	var after event.Position
	for {
		evs, err := eng.Ledger().Read(ctx, after, 4096)
		if err != nil {
			return v, err
		}
		if len(evs) == 0 {
			break
		}
		for i := range evs {
			e := &evs[i]
			v.Counts[e.Source.Table+" "+e.Type.String()]++
			v.Read++
			if (e.Type == event.Update || e.Type == event.Delete) && e.OldRecord == nil {
				v.MissingOlds++
			}
			if e.Source.Table == "comments" {
				if post == "" {
					post = postOf(e)
				}
				if p := postOf(e); p != "" && p == post {
					v.ChannelWant++
				}
			}
			after = e.Position
		}
	}
	if post == "" {
		return v, nil
	}
	if _, err := strconv.ParseInt(post, 10, 64); err != nil {
		return v, fmt.Errorf("post_id %q is not an integer", post)
	}
	v.Channel = "posts/" + post + "/comments"
	after = 0
	for {
		evs, err := eng.Ledger().ReadKeys(ctx, []string{v.Channel}, after, 4096)
		if err != nil {
			return v, err
		}
		if len(evs) == 0 {
			break
		}
		v.ChannelGot += len(evs)
		after = evs[len(evs)-1].Position
	}
	return v, nil
}
