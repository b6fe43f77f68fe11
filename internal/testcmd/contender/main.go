// Command contender is a test child process: one node contending for a replication slot
// as a walflow cluster node does (pgwal.Standby wired to a cluster.Registry by a
// cluster.Elector), streaming into a memory ledger of its own. Tests SIGKILL or SIGSTOP
// the leader and time the takeover.
//
// It writes on stdout, one line each:
//
//	claim PID      it opened a replication connection (PostgreSQL pid PID) and claimed it
//	leading PID    it got the slot on that connection and leads
//	event ID       it appended the insert of the row whose id is ID
//
// It exits with status 3 when stdin closes (see internal/testcmd/child).
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
	"sync"
	"syscall"
	"time"

	"github.com/walflow/walflow/cluster"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/testcmd/child"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/source/pgwal"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "contender:", err)
		os.Exit(1)
	}
}

func run() error {
	dsn := flag.String("dsn", "", "PostgreSQL connection string")
	slot := flag.String("slot", "walflow", "replication slot")
	table := flag.String("table", "t", "table to follow")
	nats := flag.String("nats", "", "NATS URLs, comma-separated")
	name := flag.String("name", "", "node name")
	heartbeat := flag.Duration("heartbeat", cluster.HeartbeatDefault, "registry heartbeat")
	ttl := flag.Duration("ttl", cluster.NodeTTLDefault, "registry entry TTL")
	noHolderCheck := flag.Bool("no-holder-check", false, "never end the slot's walsender (as when the leader still heartbeats but cannot reach PostgreSQL)")
	senderTimeout := flag.Duration("sender-timeout", 0, "pgwal.Standby.SenderTimeout (0: its default; negative: the server's wal_sender_timeout)")
	flag.Parse()
	child.ExitOnEOF("contender")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := cluster.Config{URLs: strings.Split(*nats, ","), NodeName: *name, Replicas: 1, Heartbeat: *heartbeat, NodeTTL: *ttl, Logger: logger}.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	conn, err := cluster.Connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	reg, err := cluster.OpenRegistry(ctx, conn.NC, cfg)
	if err != nil {
		return err
	}

	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
		_ = out.Flush()
	}
	var src *pgwal.Source
	standby := cluster.NewElector(reg).Standby(func(context.Context) error {
		say("leading %d", src.Stats().ReplicationPID.Load())
		return nil
	})
	standby.SenderTimeout = *senderTimeout
	if *noHolderCheck {
		standby.HolderAliveFunc = nil
	}
	claim := standby.ClaimFunc
	standby.ClaimFunc = func(ctx context.Context, pid int32) error {
		if err := claim(ctx, pid); err != nil {
			return err
		}
		say("claim %d", pid)
		return nil
	}
	src, err = pgwal.New(pgwal.Config{ConnString: *dsn, Slot: *slot, Tables: []string{*table}, Standby: standby,
		StatusInterval: 200 * time.Millisecond, Logger: logger})
	if err != nil {
		return err
	}
	led := memory.New(nil)

	errs := make(chan error, 3)
	go func() {
		errs <- reg.Run(ctx, func() cluster.NodeInfo {
			role, since, pid := cluster.SourceRole(src.Stats())
			return cluster.NodeInfo{Role: role, LeaderSince: since, ReplicationPID: pid, Position: uint64(led.State().Head)}
		})
	}()
	go func() { errs <- src.Run(ctx, led) }()
	go func() { errs <- report(ctx, led, say) }()
	err = <-errs
	stop()
	for range 2 {
		err = cmpErr(err, <-errs)
	}
	return err
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// report says "event ID" for each event the ledger gets.
func report(ctx context.Context, led *memory.Ledger, say func(string, ...any)) error {
	var after event.Position
	for {
		if err := led.Wait(ctx, after); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		evs, err := led.Read(ctx, after, 1000)
		if err != nil {
			return err
		}
		for _, e := range evs {
			v, _ := e.NewRecord.Get("id")
			say("event %v", v)
			after = e.Position
		}
	}
}
