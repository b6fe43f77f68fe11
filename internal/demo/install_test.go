package demo

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/syncbuf"
)

// fakeApt records the commands a pgInstaller runs.
type fakeApt struct {
	calls [][]string
	fail  string // the first argument of the call that fails
}

func (f *fakeApt) installer(euid int, haveAptGet bool) pgInstaller {
	return pgInstaller{
		euid: euid,
		lookPath: func(name string) (string, error) {
			if name == "apt-get" && haveAptGet {
				return "/usr/bin/apt-get", nil
			}
			return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
		},
		run: func(_ context.Context, name string, args ...string) error {
			f.calls = append(f.calls, append([]string{name}, args...))
			if len(args) > 0 && args[0] == f.fail {
				return errors.New("exit status 100")
			}
			return nil
		},
	}
}

func TestDemoInstallPostgres(t *testing.T) {
	t.Parallel()
	update := []string{"/usr/bin/apt-get", "update"}
	install := []string{"/usr/bin/apt-get", "install", "-y", "--no-install-recommends", "postgresql-15"}
	tests := []struct {
		name       string
		euid       int
		haveAptGet bool
		fail       string
		wantCalls  [][]string
		wantErr    string // "" for none
	}{
		{"root with apt-get", 0, true, "", [][]string{update, install}, ""},
		{"not root", 1000, true, "", nil, "only root may install them; run `sudo apt-get update && sudo apt-get install -y --no-install-recommends postgresql-15`"},
		{"no apt-get", 0, false, "", nil, "apt-get, which would install them, is not available"},
		{"update fails", 0, true, "update", [][]string{update}, "apt-get update: exit status 100; run `apt-get update && apt-get install -y --no-install-recommends postgresql-15` yourself"},
		{"install fails", 0, true, "install", [][]string{update, install}, "apt-get install -y --no-install-recommends postgresql-15: exit status 100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeApt{fail: tt.fail}
			var out strings.Builder
			err := f.installer(tt.euid, tt.haveAptGet).install(t.Context(), &out)
			if !slices.EqualFunc(f.calls, tt.wantCalls, slices.Equal) {
				t.Errorf("ran %q, want %q", f.calls, tt.wantCalls)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("install: %v, want an error containing %q", err, tt.wantErr)
			}
			if said := strings.Contains(out.String(), "installing them: apt-get update && apt-get install"); said != (len(tt.wantCalls) > 0) {
				t.Errorf("said %q before running %q", out.String(), f.calls)
			}
		})
	}
}

// TestDemoStartInstallsPostgres: the demo installs the server binaries when they are
// missing, then starts again; other errors install nothing.
func TestDemoStartInstallsPostgres(t *testing.T) {
	t.Parallel()
	missing := fmt.Errorf("pgtest: %w (looked ...)", pgtest.ErrBinariesNotFound)
	for _, tt := range []struct {
		name       string
		first      error
		binDir     string // WALFLOW_PG_BINDIR
		wantStarts int
		wantCalls  int
	}{
		{"missing", missing, "", 2, 2},
		{"missing from WALFLOW_PG_BINDIR", missing, "/opt/pg/bin", 1, 0},
		{"other error", errors.New("initdb failed"), "", 1, 0},
		{"started", nil, "", 1, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeApt{}
			starts := 0
			start := func(context.Context, *pgtest.Options) (*pgtest.Cluster, error) {
				starts++
				if starts == 1 {
					return nil, tt.first
				}
				return nil, nil
			}
			var out syncbuf.Buffer
			_, err := startCluster(t.Context(), &out, f.installer(0, true), start, func(name string) string {
				if name == pgtest.BinDirEnv {
					return tt.binDir
				}
				return ""
			})
			if starts != tt.wantStarts || len(f.calls) != tt.wantCalls {
				t.Errorf("started %d times and ran %q, want %d starts and %d commands", starts, f.calls, tt.wantStarts, tt.wantCalls)
			}
			if tt.first != nil && tt.wantStarts == 1 && !errors.Is(err, tt.first) {
				t.Errorf("startCluster: %v, want %v", err, tt.first)
			}
		})
	}
}
