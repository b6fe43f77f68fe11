package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/walflow/walflow/internal/suggest"
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

// command is one walflow subcommand, or a group of them (operator).
type command struct {
	name    string
	args    string // argument synopsis for usage, e.g. "[--config FILE] [--json]"
	summary string // one line for the command list
	help    string // paragraphs after the synopsis in `walflow help NAME`
	// params names the positional arguments the command takes, like NAME; they may come
	// before, between or after the flags.
	params []string
	// flags declares the command's flags on fs and returns the function that runs it with
	// the positional arguments (one per params entry). Nil for a group.
	flags func(fs *flag.FlagSet) execFunc
	// subs are a group's commands (walflow operator status); parent is set on them.
	subs   []*command
	parent *command
}

// execFunc runs a command with its positional arguments.
type execFunc func(ctx context.Context, e *env, args []string) error

// path is the command's name as typed after walflow: "run", "operator status".
func (c *command) path() string {
	if c.parent != nil {
		return c.parent.path() + " " + c.name
	}
	return c.name
}

// commands lists the subcommands in the order usage shows them.
var commands = []*command{runCommand, demoCommand, initCommand, statusCommand, operatorCommand, projectorCommand, ledgerCommand, indexCommand, versionCommand, helpCommand}

func init() {
	for _, c := range commands {
		for _, s := range c.subs {
			s.parent = c
		}
	}
}

func findCommand(list []*command, name string) *command {
	for _, c := range list {
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
	c := findCommand(commands, name)
	if c == nil {
		if strings.HasPrefix(name, "-") {
			return usagef("flag %s comes before a command; write walflow COMMAND %s (commands: %s)", name, name, commandNames(commands))
		}
		msg := fmt.Sprintf("unknown command %q", name)
		if s := suggest.Closest(name, commandNamesList(commands)); s != "" {
			msg += fmt.Sprintf("; did you mean %s?", s)
		}
		return usagef("%s; the commands are %s (walflow help lists them)", msg, commandNames(commands))
	}
	return execCommand(ctx, e, c, args[1:])
}

// execCommand runs c with the arguments after its name: a group picks its subcommand.
func execCommand(ctx context.Context, e *env, c *command, args []string) error {
	if c.subs != nil {
		if len(args) == 0 {
			writeGroupHelp(e.stderr, c)
			return usagef("%s: no command given; the %s commands are %s", c.path(), c.path(), commandNames(c.subs))
		}
		switch args[0] {
		case "-h", "-help", "--help":
			writeGroupHelp(e.stdout, c)
			return nil
		}
		sub := findCommand(c.subs, args[0])
		if sub == nil {
			msg := fmt.Sprintf("unknown command %q", args[0])
			if strings.HasPrefix(args[0], "-") {
				msg = fmt.Sprintf("flag %s comes before a command", args[0])
			} else if s := suggest.Closest(args[0], commandNamesList(c.subs)); s != "" {
				msg += fmt.Sprintf("; did you mean %s?", s)
			}
			return usagef("%s: %s; the %s commands are %s (walflow help %s lists them)", c.path(), msg, c.path(), commandNames(c.subs), c.path())
		}
		return execCommand(ctx, e, sub, args[1:])
	}
	fs := flag.NewFlagSet("walflow "+c.path(), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	exec := c.flags(fs)
	params, err := parseFlags(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeCommandHelp(e.stdout, c, fs)
			return nil
		}
		return usagef("%s: %v; see walflow help %s", c.path(), err, c.path())
	}
	if c == helpCommand {
		return helpMain(e, params)
	}
	if len(params) > len(c.params) {
		return usagef("%s: unexpected argument %q; see walflow help %s", c.path(), params[len(c.params)], c.path())
	}
	if len(params) < len(c.params) {
		return usagef("%s: missing %s; write walflow %s %s", c.path(), c.params[len(params)], c.path(), c.args)
	}
	return exec(ctx, e, params)
}

// parseFlags parses args into fs and returns the positional arguments, which may come
// before, between or after the flags (walflow operator restart NAME --config F). After
// "--" everything is positional.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var params []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return params, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(params, rest...), nil
		}
		params = append(params, rest[0])
		args = rest[1:]
	}
}

func commandNamesList(list []*command) []string {
	names := make([]string, len(list))
	for i, c := range list {
		names[i] = c.name
	}
	return names
}

func commandNames(list []*command) string { return strings.Join(commandNamesList(list), ", ") }

func writeUsage(w io.Writer) {
	fmt.Fprint(w, `walflow turns PostgreSQL's write-ahead log into an ordered, durable event stream.

Usage:
  walflow COMMAND [flags]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Start with:
  walflow demo                          a throwaway PostgreSQL, a blog and its events
  walflow init                          write a commented walflow.yaml to edit
  walflow run --config walflow.yaml     follow your database

Run walflow help COMMAND for a command's flags. Exit codes: 0 ok, 1 failure, 2 usage or
configuration error.
`)
}

// writeGroupHelp shows a group's commands, like walflow operator --help.
func writeGroupHelp(w io.Writer, c *command) {
	fmt.Fprintf(w, "Usage: walflow %s COMMAND [flags]\n\n%s\n", c.path(), c.summary)
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	fmt.Fprintf(w, "\nCommands:\n")
	for _, s := range c.subs {
		fmt.Fprintf(w, "  %-9s %s\n", s.name, s.summary)
	}
	fmt.Fprintf(w, "\nRun walflow help %s COMMAND for a command's flags.\n", c.path())
}

func writeCommandHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: walflow %s %s\n\n%s\n", c.path(), c.args, c.summary)
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
	flags: func(fs *flag.FlagSet) execFunc {
		return nil // helpMain runs it: it takes any number of arguments
	},
}

func helpMain(e *env, args []string) error {
	if len(args) == 0 {
		writeUsage(e.stdout)
		return nil
	}
	list, c := commands, (*command)(nil)
	for i, name := range args {
		if c != nil && c.subs == nil {
			return usagef("help: %s has no command %q; write walflow help %s", c.path(), name, c.path())
		}
		if c = findCommand(list, name); c == nil {
			where := "the commands are " + commandNames(list)
			if i > 0 {
				where = fmt.Sprintf("the %s commands are %s", strings.Join(args[:i], " "), commandNames(list))
			}
			return usagef("help: unknown command %q; %s", strings.Join(args[:i+1], " "), where)
		}
		list = c.subs
	}
	if c.subs != nil {
		writeGroupHelp(e.stdout, c)
		return nil
	}
	fs := flag.NewFlagSet("walflow "+c.path(), flag.ContinueOnError)
	c.flags(fs)
	writeCommandHelp(e.stdout, c, fs)
	return nil
}

// unknownName is the usage error of a command given a name that is none of names: it
// says which kind of thing (kinds: its plural), suggests the closest name, and lists them
// all, found where.
func unknownName(cmd, kind, kinds, name, where string, names []string) error {
	msg := fmt.Sprintf("%s: unknown %s %q", cmd, kind, name)
	if s := suggest.Closest(name, names); s != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", s)
	}
	return usagef("%s; the %s %s are %s", msg, kinds, where, strings.Join(names, ", "))
}
