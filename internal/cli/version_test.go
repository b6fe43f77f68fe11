package cli

import (
	"encoding/json"
	"flag"
	"io"
	"runtime"
	"strings"
	"testing"
)

func TestVersionJSON(t *testing.T) {
	t.Parallel()
	r := runCLI(t.Context(), noEnv, "version", "--json")
	if r.code != ExitOK {
		t.Fatalf("walflow version --json: exit %d\n%s", r.code, r.stderr)
	}
	var doc map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("walflow version --json printed no JSON object of strings: %v\n%s", err, r.stdout)
	}
	for _, k := range []string{"version", "revision", "go", "os", "arch"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("key %s missing in %s", k, r.stdout)
		}
	}
	if doc["version"] == "" || doc["go"] != runtime.Version() || doc["os"] != runtime.GOOS || doc["arch"] != runtime.GOARCH {
		t.Errorf("walflow version --json = %s", r.stdout)
	}
	plain := runCLI(t.Context(), noEnv, "version")
	if !strings.HasPrefix(plain.stdout, "walflow "+doc["version"]+" (") || !strings.Contains(plain.stdout, doc["go"]+", "+doc["os"]+"/"+doc["arch"]) {
		t.Errorf("walflow version = %q, but --json says %s", plain.stdout, r.stdout)
	}
}

// TestHelpPlaceholdersMatchSynopsis checks that every flag's placeholder in a command's help
// is the one its synopsis writes (--config FILE), and that the synopsis shows every flag.
func TestHelpPlaceholdersMatchSynopsis(t *testing.T) {
	t.Parallel()
	var all []*command
	for _, c := range commands {
		all = append(all, c)
		all = append(all, c.subs...)
	}
	for _, c := range all {
		if c.flags == nil || c == helpCommand {
			continue
		}
		fs := flag.NewFlagSet(c.path(), flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.flags(fs)
		fs.VisitAll(func(f *flag.Flag) {
			name, _ := flag.UnquoteUsage(f)
			if _, isBool := f.Value.(interface{ IsBoolFlag() bool }); isBool {
				name = ""
			}
			want := "--" + f.Name
			if name != "" {
				want += " " + name
			}
			if !strings.Contains(c.args+" ", want+" ") && !strings.Contains(c.args, want+"]") {
				t.Errorf("walflow %s: help shows %q, but the synopsis is %q", c.path(), want, c.args)
			}
		})
	}
}
