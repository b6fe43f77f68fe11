package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// BinDirEnv is the environment variable that, when set, names the directory
// holding the PostgreSQL server binaries (initdb, pg_ctl, postgres). It takes
// precedence over every other way of finding them.
const BinDirEnv = "WALFLOW_PG_BINDIR"

// ErrBinariesNotFound is wrapped by the error [Start] returns when the
// PostgreSQL server binaries cannot be found.
var ErrBinariesNotFound = errors.New("PostgreSQL server binaries not found")

// InstallCommand is the exact shell command that installs the PostgreSQL server binaries on
// Debian and Ubuntu for this process: [InstallCommandAs] its effective user id.
func InstallCommand() string { return InstallCommandAs(os.Geteuid()) }

// InstallCommandAs is the exact shell command that installs the PostgreSQL server binaries
// on Debian and Ubuntu for the user euid: with sudo unless euid is root's.
func InstallCommandAs(euid int) string {
	if euid != 0 {
		return "sudo apt-get update && sudo apt-get install -y --no-install-recommends postgresql-15"
	}
	return "apt-get update && apt-get install -y --no-install-recommends postgresql-15"
}

// installHint tells the user how to get the server binaries.
func installHint() string {
	return "install the PostgreSQL server with `" + InstallCommand() + "` (Debian/Ubuntu; scripts/setup in a walflow " +
		"checkout does it), or set " + BinDirEnv + " to the directory that contains initdb, pg_ctl and postgres"
}

// serverBinaries must all be present in a usable binary directory.
var serverBinaries = []string{"initdb", "pg_ctl", "postgres"}

// defaultGlob is where Debian and Ubuntu install PostgreSQL server binaries.
const defaultGlob = "/usr/lib/postgresql/*/bin"

// binFinder holds everything the binary directory lookup depends on, so that
// tests can substitute a fake environment.
type binFinder struct {
	getenv func(string) string // environment lookup
	path   string              // value of PATH to search
	glob   string              // fallback pattern, e.g. /usr/lib/postgresql/*/bin
}

// defaultBinFinder looks at the real environment.
func defaultBinFinder() binFinder {
	return binFinder{getenv: os.Getenv, path: os.Getenv("PATH"), glob: defaultGlob}
}

// findBinDir returns the directory holding initdb, pg_ctl and postgres. See
// the package documentation for the lookup order.
func (f binFinder) findBinDir(ctx context.Context) (string, error) {
	if dir := f.getenv(BinDirEnv); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("pgtest: %s=%q is not usable: %w: %v; %s", BinDirEnv, dir, ErrBinariesNotFound, err, installHint())
		}
		return absDir(dir), nil
	}

	// PATH: any of the server binaries can anchor the search.
	for _, name := range serverBinaries {
		p, err := lookPathIn(name, f.path)
		if err != nil {
			continue
		}
		var candidates []string
		if real, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
		candidates = append(candidates, filepath.Dir(p))
		for _, dir := range candidates {
			if checkBinDir(dir) == nil {
				return absDir(dir), nil
			}
		}
	}

	// pg_config --bindir.
	if pgConfig, err := lookPathIn("pg_config", f.path); err == nil {
		if dir, err := runPgConfigBindir(ctx, pgConfig); err == nil && checkBinDir(dir) == nil {
			return absDir(dir), nil
		}
	}

	// Well-known location, highest version first.
	if f.glob != "" {
		matches, _ := filepath.Glob(f.glob)
		sortByVersionDesc(matches)
		for _, dir := range matches {
			if checkBinDir(dir) == nil {
				return absDir(dir), nil
			}
		}
	}

	return "", fmt.Errorf("pgtest: %w (looked for %s in $%s, PATH, `pg_config --bindir` and %s); %s",
		ErrBinariesNotFound, strings.Join(serverBinaries, ", "), BinDirEnv, f.glob, installHint())
}

// checkBinDir reports whether dir holds every server binary.
func checkBinDir(dir string) error {
	var missing []string
	for _, name := range serverBinaries {
		if !isExecutable(filepath.Join(dir, name)) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s in %s", strings.Join(missing, ", "), dir)
	}
	return nil
}

// absDir makes dir absolute if possible.
func absDir(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

// isExecutable reports whether path is a regular file with an execute bit.
func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// lookPathIn is exec.LookPath with an explicit PATH value.
func lookPathIn(name, pathList string) (string, error) {
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" {
			continue // an empty element means ".", which we never want
		}
		p := filepath.Join(dir, name)
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", name)
}

// runPgConfigBindir runs `pg_config --bindir`.
func runPgConfigBindir(ctx context.Context, pgConfig string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgConfig, "--bindir")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return "", err
	}
	dir := strings.TrimSpace(out.String())
	if dir == "" {
		return "", errors.New("pg_config printed no bindir")
	}
	return dir, nil
}

// sortByVersionDesc sorts paths like /usr/lib/postgresql/15/bin by the
// numeric version in their parent directory name, highest first.
func sortByVersionDesc(dirs []string) {
	version := func(dir string) []int {
		var v []int
		for _, part := range strings.Split(filepath.Base(filepath.Dir(dir)), ".") {
			n, err := strconv.Atoi(part)
			if err != nil {
				n = -1
			}
			v = append(v, n)
		}
		return v
	}
	sort.SliceStable(dirs, func(i, j int) bool {
		a, b := version(dirs[i]), version(dirs[j])
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
}
