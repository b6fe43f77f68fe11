// Package scripts holds the tests of the shell scripts next to them.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeMachine is a machine as scripts/setup sees it: a PATH of its own and the places it
// looks for the PostgreSQL server binaries and Chromium, all in a temporary directory.
type fakeMachine struct {
	t        *testing.T
	bin      string // the whole PATH
	pgRoot   string // holds VERSION/bin, like /usr/lib/postgresql
	chromium string
	aptLog   string // what the fake apt-get was run with, one line a call
	extraEnv []string
}

func newFakeMachine(t *testing.T) *fakeMachine {
	dir := t.TempDir()
	m := &fakeMachine{
		t:        t,
		bin:      filepath.Join(dir, "bin"),
		pgRoot:   filepath.Join(dir, "postgresql"),
		chromium: filepath.Join(dir, "chromium"),
		aptLog:   filepath.Join(dir, "apt.log"),
	}
	if err := os.Mkdir(m.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return m
}

// withAptGet puts an apt-get on the PATH that logs its arguments and, when installs is
// true, makes `install` create what the packages it is given would.
func (m *fakeMachine) withAptGet(installs bool) {
	script := "#!/bin/bash\nPATH=/usr/bin:/bin\necho \"$*\" >> " + m.aptLog + "\n"
	if installs {
		script += `if [ "$1" = install ]; then
	for pkg in "$@"; do
		case "$pkg" in
		postgresql-15) mkdir -p ` + m.pgRoot + `/15/bin && for b in initdb pg_ctl postgres; do touch ` + m.pgRoot + `/15/bin/$b; chmod +x ` + m.pgRoot + `/15/bin/$b; done ;;
		chromium) touch ` + m.chromium + ` && chmod +x ` + m.chromium + ` ;;
		esac
	done
fi
`
	}
	if err := os.WriteFile(filepath.Join(m.bin, "apt-get"), []byte(script), 0o755); err != nil {
		m.t.Fatal(err)
	}
}

// withPostgres puts the server binaries where the distribution would.
func (m *fakeMachine) withPostgres() {
	dir := filepath.Join(m.pgRoot, "15", "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		m.t.Fatal(err)
	}
	for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			m.t.Fatal(err)
		}
	}
}

// setup runs scripts/setup on the machine and returns its exit code and output.
func (m *fakeMachine) setup() (int, string) {
	m.t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		m.t.Fatalf("the setup script needs bash: %v", err)
	}
	cmd := exec.CommandContext(m.t.Context(), bash, "setup")
	cmd.Env = append([]string{
		"PATH=" + m.bin,
		"WALFLOW_SETUP_PG_GLOB=" + m.pgRoot + "/*/bin",
		"WALFLOW_SETUP_CHROMIUM=" + m.chromium,
	}, m.extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		m.t.Fatalf("run scripts/setup: %v\n%s", err, out)
	}
	return 0, string(out)
}

// aptCalls returns the fake apt-get's calls.
func (m *fakeMachine) aptCalls() string {
	b, err := os.ReadFile(m.aptLog)
	if err != nil && !os.IsNotExist(err) {
		m.t.Fatal(err)
	}
	return string(b)
}

// installCommand is the command the script prints when it may not install itself.
func installCommand(pkgs string) string {
	if os.Geteuid() != 0 {
		return "sudo apt-get update && sudo apt-get install -y --no-install-recommends " + pkgs
	}
	return "apt-get update && apt-get install -y --no-install-recommends " + pkgs
}

// TestSetupWithoutAptGet: with nothing installed and no apt-get, the script stops at once
// with the exact command that installs both.
func TestSetupWithoutAptGet(t *testing.T) {
	m := newFakeMachine(t)
	code, out := m.setup()
	if code != 1 || !strings.Contains(out, "\n  "+installCommand("postgresql-15 chromium")+"\n") ||
		!strings.Contains(out, "apt-get is not available here") || strings.Contains(out, "installing") {
		t.Fatalf("setup without apt-get: exit %d, want 1 and the install command\n%s", code, out)
	}
}

