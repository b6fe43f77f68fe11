package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/internal/configfile"
)

var initCommand = &command{
	name:    "init",
	args:    "[--config FILE] [--force]",
	summary: "Write a commented walflow.yaml to start from.",
	help: `
init writes walflow.yaml (or --config FILE), the configuration walflow run reads, with
every key commented: the example of a blog with posts, comments and an operator keeping
their counts. Edit database_url and tables (and remove what you do not use), then start
walflow run. It does not overwrite an existing file unless given --force.`,
	flags: func(fs *flag.FlagSet) execFunc {
		path := fs.String("config", configfile.ConfigFileDefault, "the configuration `FILE` to write")
		force := fs.Bool("force", false, "overwrite the file if it exists")
		return func(_ context.Context, e *env, _ []string) error { return initMain(e, *path, *force) }
	},
}

func initMain(e *env, path string, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	// The file may come to hold a database password: only its owner reads it.
	f, err := os.OpenFile(path, flags, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("init: %s exists; edit it, pass --force to overwrite it with the example, or --config FILE to write another file", path)
	}
	if err != nil {
		return fmt.Errorf("init: write the configuration: %w; pass --config FILE to write it elsewhere", err)
	}
	_, err = f.WriteString(walflow.ExampleConfig())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("init: write the configuration to %s: %w", path, err)
	}
	run := "walflow run"
	if path != configfile.ConfigFileDefault {
		run += " --config " + path
	}
	fmt.Fprintf(e.stdout, "Wrote %s, the example configuration with every key commented.\n"+
		"Set database_url (or WALFLOW_DATABASE_URL) and the tables to follow, remove what you do not use,\n"+
		"then start: %s\n", path, run)
	return nil
}
