package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/internal/configfile"
)

// TestInit: init writes the example configuration, which loads with run's loader, and
// refuses to overwrite a file without --force.
func TestInit(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app.yaml")
	r := runCLI(t.Context(), noEnv, "init", "--config", path)
	if r.code != ExitOK || !strings.Contains(r.stdout, "Wrote "+path+",") || !strings.Contains(r.stdout, "then start: walflow run --config "+path+"\n") {
		t.Fatalf("init: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join("..", "..", "walflow.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(written) != string(example) {
		t.Errorf("init wrote %d bytes that are not walflow.example.yaml (%d bytes)", len(written), len(example))
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("init wrote mode %v (%v), want 0600: the file may hold a password", fi.Mode().Perm(), err)
	}
	// The file is what walflow run loads: run's loader accepts it, with its keys.
	c, err := loadConfig(path, noEnv)
	if err != nil {
		t.Fatalf("run's loader rejects what init wrote: %v", err)
	}
	if c.Engine.DatabaseURL != "postgres://walflow:secret@localhost:5432/app" || len(c.Engine.Tables) != 3 || len(c.Engine.Operators) != 1 {
		t.Errorf("loaded database_url %q, %d tables, %d operators; want the example's, 3 and 1", c.Engine.DatabaseURL, len(c.Engine.Tables), len(c.Engine.Operators))
	}

	// A second init leaves the file alone and says how to go on.
	if err := os.WriteFile(path, []byte("slot: mine\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t.Context(), noEnv, "init", "--config", path)
	want := "walflow: init: " + path + " exists; edit it, pass --force to overwrite it with the example, or --config FILE to write another file\n"
	if r.code != ExitFailure || r.stderr != want || r.stdout != "" {
		t.Errorf("init over a file: exit %d, stderr %q; want %d and %q", r.code, r.stderr, ExitFailure, want)
	}
	if b, _ := os.ReadFile(path); string(b) != "slot: mine\n" {
		t.Errorf("init without --force changed the file to %q", b)
	}

	r = runCLI(t.Context(), noEnv, "init", "--config", path, "--force")
	if b, _ := os.ReadFile(path); r.code != ExitOK || string(b) != walflow.ExampleConfig() {
		t.Errorf("init --force: exit %d, the file is %d bytes, want the example\nstderr:\n%s", r.code, len(b), r.stderr)
	}
}

// TestInitNoDirectory: a file in a directory that does not exist is an error naming it.
func TestInitNoDirectory(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "missing", "walflow.yaml")
	r := runCLI(t.Context(), noEnv, "init", "--config", path)
	if r.code != ExitFailure || !strings.HasPrefix(r.stderr, "walflow: init: write the configuration: open "+path+": no such file or directory;") {
		t.Errorf("init into a missing directory: exit %d\nstderr:\n%s", r.code, r.stderr)
	}
}

// TestInitDefaultFile runs alone (t.Chdir): without --config, init writes walflow.yaml in the
// current directory, the file walflow run reads by default.
func TestInitDefaultFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	r := runCLI(t.Context(), noEnv, "init")
	if r.code != ExitOK || !strings.HasSuffix(r.stdout, "then start: walflow run\n") {
		t.Fatalf("init: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	if _, err := loadConfig(filepath.Join(dir, configfile.ConfigFileDefault), noEnv); err != nil {
		t.Fatalf("run's loader rejects what init wrote: %v", err)
	}
}