// TestSetupInstallsWhatIsMissing: as root with apt-get, the script installs the missing
// packages and nothing else, and a second run installs nothing. Not as root, it prints the
// sudo command and runs nothing.
func TestSetupInstallsWhatIsMissing(t *testing.T) {
	m := newFakeMachine(t)
	m.withAptGet(true)
	m.withPostgres()
	code, out := m.setup()
	if os.Geteuid() != 0 {
		if code != 1 || !strings.Contains(out, "\n  "+installCommand("chromium")+"\n") || m.aptCalls() != "" {
			t.Fatalf("setup not as root: exit %d, apt-get calls %q, want 1, none and the sudo command\n%s", code, m.aptCalls(), out)
		}
		return
	}
	want := "update\ninstall -y --no-install-recommends chromium\n"
	if code != 0 || m.aptCalls() != want || !strings.Contains(out, "setup: Chromium: "+m.chromium+"\n") {
		t.Fatalf("setup as root: exit %d, apt-get calls %q, want 0 and %q\n%s", code, m.aptCalls(), want, out)
	}
	code, out = m.setup()
	if code != 0 || m.aptCalls() != want || !strings.Contains(out, "setup: nothing to install\n") {
		t.Fatalf("setup again: exit %d, apt-get calls %q, want 0 and no new call\n%s", code, m.aptCalls(), out)
	}
}

// TestSetupInstallsBoth installs the server and Chromium in one apt-get install.
func TestSetupInstallsBoth(t *testing.T) {
	m := newFakeMachine(t)
	m.withAptGet(true)
	code, out := m.setup()
	if os.Geteuid() != 0 {
		if code != 1 || !strings.Contains(out, installCommand("postgresql-15 chromium")) || m.aptCalls() != "" {
			t.Fatalf("setup not as root: exit %d, apt-get calls %q\n%s", code, m.aptCalls(), out)
		}
		return
	}
	want := "update\ninstall -y --no-install-recommends postgresql-15 chromium\n"
	if code != 0 || m.aptCalls() != want || !strings.Contains(out, "setup: PostgreSQL server binaries: "+m.pgRoot+"/15/bin\n") {
		t.Fatalf("setup as root: exit %d, apt-get calls %q, want 0 and %q\n%s", code, m.aptCalls(), want, out)
	}
}

// TestSetupInstallFails: when apt-get succeeds but the binaries are still missing, the
// script says so and fails.
func TestSetupInstallFails(t *testing.T) {
	if os.Geteuid() != 0 {
		m := newFakeMachine(t)
		m.withAptGet(false)
		if code, out := m.setup(); code != 1 || m.aptCalls() != "" {
			t.Fatalf("setup not as root: exit %d, apt-get calls %q\n%s", code, m.aptCalls(), out)
		}
		return
	}
	m := newFakeMachine(t)
	m.withAptGet(false)
	code, out := m.setup()
	if code != 1 || !strings.Contains(out, "setup: still missing postgresql-15 chromium after apt-get install") {
		t.Fatalf("setup with an apt-get that installs nothing: exit %d, want 1\n%s", code, out)
	}
}

// TestSetupBinDirUnusable: a WALFLOW_PG_BINDIR without the binaries is the user's choice,
// so the script fails naming it instead of installing.
func TestSetupBinDirUnusable(t *testing.T) {
	m := newFakeMachine(t)
	m.withAptGet(true)
	dir := t.TempDir()
	m.extraEnv = []string{"WALFLOW_PG_BINDIR=" + dir}
	code, out := m.setup()
	if code != 1 || !strings.Contains(out, "WALFLOW_PG_BINDIR="+dir+" does not hold initdb, pg_ctl and postgres") || m.aptCalls() != "" {
		t.Fatalf("setup with an empty WALFLOW_PG_BINDIR: exit %d, apt-get calls %q, want 1 and none\n%s", code, m.aptCalls(), out)
	}
}
