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
	args:    "",
	summary: "Print walflow's version.",
	flags: func(fs *flag.FlagSet) execFunc {
		return func(_ context.Context, e *env, _ []string) error {
			fmt.Fprintln(e.stdout, versionString())
			return nil
		}
	},
}

// versionString is "walflow VERSION (REVISION, GOVERSION, OS/ARCH)".
func versionString() string {
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
	details := runtime.Version() + ", " + runtime.GOOS + "/" + runtime.GOARCH
	if rev != "" {
		details = rev + ", " + details
	}
	return "walflow " + v + " (" + details + ")"
}
