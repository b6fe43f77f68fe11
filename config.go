package walflow

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/walflow/walflow/alert"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/index"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/processstatus"
	"github.com/walflow/walflow/projector"
	"github.com/walflow/walflow/retry"
	"github.com/walflow/walflow/source/pgwal"
)

// Defaults for [Config].
const (
	LedgerDirDefault     = "walflow-data"
	ProcessStatusDefault = "postgres"
	// RetentionDefault is the default Config.Retention: a week.
	RetentionDefault = 7 * 24 * time.Hour
	// ConsoleIntervalDefault is the default Config.ConsoleInterval.
	ConsoleIntervalDefault = 2 * time.Second
)

// Config configures an [Engine]. The zero value of every field but DatabaseURL is usable.
type Config struct {
	// DatabaseURL is the PostgreSQL connection string. The role needs REPLICATION (or
	// superuser), and the server wal_level = logical. Required.
	DatabaseURL string
	// Slot is the logical replication slot's name. Default "walflow".
	Slot string
	// TemporarySlot makes the slot temporary (dropped when walflow disconnects): only for
	// throwaway runs. Default false.
	TemporarySlot bool
	// SlotFailover creates the slot with failover = true (PostgreSQL 17 or newer), so that a
	// physical standby with sync_replication_slots keeps it and walflow resumes after a
	// promotion. On an older server Run fails at start, naming the server's version. It
	// applies when the slot is created (see pgwal.Config.SlotFailover), and cannot be
	// combined with TemporarySlot. Default false.
	SlotFailover bool
	// Publication is the publication's name. Default "walflow".
	Publication string
	// Tables lists the tables to follow with their channel settings (id column, scopes,
	// timestamp field). Default none: an existing publication is used as it is, or one FOR
	// ALL TABLES is created (which needs a superuser).
	Tables []channel.Table
	// LedgerDir is the embedded ledger's directory. Default "walflow-data".
	LedgerDir string
	// LedgerBackend is the format of LedgerDir: "disk" (segment files, package ledger/disk)
	// or "pebble" (a Pebble database, package ledger/pebble, the format of walflow before
	// segment files). Default "disk". Opening a directory of the other backend fails with an
	// error that says which it is.
	LedgerBackend string
	// MemoryLedger keeps the ledger in memory instead of LedgerDir: everything is lost when
	// the process exits, so use it with a temporary slot, for tests and demos. Default false.
	MemoryLedger bool
	// Projectors are named, ordered consumers of the ledger with a stored position (package
	// projector), run by Run on the ledger: each rehydrates from its position, then follows
	// live. Their positions are kept in the walflow.projectors table of DatabaseURL unless
	// ProjectorStore is set. Retention never removes an event a projector has not applied.
	// Default none.
	Projectors []projector.Projector
	// ProjectorStore keeps the projectors' positions. Default nil: the walflow.projectors
	// table (HandleTx projectors need a store that saves in their transaction).
	ProjectorStore projector.PositionStore
	// Indexers are custom indexes of the ledger (package index: index.Field, index.Type,
	// index.Table or your own function), built beside it and read with
	// Engine.Indexes().Read. Each keeps its own checkpoint, catches up from history and
	// rebuilds when its data is deleted. Default none.
	Indexers []index.Indexer
	// IndexDir is the directory of the indexes' store, beside a disk ledger. Default
	// LedgerDir + ".index". (With MemoryLedger the indexes are in memory too; with Cluster,
	// in the database.)
	IndexDir string
	// Retention is how long events stay in the ledger. Every event is kept on disk (or in
	// memory) until it is removed, so without a bound the ledger grows forever: Run removes,
	// about every minute, the events that committed more than Retention ago. It never
	// removes an event an operator has not committed (a halted or lagging operator holds the
	// ledger back: watch walflow_operator_lag_events) nor one process status has not
	// scanned. A subscriber that asks for removed events (it resumes from an old position,
	// or falls further behind than Retention) gets an error wrapping ledger.ErrTruncated: it
	// must reload its state and subscribe again from the head. A negative value keeps every
	// event. Default RetentionDefault (7 days).
	Retention time.Duration
	// HTTPAddr is where Run serves the console (/), /metrics, /healthz, /readyz and /status, e.g.
	// 127.0.0.1:9187. Default "": no HTTP server (mount [Engine.Handler] yourself).
	HTTPAddr string
	// AdminToken enables the console's actions (restart or skip a halted operator, retry or
	// discard its parked events) for requests that send it as Authorization: Bearer TOKEN.
	// It must be at least 16 characters; use a long random string. Default "": the actions
	// are refused with 403 and the console does not show them.
	AdminToken string
	// ConsoleInterval is how often Run samples the engine for the console's charts, which
	// keep the last hour of samples. Default ConsoleIntervalDefault (2s).
	ConsoleInterval time.Duration
	// StatusInterval is how often the slot is acknowledged and its lag measured. Default 10s.
	StatusInterval time.Duration
	// SyncDelay is how long appended transactions may wait to share one ledger fsync.
	// Default 5ms.
	SyncDelay time.Duration
	// Operators keep derived tables up to date from the ledger (see package operator). Their
	// checkpoints live in the walflow schema of the followed database. Default none.
	Operators []operator.Operator
	// OperatorBatchSize is the most events an operator applies in one transaction.
	// Default 100.
	OperatorBatchSize int
	// OperatorBatchDelay is how long an operator waits for a batch to fill. Default 0.
	OperatorBatchDelay time.Duration
	// OperatorRetry is the retry policy of a failing operator event. The zero value is the
	// default: 500ms, ×2, at most 10s, 5 retries, then the operator halts.
	OperatorRetry retry.Policy
	// ErrorReporter receives the retries and halts of operators and projectors (besides the
	// metrics), and the failure of an indexer that stops Run, each named by its kind and
	// name. Default: a retry.LogReporter on Logger (an indexer's failure is then told by
	// Run's error alone).
	ErrorReporter retry.Reporter
	// ProcessStatus is where the last processed timestamp of each entity is kept:
	// "postgres" (the walflow schema of the followed database), "memory" or "none".
	// Default "postgres". ProcessStatusStore, when set, takes precedence.
	ProcessStatus string
	// ProcessStatusStore is your own process-status store. Default nil.
	ProcessStatusStore processstatus.Store
	// Realtime, when set, serves the realtime gateway (package realtime: authorized streams
	// of the channels for browsers and services) at Realtime.Path, next to /metrics.
	// Default nil: none.
	Realtime *RealtimeConfig
	// Alerts are the lag budgets (package alert): the WAL the slot may retain, and how many
	// events and seconds each operator, projector and index may fall behind. A crossed
	// budget makes /readyz answer 503 with the reasons, sets walflow_alert_active to 1,
	// logs once at WARN (and once at INFO on recovery) and shows in Status.Alerts. They are
	// evaluated every StatusInterval. Default: none (every alert off).
	Alerts alert.Budgets
	// Logger receives walflow's logs. Default: warnings and errors as text on stderr.
	Logger *slog.Logger
	// Cluster, when set, makes the engine one node of a cluster (package cluster, and
	// docs/cluster.md): the ledger is a NATS JetStream stream shared by every node
	// (package ledger/jetstream) instead of LedgerDir (the node keeps only its channel
	// index beside it, in LedgerDir + ".channels/<node name>"); exactly one node streams the slot,
	// and another takes it over when that node dies, resuming from the slot with nothing
	// lost or appended twice; every node serves Subscribe, the realtime gateway, process
	// status and /metrics from the stream; the operators run on one node at a time and
	// the projectors each on one node at a time, moving when their node dies; custom
	// indexes are computed by one node at a time into tables of the database that every
	// node reads (not IndexDir), the others following them. Retention is applied by the
	// leader. Cannot be combined with MemoryLedger nor TemporarySlot. Default nil: one
	// process with its own ledger, no NATS.
	Cluster *cluster.Config
}

