package cli

import (
	"flag"
	"github.com/walflow/walflow/internal/docpages"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docPage is one Markdown page of the documentation.
type docPage = docpages.Page

// docPages returns README.md and every docs/*.md page of the repository.
func docPages(t *testing.T) []docPage {
	t.Helper()
	pages, err := docpages.Read(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return pages
}

// leafCommands returns every command that runs (not a group), help included.
func leafCommands() []*command {
	var out []*command
	for _, c := range commands {
		if c.flags != nil {
			out = append(out, c)
		}
		for _, s := range c.subs {
			if s.flags != nil {
				out = append(out, s)
			}
		}
	}
	return out
}

// TestDocsSynopsis checks that the synopsis block of docs/command-line.md lists every command
// of the binary, each once on a line of its own (its description on the next lines,
// indented), with exactly the synopsis its help prints, and nothing else. With
// TestHelpPlaceholdersMatchSynopsis (every flag is in the synopsis) and the check here that
// every flag of a synopsis is the command's, the page lists exactly the binary's flags.
func TestDocsSynopsis(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "command-line.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)\n```\n(walflow .*?)```\n").FindSubmatch(b)
	if m == nil {
		t.Fatal("docs/command-line.md has no synopsis block (a ``` block of walflow lines)")
	}
	leaves := leafCommands()
	listed := map[*command]int{}
	for line := range strings.SplitSeq(string(m[1]), "\n") {
		if !strings.HasPrefix(line, "walflow ") {
			continue // the description of the command above, indented
		}
		var found *command
		for _, c := range leaves {
			if line == "walflow "+c.path()+" "+c.args {
				found = c
			}
		}
		if found == nil {
			t.Errorf("docs/command-line.md lists %q, which is no command of walflow with its synopsis (see walflow help)", line)
			continue
		}
		listed[found]++
	}
	for _, c := range leaves {
		if err := checkCommandLine("walflow " + c.path() + " " + c.args); err != "" {
			t.Errorf("the synopsis of walflow %s shows a flag it lacks: %s", c.path(), err)
		}
		switch listed[c] {
		case 0:
			t.Errorf("docs/command-line.md does not list walflow %s %s", c.path(), c.args)
		case 1:
		default:
			t.Errorf("docs/command-line.md lists walflow %s %d times", c.path(), listed[c])
		}
	}
}

// TestDocsCommands checks every walflow command the pages show, in inline code or as a line
// of an sh block: its command exists, and every --flag it uses is one of that command's.
func TestDocsCommands(t *testing.T) {
	t.Parallel()
	spanRE := regexp.MustCompile("`(walflow [^`]+)`")
	shRE := regexp.MustCompile("(?s)```sh\n(.*?)```")
	checked := 0
	for _, p := range docPages(t) {
		var uses []string
		for _, m := range spanRE.FindAllStringSubmatch(p.Text, -1) {
			uses = append(uses, m[1])
		}
		for _, m := range shRE.FindAllStringSubmatch(p.Text, -1) {
			for line := range strings.SplitSeq(m[1], "\n") {
				line, _, _ = strings.Cut(line, "#")
				if strings.HasPrefix(line, "walflow ") {
					uses = append(uses, line)
				}
			}
		}
		for _, use := range uses {
			checked++
			if err := checkCommandLine(use); err != "" {
				t.Errorf("%s shows `%s`: %s", p.Path, use, err)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("the pages show only %d walflow commands: the extraction is broken", checked)
	}
}

// checkCommandLine returns what is wrong with a command line the documentation shows, or "".
// Placeholders (NAME, FILE, ...) and the brackets and bars of synopses are allowed.
func checkCommandLine(line string) string {
	words := strings.Fields(strings.NewReplacer("[", " ", "]", " ", "|", " ").Replace(line))[1:]
	if len(words) == 0 {
		return ""
	}
	c, rest, err := resolveCommand(words)
	if err != "" {
		return err
	}
	if c == helpCommand {
		if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") && rest[0] != "COMMAND" {
			if _, _, err := resolveCommand(rest); err != "" {
				return "help " + err
			}
		}
		return ""
	}
	var flags map[string]bool
	if c.flags != nil {
		fs := flag.NewFlagSet(c.path(), flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.flags(fs)
		flags = map[string]bool{}
		fs.VisitAll(func(f *flag.Flag) { flags[f.Name] = true })
	}
	for _, w := range rest {
		name, ok := strings.CutPrefix(w, "--")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if name == "" || name == "." {
			continue
		}
		if c.flags == nil {
			return "walflow " + c.path() + " is a group of commands and takes no --" + name
		}
		if !flags[name] {
			return "walflow " + c.path() + " has no flag --" + name + " (see walflow help " + c.path() + ")"
		}
	}
	return ""
}

// resolveCommand finds the command words name (operator status) and returns it with the
// words after it.
func resolveCommand(words []string) (*command, []string, string) {
	c := findCommand(commands, words[0])
	if c == nil {
		return nil, nil, "walflow has no command " + words[0]
	}
	rest := words[1:]
	if len(c.subs) > 0 && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		s := findCommand(c.subs, rest[0])
		if s == nil {
			if rest[0] == "COMMAND" {
				return c, rest[1:], ""
			}
			return nil, nil, "walflow " + c.name + " has no command " + rest[0]
		}
		c, rest = s, rest[1:]
	}
	return c, rest, ""
}
