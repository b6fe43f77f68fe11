// Command projector runs a walflow engine with a disk ledger and two projectors of an
// event-sourced application, for internal/faulttest, which runs it as a child process,
// SIGKILLs it and starts it again.
//
// The application writes deposits into its own events table; the projectors build read
// models from it, on this schema (the test creates it before the first run):
//
//	events(id bigserial, stream_identifier, type, payload)  the application's event store
//	balances(account, balance)                               balances' read model
//	applied(id, ord, times)                                  balances' applications, one row per id
//	accounts(account, first_position)                        accounts' read model
//	accounts_applied(position, times)                        accounts' applications, one row per position
//
// balances runs in application-sequence mode on events.id (ids commit out of order and
// some roll back) and applies each deposit through its transaction; accounts depends on
// balances and fails if the balance of an event's account is not there yet.
//
// It speaks the line protocol of internal/testcmd/child on stdout (ready, state, vmhwm)
// and takes its flags -dsn, -ledger, -slot, -tables, -status-interval and -exit-on-eof, plus
// -grace, the sequence grace period.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/testcmd/child"
	"github.com/walflow/walflow/projector"
)

func main() { os.Exit(run()) }

func run() int {
	dsn := flag.String("dsn", "", "PostgreSQL connection URL (required)")
	dir := flag.String("ledger", "", "ledger directory (required)")
	slot := flag.String("slot", "", "replication slot name (required)")
	tables := flag.String("tables", "events", "tables to follow, comma-separated")
	status := flag.Duration("status-interval", 200*time.Millisecond, "how often the slot is acknowledged")
	grace := flag.Duration("grace", 2*time.Second, "sequence grace period of the balances projector")
	exitOnEOF := flag.Bool("exit-on-eof", false, "exit with status 3 when stdin reaches end of file")
	flag.Parse()
	if *dsn == "" || *dir == "" || *slot == "" {
		fmt.Fprintln(os.Stderr, "projector: -dsn, -ledger and -slot are required")
		flag.Usage()
		return 2
	}
	if *exitOnEOF {
		child.ExitOnEOF("projector")
	}
	var tabs []channel.Table
	for _, name := range strings.Split(*tables, ",") {
		tabs = append(tabs, channel.Table{Name: strings.TrimSpace(name)})
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: *dsn, Slot: *slot, Tables: tabs, LedgerDir: *dir, StatusInterval: *status,
		ProcessStatus: "none", Logger: log,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "projector: open: %v\n", err)
		return 1
	}
	pool, err := pgxpool.New(ctx, *dsn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "projector: pool: %v\n", err)
		_ = eng.Close()
		return 1
	}
	runner, err := projector.New(projector.Config{
		Ledger: eng.Ledger(), DB: pool, Logger: log,
		Projectors: []projector.Projector{
			{Name: "balances", Entities: []string{"events"}, HandleTx: balance, Sequence: &projector.SequenceConfig{Grace: *grace}},
			{Name: "accounts", Entities: []string{"events"}, HandleTx: account, DependsOn: []string{"balances"}},
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "projector: %v\n", err)
		pool.Close()
		_ = eng.Close()
		return 1
	}
	runCtx, cancel := context.WithCancel(ctx)
	engErr, projErr := make(chan error, 1), make(chan error, 1)
	go func() { engErr <- eng.Run(runCtx) }()
	go func() { projErr <- runner.Run(runCtx) }()
	rep := child.NewReporter(eng, bufio.NewWriter(os.Stdout))
	err = watch(rep, engErr, projErr)
	cancel()
	err = errors.Join(err, <-engErr, <-projErr)
	pool.Close()
	if cerr := eng.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close: %w", cerr))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "projector: %v\n", err)
		return 1
	}
	if err := rep.Final("projector", nil); err != nil {
		return 1
	}
	return 0
}

// watch reports the engine every 20ms until the engine or the runner returns (the first's
// error is returned, and the result is put back for the caller).
func watch(rep *child.Reporter, engErr, projErr chan error) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case err := <-engErr:
			engErr <- nil
			return err
		case err := <-projErr:
			projErr <- nil
			return err
		case <-t.C:
		}
		if err := rep.Tick(nil); err != nil {
			return err
		}
	}
}

func text(e *event.Event, col string) (string, error) {
	v, ok := e.NewRecord.Get(col)
	s, isText := v.Text()
	if !ok || !isText {
		return "", fmt.Errorf("event %d has no %s", e.Position, col)
	}
	return s, nil
}

// balance applies one deposit to the account's balance and records the application.
func balance(ctx context.Context, tx pgx.Tx, e event.Event) error {
	ids, err := text(&e, "id")
	if err != nil {
		return err
	}
	id, err := strconv.ParseInt(ids, 10, 64)
	if err != nil {
		return err
	}
	acct, err := text(&e, "stream_identifier")
	if err != nil {
		return err
	}
	ps, err := text(&e, "payload")
	if err != nil {
		return err
	}
	var payload struct{ Amount int64 }
	if err := json.Unmarshal([]byte(ps), &payload); err != nil {
		return fmt.Errorf("payload of event %d: %w", id, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO balances VALUES ($1, $2) ON CONFLICT (account) DO UPDATE SET balance = balances.balance + EXCLUDED.balance`, acct, payload.Amount); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO applied (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET times = applied.times + 1`, id)
	return err
}

// account records the accounts, reading balances' model: its row must be there, since
// accounts depends on balances.
func account(ctx context.Context, tx pgx.Tx, e event.Event) error {
	acct, err := text(&e, "stream_identifier")
	if err != nil {
		return err
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM balances WHERE account = $1`, acct).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("event %d of account %s: no balance yet, though balances should have applied it", e.Position, acct)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO accounts VALUES ($1, $2) ON CONFLICT (account) DO NOTHING`, acct, int64(e.Position)); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO accounts_applied (position) VALUES ($1) ON CONFLICT (position) DO UPDATE SET times = accounts_applied.times + 1`, int64(e.Position))
	return err
}
