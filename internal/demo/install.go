package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/walflow/walflow/internal/pgtest"
)

// pgInstaller installs the PostgreSQL server binaries for the demo when they are missing.
// Its fields are what the decision depends on, so tests can give their own.
type pgInstaller struct {
	euid     int                                                          // the process's effective user id
	lookPath func(string) (string, error)                                 // exec.LookPath
	run      func(ctx context.Context, name string, args ...string) error // runs a command to the end
}

// systemInstaller installs with the real apt-get, its output going to out.
func systemInstaller(out io.Writer) pgInstaller {
	return pgInstaller{
		euid:     os.Geteuid(),
		lookPath: exec.LookPath,
		run: func(ctx context.Context, name string, args ...string) error {
			cmd := exec.CommandContext(ctx, name, args...)
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			cmd.Stdout, cmd.Stderr = out, out
			return cmd.Run()
		},
	}
}

// aptInstallArgs are apt-get's arguments that install the server binaries.
var aptInstallArgs = []string{"install", "-y", "--no-install-recommends", "postgresql-15"}

// install runs apt-get update and apt-get install when the process is root and apt-get is
// on the PATH, saying so on w first. Otherwise it runs nothing and returns an error that
// gives the exact command to run.
func (i pgInstaller) install(ctx context.Context, w io.Writer) error {
	if i.euid != 0 {
		return fmt.Errorf("the PostgreSQL server binaries are missing and only root may install them; run `%s`, then walflow demo again", pgtest.InstallCommandAs(i.euid))
	}
	aptGet, err := i.lookPath("apt-get")
	if err != nil {
		return fmt.Errorf("the PostgreSQL server binaries are missing and apt-get, which would install them, is not available (%v); "+
			"install the PostgreSQL 15 server with your package manager and set %s to the directory holding initdb", err, pgtest.BinDirEnv)
	}
	fmt.Fprintf(w, "walflow demo: the PostgreSQL server binaries are missing; installing them: %s\n", pgtest.InstallCommand())
	if err := i.run(ctx, aptGet, "update"); err != nil {
		return fmt.Errorf("install the PostgreSQL server: apt-get update: %w; run `%s` yourself and see what it says", err, pgtest.InstallCommand())
	}
	if err := i.run(ctx, aptGet, aptInstallArgs...); err != nil {
		return fmt.Errorf("install the PostgreSQL server: apt-get %s: %w; run `%s` yourself and see what it says",
			strings.Join(aptInstallArgs, " "), err, pgtest.InstallCommand())
	}
	return nil
}

// startCluster starts the demo's cluster with start (pgtest.Start). When the server
// binaries are missing and WALFLOW_PG_BINDIR (looked up with getenv: pgtest reads the
// process environment) does not name where they should be, it installs them with inst,
// saying so on w, and starts again.
func startCluster(ctx context.Context, w io.Writer, inst pgInstaller, start func(context.Context, *pgtest.Options) (*pgtest.Cluster, error), getenv func(string) string) (*pgtest.Cluster, error) {
	cluster, err := start(ctx, nil)
	if err == nil || !errors.Is(err, pgtest.ErrBinariesNotFound) || getenv(pgtest.BinDirEnv) != "" {
		return cluster, err
	}
	if ierr := inst.install(ctx, w); ierr != nil {
		return nil, ierr
	}
	return start(ctx, nil)
}