func (c Config) withDefaults() Config {
	c.Slot = cmp.Or(c.Slot, pgwal.SlotDefault)
	c.Publication = cmp.Or(c.Publication, pgwal.PublicationDefault)
	c.LedgerDir = cmp.Or(c.LedgerDir, LedgerDirDefault)
	c.LedgerBackend = cmp.Or(c.LedgerBackend, "disk")
	c.IndexDir = cmp.Or(c.IndexDir, c.LedgerDir+".index")
	c.Retention = cmp.Or(c.Retention, RetentionDefault)
	c.StatusInterval = cmp.Or(c.StatusInterval, pgwal.StatusIntervalDefault)
	c.SyncDelay = cmp.Or(c.SyncDelay, pgwal.SyncDelayDefault)
	c.ConsoleInterval = cmp.Or(c.ConsoleInterval, ConsoleIntervalDefault)
	c.ProcessStatus = cmp.Or(c.ProcessStatus, ProcessStatusDefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	tables := make([]channel.Table, len(c.Tables))
	for i, t := range c.Tables {
		tables[i] = t.WithDefaults()
	}
	c.Tables = tables
	if c.Realtime != nil {
		rc := c.Realtime.withDefaults()
		c.Realtime = &rc
	}
	if c.Cluster != nil {
		cc := *c.Cluster
		cc.Logger = cmp.Or(cc.Logger, c.Logger)
		cc = cc.WithDefaults()
		c.Cluster = &cc
	}
	return c
}

func (c Config) validate() error {
	if c.DatabaseURL == "" {
		return errors.New("walflow: DatabaseURL is empty; set it to a PostgreSQL URL such as postgres://app@localhost:5432/app (the CLI also reads WALFLOW_DATABASE_URL)")
	}
	if len(c.Indexers) > 0 && !c.MemoryLedger && filepath.Clean(c.IndexDir) == filepath.Clean(c.LedgerDir) {
		return fmt.Errorf("walflow: IndexDir %q is the ledger's directory; give the indexes their own (default LedgerDir + \".index\")", c.IndexDir)
	}
	if c.LedgerBackend != "disk" && c.LedgerBackend != "pebble" {
		return fmt.Errorf("walflow: LedgerBackend %q is not a disk ledger backend; use disk (segment files, the default) or pebble (the format of walflow before segment files)", c.LedgerBackend)
	}
	if !ValidProcessStatus(c.ProcessStatus) {
		return fmt.Errorf("walflow: ProcessStatus %q is not a store: use postgres, memory or none", c.ProcessStatus)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return fmt.Errorf("walflow: HTTPAddr %q is not host:port (like 127.0.0.1:9187): %w", c.HTTPAddr, err)
		}
	}
	if err := c.validateConsole(); err != nil {
		return err
	}
	if err := c.Alerts.Validate(); err != nil {
		return err
	}
	if c.Realtime != nil {
		if err := c.Realtime.validate(); err != nil {
			return err
		}
	}
	if c.Cluster != nil {
		switch {
		case c.MemoryLedger:
			return errors.New("walflow: MemoryLedger and Cluster are both set, but a cluster keeps its ledger on NATS JetStream; turn MemoryLedger off")
		case c.TemporarySlot:
			return errors.New("walflow: TemporarySlot and Cluster are both set, but a temporary slot is dropped with its leader's connection, so no standby could take it over; turn TemporarySlot off")
		}
		if err := c.Cluster.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// ValidProcessStatus reports whether s names a process-status store Config.ProcessStatus
// takes: postgres, memory or none.
func ValidProcessStatus(s string) bool {
	switch s {
	case "postgres", "memory", "none":
		return true
	}
	return false
}

func (c Config) tableNames() []string {
	names := make([]string, len(c.Tables))
	for i, t := range c.Tables {
		names[i] = t.Name
	}
	return names
}
