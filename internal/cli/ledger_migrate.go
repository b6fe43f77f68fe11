package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/ledger/disk"
	"github.com/walflow/walflow/ledger/pebble"
)

var ledgerMigrateCommand = &command{
	name:    "migrate",
	args:    "[--config FILE]",
	summary: "Convert a ledger of the pebble backend (earlier walflow versions) to the disk backend.",
	help: `
migrate copies the pebble ledger in ledger.dir into a new directory of the disk backend
(segment files): every event at the same position, with the ledger's tail, LSNs and
origin, so that walflow run resumes the slot where it was. Then it moves the pebble
directory aside to ledger.dir + ".pebble" and puts the copy in its place. Stop walflow run
first: migrate needs the pebble ledger's lock. Afterwards set ledger.backend: disk (the
default), and remove ledger.dir + ".pebble" once walflow runs well.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := configFlag(fs)
		return func(ctx context.Context, e *env, _ []string) error {
			return ledgerMigrateMain(ctx, e, *path)
		}
	},
}

func ledgerMigrateMain(ctx context.Context, e *env, path string) error {
	const cmd = "ledger migrate"
	c, err := loadConfig(path, e.getenv)
	if err != nil {
		return err
	}
	if c.Engine.MemoryLedger {
		return usagef("%s: ledger.backend is memory in %s: there are no files to migrate", cmd, path)
	}
	dir := c.Engine.LedgerDir
	if !pebble.IsLedgerDir(dir) {
		if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
			return fmt.Errorf("%s: the ledger %s does not exist; there is nothing to migrate", cmd, dir)
		}
		return fmt.Errorf("%s: %s holds no ledger of the pebble backend; there is nothing to migrate", cmd, dir)
	}
	router, err := channel.NewRouter(c.Engine.Tables)
	if err != nil {
		return fmt.Errorf("%s: tables: %w", cmd, err)
	}
	quiet := slog.New(slog.DiscardHandler)
	src, err := pebble.Open(ctx, dir, &pebble.Options{Indexer: router.Channels, Logger: quiet})
	if err != nil {
		return lockedError(cmd, "ledger", dir, err)
	}
	tmp := filepath.Clean(dir) + ".migrating"
	old := filepath.Clean(dir) + ".pebble"
	if _, err := os.Stat(old); err == nil {
		src.Close()
		return fmt.Errorf("%s: %s exists already, from an earlier migration; remove it first", cmd, old)
	}
	if err := os.RemoveAll(tmp); err != nil { // what an interrupted migrate left
		src.Close()
		return fmt.Errorf("%s: %w", cmd, err)
	}
	st := src.State()
	fmt.Fprintf(e.stdout, "Copying positions %d to %d of %s to %s...\n", st.Tail+1, st.Head, dir, tmp)
	_, err = disk.Migrate(ctx, src, tmp, &disk.Options{Indexer: router.Channels, Logger: quiet}, nil)
	if cerr := src.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w (%s is left incomplete; the pebble ledger %s is unchanged)", cmd, err, tmp, dir)
	}
	if err := os.Rename(dir, old); err != nil {
		return fmt.Errorf("%s: move the pebble ledger aside: %w", cmd, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("%s: put the copy in place: %w (the pebble ledger is in %s, the copy in %s)", cmd, err, old, tmp)
	}
	fmt.Fprintf(e.stdout, "Migrated %d events to the disk backend in %s; the pebble ledger is kept in %s.\n", st.Head-st.Tail, dir, old)
	if c.Engine.LedgerBackend == "pebble" {
		fmt.Fprintf(e.stdout, "Set ledger.backend: disk (or remove the line) in %s before walflow run.\n", path)
	}
	return nil
}
