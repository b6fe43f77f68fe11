package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// Exit codes of [Main].
const (
	ExitOK      = 0 // the command succeeded
	ExitFailure = 1 // the command failed at run time (database, ledger, network)
	ExitUsage   = 2 // the command line or the configuration file is wrong
)

// Main runs the walflow command line args (without the program name) and returns the
// process exit code. It prints output to stdout, and an error once, as "walflow: ...", to
// stderr. Long-running commands stop when ctx ends.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, &env{stdout: stdout, stderr: stderr, getenv: os.Getenv}, args)
}

// env is what a command may touch besides its arguments: tests give their own.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

// command is one walflow subcommand.
type command struct {
	name    string
	args    string // argument synopsis for usage, e.g. "[--config FILE] [--json]"
	summary string // one line for the command list
	help    string // paragraphs after the synopsis in `walflow help NAME`
	// flags declares the command's flags on fs and returns the function that runs it.
	flags func(fs *flag.FlagSet) func(ctx context.Context, e *env) error
}

// commands lists the subcommands in the order usage shows them.
var commands = []*command{runCommand, demoCommand, statusCommand, versionCommand, helpCommand}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// usageError is a mistake on the command line or in the configuration: exit code 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

func run(ctx context.Context, e *env, args []string) int {
	err := dispatch(ctx, e, args)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(e.stderr, "walflow: %v\n", err)
	if ue := (*usageError)(nil); errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitFailure
}

func dispatch(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		writeUsage(e.stderr)
		return usagef("no command given; try walflow demo")
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		writeUsage(e.stdout)
		return nil
	case "-v", "-version", "--version":
		name = "version"
	}
	c := findCommand(name)
	if c == nil {
		if strings.HasPrefix(name, "-") {
			return usagef("flag %s comes before a command; write walflow COMMAND %s (commands: %s)", name, name, commandNames())
		}
		msg := fmt.Sprintf("unknown command %q", name)
		if s := suggest(name, commandNamesList()); s != "" {
			msg += fmt.Sprintf("; did you mean %s?", s)
		}
		return usagef("%s; the commands are %s (walflow help lists them)", msg, commandNames())
	}
	fs := flag.NewFlagSet("walflow "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	exec := c.flags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeCommandHelp(e.stdout, c, fs)
			return nil
		}
		return usagef("%s: %v; see walflow help %s", c.name, err, c.name)
	}
	if c.name != "help" && fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q; see walflow help %s", c.name, fs.Arg(0), c.name)
	}
	if c.name == "help" {
		return helpMain(e, fs.Args())
	}
	return exec(ctx, e)
}

func commandNamesList() []string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return names
}

func commandNames() string { return strings.Join(commandNamesList(), ", ") }

func writeUsage(w io.Writer) {
	fmt.Fprint(w, `walflow turns PostgreSQL's write-ahead log into an ordered, durable event stream.

Usage:
  walflow COMMAND [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Start with:
  walflow demo                          a throwaway PostgreSQL, a blog and its events
  walflow run --config walflow.yaml     follow your database

Run walflow help COMMAND for a command's flags. Exit codes: 0 ok, 1 failure, 2 usage or
configuration error.
`)
}

func writeCommandHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: walflow %s %s\n\n%s\n", c.name, c.args, c.summary)
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	var flags strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&flags, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(&flags, " %s", name)
		}
		fmt.Fprintf(&flags, "\n        %s", usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0s" {
			fmt.Fprintf(&flags, " (default %s)", f.DefValue)
		}
		flags.WriteByte('\n')
	})
	if flags.Len() > 0 {
		fmt.Fprintf(w, "\nFlags:\n%s", flags.String())
	}
}

var helpCommand = &command{
	name:    "help",
	args:    "[COMMAND]",
	summary: "Show the commands, or one command's flags.",
	flags: func(fs *flag.FlagSet) func(context.Context, *env) error {
		return nil // helpMain runs it: it takes arguments
	},
}

func helpMain(e *env, args []string) error {
	switch len(args) {
	case 0:
		writeUsage(e.stdout)
		return nil
	case 1:
		c := findCommand(args[0])
		if c == nil {
			return usagef("help: unknown command %q; the commands are %s", args[0], commandNames())
		}
		fs := flag.NewFlagSet("walflow "+c.name, flag.ContinueOnError)
		c.flags(fs)
		writeCommandHelp(e.stdout, c, fs)
		return nil
	default:
		return usagef("help: give one command at most, like walflow help run")
	}
}

// suggest returns the candidate closest to s when it is a plausible typo, or "".
func suggest(s string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, counting bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
