// Package child holds what walflow's test child processes (internal/testcmd/...) share:
// their line protocol on stdout, the exit when the test binary that started them is gone,
// and the figures of /proc/self/status they report.
//
// The protocol:
//
//	ready                                      the engine is streaming from the slot
//	state head=N commit=LSN end=LSN acked=LSN  the ledger's durable state, when it changed
//	vmhwm N                                    peak resident set size in KiB, just before exit
package child

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/walflow/walflow"
)

// ExitOnEOF exits the process with status 3, without cleaning up (like a crash), once
// stdin reaches end of file: the test that started it closes stdin, or died, and the child
// must not outlive it.
func ExitOnEOF(name string) {
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		fmt.Fprintf(os.Stderr, "%s: stdin closed; exiting\n", name)
		os.Exit(3)
	}()
}

// Reporter writes the protocol's lines for one engine.
type Reporter struct {
	eng   *walflow.Engine
	out   *bufio.Writer
	ready bool
	last  string
}

// NewReporter reports on eng to out.
func NewReporter(eng *walflow.Engine, out *bufio.Writer) *Reporter {
	return &Reporter{eng: eng, out: out}
}

// Tick writes "ready" the first time the engine's health check passes, the state line when
// the ledger's state changed, then what extra writes, and flushes.
func (r *Reporter) Tick(extra func(out *bufio.Writer)) error {
	if !r.ready {
		rec := httptest.NewRecorder()
		r.eng.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		if rec.Code == http.StatusOK {
			r.ready = true
			fmt.Fprintln(r.out, "ready")
		}
	}
	if line := r.state(); line != r.last {
		fmt.Fprintln(r.out, line)
		r.last = line
	}
	if extra != nil {
		extra(r.out)
	}
	if err := r.out.Flush(); err != nil {
		return fmt.Errorf("write stdout: %w", err)
	}
	return nil
}

// Final writes the state line and the vmhwm line whatever was written before, and flushes:
// the last lines before a clean exit.
func (r *Reporter) Final(name string, extra func(out *bufio.Writer)) error {
	fmt.Fprintln(r.out, r.state())
	if extra != nil {
		extra(r.out)
	}
	if kb, err := StatusKiB("VmHWM"); err == nil {
		fmt.Fprintf(r.out, "vmhwm %d\n", kb)
	} else {
		fmt.Fprintf(os.Stderr, "%s: read peak RSS: %v\n", name, err)
	}
	return r.out.Flush()
}

func (r *Reporter) state() string {
	st := r.eng.Ledger().State()
	acked := max(st.AckedLSN, st.LastEndLSN)
	return fmt.Sprintf("state head=%d commit=%s end=%s acked=%s", st.Head, st.LastCommitLSN, st.LastEndLSN, acked)
}

// StatusKiB reads a memory figure of /proc/self/status (VmHWM, VmRSS), in KiB.
func StatusKiB(name string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parse %q: %w", line, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("no %s line in /proc/self/status", name)
}
