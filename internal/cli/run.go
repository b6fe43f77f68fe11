package cli

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/internal/configfile"
	"github.com/walflow/walflow/source/pgwal"
)

var runCommand = &command{
	name:    "run",
	args:    "[--config FILE]",
	summary: "Follow the database in the configuration file until Ctrl-C.",
	help: `
run opens the ledger, connects to PostgreSQL, creates the publication and the replication
slot when they are missing, and appends every committed change of the configured tables
to the ledger. It serves /metrics, /healthz and /status on http.addr (127.0.0.1:9187 by
default), and with a realtime section the realtime gateway at realtime.path (/realtime/ by
default) on the same address. Ctrl-C or SIGTERM stops it cleanly: open realtime streams
end with their resume position, what was appended is synced and acknowledged to the slot,
and the exit code is 0.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := fs.String("config", configfile.ConfigFileDefault, "the configuration `FILE`")
		return func(ctx context.Context, e *env, _ []string) error { return runMain(ctx, e, *path) }
	},
}

func runMain(ctx context.Context, e *env, path string) error {
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return err
	}
	log := c.Logger(e.stderr)
	cfg := c.Engine
	cfg.Logger = log
	if c.Realtime != nil {
		// Only run reads the keys: status and the operator commands never need them.
		if cfg.Realtime, err = c.Realtime.Resolve(e.getenv, log); err != nil {
			return &usageError{err}
		}
	}
	if c.AdminToken != nil {
		if cfg.AdminToken, err = c.AdminToken.Resolve(e.getenv); err != nil {
			return &usageError{err}
		}
	}
	eng, err := walflow.Open(ctx, cfg)
	if err != nil {
		return fmt.Errorf("open the engine: %w", err)
	}
	ledger := cfg.LedgerDir
	switch {
	case cfg.MemoryLedger:
		ledger = "memory"
	case cfg.Cluster != nil:
		ledger = "JetStream stream " + cmp.Or(cfg.Cluster.Stream, cluster.StreamDefault)
	}
	tables := make([]string, len(cfg.Tables))
	for i, t := range cfg.Tables {
		tables[i] = t.Name
	}
	var operators []string
	if r := eng.Operators(); r != nil {
		for _, o := range r.Operators() {
			operators = append(operators, o.Name)
		}
	}
	attrs := []any{
		slog.Any("database", redactedDSN(cfg.DatabaseURL)),
		slog.String("database_from", c.DSNFrom),
		slog.String("slot", cmp.Or(cfg.Slot, pgwal.SlotDefault)),
		slog.String("publication", cmp.Or(cfg.Publication, pgwal.PublicationDefault)),
		slog.String("tables", strings.Join(tables, ",")),
		slog.String("operators", strings.Join(operators, ",")),
		slog.String("ledger", ledger),
		slog.Uint64("ledger_head", uint64(eng.Ledger().State().Head)),
		slog.String("http_addr", cfg.HTTPAddr),
	}
	if cfg.Realtime != nil {
		// Where the keys come from, never the keys.
		attrs = append(attrs, slog.String("realtime_path", cfg.Realtime.Path), slog.String("realtime_auth", c.Realtime.Summary()))
	}
	log.InfoContext(ctx, "walflow starting", attrs...)
	runErr := eng.Run(ctx)
	head := eng.Ledger().State().Head
	closeErr := eng.Close()
	if runErr != nil {
		return runErr
	}
	if closeErr != nil {
		return fmt.Errorf("close the ledger: %w", closeErr)
	}
	log.InfoContext(ctx, "walflow stopped", slog.Uint64("ledger_head", uint64(head)))
	return nil
}
