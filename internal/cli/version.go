package cli

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is walflow's version. Release builds set it with
// -ldflags "-X github.com/walflow/walflow/internal/cli.Version=v0.1.0"; otherwise it comes
// from the module's build information (a tagged go install) or is "devel".
var Version = ""

var versionCommand = &command{
	name:    "version",
	args:    "[--json]",
	summary: "Print walflow's version.",
	help: `
The --json document has the keys version ("devel" for a build without one), revision (the
commit, "" when unknown, ending in +dirty for modified sources), go, os and arch.`,
	flags: func(fs *flag.FlagSet) execFunc {
		asJSON := fs.Bool("json", false, "print the version as JSON")
		return func(_ context.Context, e *env, _ []string) error {
			b := buildVersion()
			if *asJSON {
				return printJSON(e.stdout, b)
			}
			fmt.Fprintln(e.stdout, b.String())
			return nil
		}
	},
}

// versionDoc is walflow version --json.
type versionDoc struct {
	Version  string `json:"version"`
	Revision string `json:"revision"`
	Go       string `json:"go"`
	OS       string `json:"os"`
	Arch     string `json:"arch"`
}

// String is "walflow VERSION (REVISION, GOVERSION, OS/ARCH)".
func (b versionDoc) String() string {
	details := b.Go + ", " + b.OS + "/" + b.Arch
	if b.Revision != "" {
		details = b.Revision + ", " + details
	}
	return "walflow " + b.Version + " (" + details + ")"
}

// buildVersion reads the version from Version and the build information.
func buildVersion() versionDoc {
	v, rev := Version, ""
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
				if len(rev) > 12 {
					rev = rev[:12]
				}
			case "vcs.modified":
				if s.Value == "true" && rev != "" {
					rev += "+dirty"
				}
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	return versionDoc{Version: v, Revision: rev, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
}
