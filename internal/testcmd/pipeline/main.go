// Command pipeline runs a walflow engine with a disk ledger, for the fault tests in
// internal/faulttest, which run it as a child process, kill it and start it again.
//
// It speaks the line protocol of internal/testcmd/child on stdout (ready, state, vmhwm),
// and one line more:
//
//	operator NAME position=N halted=BOOL       an operator's committed position, when it changed
//
// With -operators it also runs a predefined set of operators (see operators.go); an
// operator's position is the ledger position through which its effects are committed, as
// its runner knows it (the stored checkpoint may lag behind while no event of its entities
// comes).
//
// Logs go to stderr. SIGTERM or SIGINT stops it gracefully: the engine syncs and
// acknowledges what it appended, the ledger is closed, and it exits 0. With -exit-on-eof it
// also exits (status 3, without cleaning up, like a crash) when stdin reaches end of file,
// so it does not outlive a test binary that died.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/testcmd/child"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/retry"
)

func main() { os.Exit(run()) }

func run() int {
	dsn := flag.String("dsn", "", "PostgreSQL connection URL (required)")
	dir := flag.String("ledger", "", "ledger directory (required)")
	slot := flag.String("slot", "", "replication slot name (required)")
	tables := flag.String("tables", "", "tables to follow, comma-separated, each name or name:idcolumn (required)")
	status := flag.Duration("status-interval", 200*time.Millisecond, "how often the slot is acknowledged")
	report := flag.Duration("report-interval", 20*time.Millisecond, "how often the ledger state is checked for a state line")
	level := flag.String("log-level", "info", "log level: debug, info, warn or error")
	exitOnEOF := flag.Bool("exit-on-eof", false, "exit with status 3 when stdin reaches end of file")
	opSet := flag.String("operators", "", "operator set to run: "+operatorSetNames()+" (default none)")
	opBatch := flag.Int("operator-batch-size", 0, "most events an operator applies in one transaction (default walflow's)")
	opRetryMin := flag.Duration("operator-retry-min", 0, "the first delay before an operator retries a failing event, and a tenth of the longest (default walflow's)")
	flag.Parse()
	if *dsn == "" || *dir == "" || *slot == "" || *tables == "" {
		fmt.Fprintln(os.Stderr, "pipeline: -dsn, -ledger, -slot and -tables are required")
		flag.Usage()
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(os.Stderr, "pipeline: -log-level: %v\n", err)
		return 2
	}
	tabs, err := parseTables(*tables)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pipeline: -tables: %v\n", err)
		return 2
	}
	var ops []operator.Operator
	if *opSet != "" {
		set, ok := operatorSets[*opSet]
		if !ok {
			fmt.Fprintf(os.Stderr, "pipeline: -operators: no set %q; the sets are %s\n", *opSet, operatorSetNames())
			return 2
		}
		ops = set()
	}
	if *exitOnEOF {
		child.ExitOnEOF("pipeline")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: *dsn, Slot: *slot, Tables: tabs, LedgerDir: *dir,
		StatusInterval: *status, Logger: log, Operators: ops, OperatorBatchSize: *opBatch,
		OperatorRetry: retry.Policy{Min: *opRetryMin, Max: 10 * *opRetryMin},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "pipeline: open: %v\n", err)
		return 1
	}
	rep := child.NewReporter(eng, bufio.NewWriter(os.Stdout))
	runErr := make(chan error, 1)
	go func() { runErr <- eng.Run(ctx) }()
	err = watch(rep, eng, *report, runErr)
	if cerr := eng.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pipeline: %v\n", err)
		return 1
	}
	if err := rep.Final("pipeline", func(out *bufio.Writer) { printOperators(out, eng, nil) }); err != nil {
		return 1
	}
	return 0
}

// parseTables parses the -tables flag: name or name:idcolumn, comma-separated.
func parseTables(s string) ([]channel.Table, error) {
	var out []channel.Table
	for _, part := range strings.Split(s, ",") {
		name, id, _ := strings.Cut(strings.TrimSpace(part), ":")
		if name == "" {
			return nil, fmt.Errorf("empty table name in %q", s)
		}
		out = append(out, channel.Table{Name: name, IDColumn: id})
	}
	return out, nil
}

// watch reports the engine and its operators every interval until Run returns; it
// returns Run's error.
func watch(rep *child.Reporter, eng *walflow.Engine, every time.Duration, runErr <-chan error) error {
	lastOps := map[string]string{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case err := <-runErr:
			return err
		case <-t.C:
		}
		if err := rep.Tick(func(out *bufio.Writer) { printOperators(out, eng, lastOps) }); err != nil {
			return err
		}
	}
}

// printOperators writes a line for each operator whose line differs from the one in last
// (every operator when last is nil), and records it there.
func printOperators(out *bufio.Writer, eng *walflow.Engine, last map[string]string) {
	r := eng.Operators()
	if r == nil {
		return
	}
	for _, o := range r.Operators() {
		line := fmt.Sprintf("operator %s position=%d halted=%t", o.Name, o.Position, o.Halted)
		if last == nil || last[o.Name] != line {
			fmt.Fprintln(out, line)
			if last != nil {
				last[o.Name] = line
			}
		}
	}
}
