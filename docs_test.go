package walflow_test

import (
	"encoding/json"
	"fmt"
	"github.com/walflow/walflow/internal/docpages"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
)

// The tests of this file check the examples of README.md and docs/*.md against the code, so
// that a page cannot show code that no longer compiles, an event that walflow no longer
// writes, SQL that no longer runs, a browser call walflow.js lacks, a link to nowhere, or a
// benchmark, fuzz target or make target that does not exist. The YAML blocks are loaded by
// TestExampleConfigs and the walflow commands checked by TestDocsCommands, both in
// internal/cli.

// docFile is one Markdown page of the documentation.
type docFile = docpages.Page

// docFiles returns README.md and every docs/*.md page.
func docFiles(t *testing.T) []docFile {
	t.Helper()
	pages, err := docpages.Read(".")
	if err != nil {
		t.Fatal(err)
	}
	return pages
}

// codeBlock is a fenced code block of a page.
type codeBlock struct {
	file string
	line int    // the line of the opening fence, from 1
	lang string // the fence's info string: go, yaml, sh, or "" for none
	text string // the lines inside the fences, without the fence's indentation
}

func (b codeBlock) String() string { return fmt.Sprintf("%s:%d: %s block", b.file, b.line, b.lang) }

var fenceRE = regexp.MustCompile("^( *)```([a-z]*) *$")

// codeBlocks returns the fenced code blocks of f in order. A block may be indented (in a list
// item); its lines lose the fence's indentation.
func codeBlocks(f docFile) []codeBlock {
	var (
		out    []codeBlock
		cur    *codeBlock
		indent int
		body   strings.Builder
	)
	for i, line := range strings.Split(f.Text, "\n") {
		m := fenceRE.FindStringSubmatch(line)
		switch {
		case cur == nil && m != nil:
			cur = &codeBlock{file: f.Path, line: i + 1, lang: m[2]}
			indent = len(m[1])
			body.Reset()
		case cur != nil && m != nil && m[2] == "":
			cur.text = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			n := 0
			for n < indent && n < len(line) && line[n] == ' ' {
				n++
			}
			body.WriteString(line[n:])
			body.WriteByte('\n')
		}
	}
	return out
}

// blocksOf returns the blocks of every page whose language is lang.
func blocksOf(t *testing.T, lang string) []codeBlock {
	t.Helper()
	var out []codeBlock
	for _, f := range docFiles(t) {
		for _, b := range codeBlocks(f) {
			if b.lang == lang {
				out = append(out, b)
			}
		}
	}
	return out
}

// TestDocsCodeBlocksClosed checks that every page closes its fences: an unclosed one would
// hide the blocks after it from the other tests.
func TestDocsCodeBlocksClosed(t *testing.T) {
	t.Parallel()
	for _, f := range docFiles(t) {
		fences := 0
		for _, line := range strings.Split(f.Text, "\n") {
			if fenceRE.MatchString(line) {
				fences++
			}
		}
		if got := len(codeBlocks(f)); fences != 2*got {
			t.Errorf("%s: %d fence lines but %d closed blocks: a block is not closed with ```", f.Path, fences, got)
		}
	}
}

// unindented returns s with every line's leading white space removed, between newlines, so
// that a block matches the same code indented inside a function.
func unindented(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimLeft(l, " \t")
	}
	return "\n" + strings.Join(lines, "\n") + "\n"
}

// TestDocsGoExamples checks that every go block of the pages is code of this package's
// tests (readme_test.go holds the examples), which go test compiles: a Go example that no
// longer compiles fails the build of this package, and one edited on its page alone fails
// here. Indentation is ignored, so a block may be the body of a function.
func TestDocsGoExamples(t *testing.T) {
	t.Parallel()
	_, _, _, _ = followComments, processStatusExample, indexReadExample, balances // compiled, never run
	tests, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	for _, p := range tests {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		src.Write(b)
		src.WriteByte('\n')
	}
	code := unindented(src.String())
	blocks := blocksOf(t, "go")
	if len(blocks) == 0 {
		t.Fatal("README.md and docs/*.md have no go block: the extraction is broken")
	}
	for _, b := range blocks {
		if !strings.Contains(code, unindented(b.text)) {
			t.Errorf("%s is not code of package walflow_test, so nothing compiles it: make it "+
				"match its copy in readme_test.go (or add it there, in a function)\n%s", b, b.text)
		}
	}
}

// docEvent is the event docs/events-and-channels.md shows as JSON.
func docEvent(t *testing.T) *event.Event {
	t.Helper()
	lsn, err := event.ParseLSN("16/B374D848")
	if err != nil {
		t.Fatal(err)
	}
	const (
		integer = pgtype.Int4OID
		text    = pgtype.TextOID
		ts      = pgtype.TimestamptzOID
	)
	row := func(postID, updatedAt string) event.Record {
		return event.Record{
			{Name: "id", Value: event.Text(integer, "7")},
			{Name: "post_id", Value: event.Text(integer, postID)},
			{Name: "body", Value: event.Text(text, "Nice write-up.")},
			{Name: "updated_at", Value: event.Text(ts, updatedAt)},
		}
	}
	oldRow, newRow := row("1", "2025-11-24 16:05:00.12345+00"), row("2", "2025-11-24 16:06:30.5+00")
	return &event.Event{
		Position: 12, LSN: lsn, XID: 771, Name: "comments", Type: event.Update,
		Source: event.Source{DB: "app", Schema: "public", Table: "comments", Columns: []event.Column{
			{Name: "id", Type: "integer", OID: integer, Key: true},
			{Name: "post_id", Type: "integer", OID: integer},
			{Name: "body", Type: "text", OID: text},
			{Name: "updated_at", Type: "timestamp with time zone", OID: ts},
		}},
		NewRecord: newRow,
		OldRecord: oldRow,
		Changes: event.Changes{
			{Column: "post_id", OldValue: oldRow[1].Value, NewValue: newRow[1].Value},
			{Column: "updated_at", OldValue: oldRow[3].Value, NewValue: newRow[3].Value},
		},
		Timestamp: time.Date(2025, 11, 24, 16, 6, 30, 512e6, time.UTC),
	}
}

// TestDocsEventJSON checks that every json block of the pages is JSON, and that the event
// they show (a block with "position" and "source") is what walflow writes for that event:
// the same keys, nesting and value forms.
func TestDocsEventJSON(t *testing.T) {
	t.Parallel()
	written, err := json.Marshal(docEvent(t))
	if err != nil {
		t.Fatal(err)
	}
	var want any
	if err := json.Unmarshal(written, &want); err != nil {
		t.Fatal(err)
	}
	events := 0
	for _, b := range blocksOf(t, "json") {
		var shown any
		if err := json.Unmarshal([]byte(b.text), &shown); err != nil {
			t.Errorf("%s is not JSON: %v", b, err)
			continue
		}
		if m, ok := shown.(map[string]any); !ok || m["position"] == nil || m["source"] == nil {
			continue
		}
		events++
		if !reflect.DeepEqual(shown, want) {
			pretty, _ := json.MarshalIndent(want, "", "  ")
			t.Errorf("%s differs from what walflow writes for the event of docEvent (show that, or add yours "+
				"to this test):\n%s", b, pretty)
		}
	}
	if events == 0 {
		t.Fatal("the pages show no event as JSON: the extraction is broken, or docs/events-and-channels.md lost its example")
	}
}

// TestDocsSQL runs each page's sql blocks, in order, in a fresh database.
func TestDocsSQL(t *testing.T) {
	t.Parallel()
	byFile := map[string][]codeBlock{}
	var files []string
	for _, b := range blocksOf(t, "sql") {
		if _, ok := byFile[b.file]; !ok {
			files = append(files, b.file)
		}
		byFile[b.file] = append(byFile[b.file], b)
	}
	if len(files) == 0 {
		t.Fatal("the pages have no sql block: the extraction is broken")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			t.Parallel()
			_, conn := pgtest.NewDatabaseWith(t, "")
			for _, b := range byFile[f] {
				if _, err := conn.Exec(t.Context(), b.text); err != nil {
					t.Errorf("%s fails in PostgreSQL: %v", b, err)
				}
			}
		})
	}
}

// TestDocsJS checks the pages' JavaScript against the browser client: every name imported
// from walflow.js is exported, and every member of a client or subscription the pages use is
// a method or field of walflow.js. The browser tests of internal/cli run the client itself.
func TestDocsJS(t *testing.T) {
	t.Parallel()
	js, err := os.ReadFile(filepath.Join("realtime", "walflow.js"))
	if err != nil {
		t.Fatal(err)
	}
	src := string(js)
	blocks := blocksOf(t, "js")
	if len(blocks) == 0 {
		t.Fatal("the pages have no js block: the extraction is broken")
	}
	importRE := regexp.MustCompile(`import \{([^}]*)\} from "/realtime/walflow\.js"`)
	memberRE := regexp.MustCompile(`\b(?:client|sub|subscription)\.([A-Za-z_]\w*)`)
	for _, b := range blocks {
		for _, m := range importRE.FindAllStringSubmatch(b.text, -1) {
			for name := range strings.SplitSeq(m[1], ",") {
				name = strings.TrimSpace(name)
				if !regexp.MustCompile(`(?m)^export (?:async )?(?:function|class|const|let) ` + regexp.QuoteMeta(name) + `\b`).MatchString(src) {
					t.Errorf("%s imports %s, which walflow.js does not export", b, name)
				}
			}
		}
		for _, m := range memberRE.FindAllStringSubmatch(b.text, -1) {
			name := regexp.QuoteMeta(m[1])
			method := regexp.MustCompile(`(?m)^\s+(?:async\s+)?(?:get\s+)?` + name + `\(`)
			field := regexp.MustCompile(`\bthis\.` + name + `\s*=[^=]`)
			if !method.MatchString(src) && !field.MatchString(src) {
				t.Errorf("%s uses %s, which is no method or field of walflow.js", b, m[0])
			}
		}
	}
}

// TestDocsLinks checks every relative link of the pages: the file exists and, for a link to
// a heading (#anchor), the page has that heading.
func TestDocsLinks(t *testing.T) {
	t.Parallel()
	files := docFiles(t)
	anchors := map[string]map[string]bool{}
	for _, f := range files {
		anchors[f.Path] = headingAnchors(f)
	}
	linkRE := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, f := range files {
		for _, m := range linkRE.FindAllStringSubmatch(outsideCode(f), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, frag, _ := strings.Cut(target, "#")
			if path == "" {
				path = f.Path
			} else {
				path = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(f.Path), path)))
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s links to %s: %v", f.Path, target, err)
				continue
			}
			if frag == "" {
				continue
			}
			a, ok := anchors[path]
			if !ok {
				t.Errorf("%s links to %s: an anchor in a file that is no page of the documentation", f.Path, target)
			} else if !a[frag] {
				t.Errorf("%s links to %s: %s has no heading with anchor #%s", f.Path, target, path, frag)
			}
		}
	}
}

// outsideCode returns f's text with its fenced code blocks blanked out.
func outsideCode(f docFile) string {
	var out strings.Builder
	in := false
	for line := range strings.SplitSeq(f.Text, "\n") {
		m := fenceRE.FindStringSubmatch(line)
		switch {
		case !in && m != nil:
			in = true
		case in && m != nil && m[2] == "":
			in = false
		case !in:
			out.WriteString(line)
		}
		out.WriteByte('\n')
	}
	return out.String()
}

// headingAnchors returns the anchors GitHub gives the headings of f: lower case, spaces as
// hyphens, punctuation other than hyphens and underscores dropped, and -1, -2... appended to
// repeats.
func headingAnchors(f docFile) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for line := range strings.SplitSeq(outsideCode(f), "\n") {
		title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if !ok || !strings.HasPrefix(line, "#") {
			continue
		}
		var slug strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(title)) {
			switch {
			case r == ' ':
				slug.WriteByte('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
				slug.WriteRune(r)
			}
		}
		s := slug.String()
		if n := seen[s]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", s, n)] = true
		} else {
			anchors[s] = true
		}
		seen[s]++
	}
	return anchors
}

// TestDocsGoCommands checks the go test and make commands of the pages' sh blocks: each
// benchmark and fuzz target they name is a function of the package they name, and each make
// target is in the Makefile.
func TestDocsGoCommands(t *testing.T) {
	t.Parallel()
	makefile, err := os.ReadFile("Makefile")
	if err != nil {
		t.Fatal(err)
	}
	targetRE := regexp.MustCompile(`(?:^|\s)-(bench|fuzz) '?\^?([A-Z]\w*)`)
	pkgRE := regexp.MustCompile(`\s(\./[\w/]+)`)
	makeRE := regexp.MustCompile(`^make ([a-z][\w-]*)`)
	checked := 0
	for _, b := range blocksOf(t, "sh") {
		for line := range strings.SplitSeq(b.text, "\n") {
			line, _, _ = strings.Cut(line, "#")
			if m := makeRE.FindStringSubmatch(line); m != nil {
				checked++
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m[1]) + `:`).Match(makefile) {
					t.Errorf("%s runs make %s, which the Makefile has no target for", b, m[1])
				}
			}
			if !strings.HasPrefix(line, "go test ") {
				continue
			}
			pkg := pkgRE.FindStringSubmatch(line)
			for _, m := range targetRE.FindAllStringSubmatch(line, -1) {
				checked++
				if pkg == nil {
					t.Errorf("%s: %q names no package (./dir)", b, line)
					continue
				}
				if !declares(t, pkg[1], m[2]) {
					t.Errorf("%s runs -%s %s, but %s has no function named like it", b, m[1], m[2], pkg[1])
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("the pages' sh blocks name no benchmark, fuzz target or make target: the extraction is broken")
	}
}

// declares reports whether a test file of dir declares a function whose name starts with
// prefix (a -bench or -fuzz pattern matches every such function).
func declares(t *testing.T, dir, prefix string) bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^func ` + regexp.QuoteMeta(prefix))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if re.Match(b) {
			return true
		}
	}
	return false
}

// TestDocsMetrics checks that the metrics table of docs/operations.md lists exactly the
// metrics walflow's code registers, with their labels: the NewDesc and histogram names of
// every package, and the engine's counters and gauges (status.go, namespace walflow).
func TestDocsMetrics(t *testing.T) {
	t.Parallel()
	page, err := os.ReadFile(filepath.Join("docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{} // name → labels, comma-separated
	for _, m := range regexp.MustCompile("(?m)^\\| `(walflow_\\w+)(?:\\{([\\w,]*)\\})?` \\|").FindAllSubmatch(page, -1) {
		documented[string(m[1])] = string(m[2])
	}
	if len(documented) == 0 {
		t.Fatal("docs/operations.md has no metrics table rows (| `walflow_...` |)")
	}
	descRE := regexp.MustCompile(`NewDesc\(\s*"(walflow_\w+)",\s*"(?:[^"\\]|\\.)*",\s*(?:nil|\[\]string\{([^}]*)\})`)
	nameRE := regexp.MustCompile(`Name:\s*"(walflow_\w+)"`)
	engineRE := regexp.MustCompile(`(?:counter|gauge)\("(\w+)",`)
	registered := map[string]string{}
	err = filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != "." || p == filepath.Join("internal", "testcmd") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range descRE.FindAllSubmatch(b, -1) {
			labels := strings.NewReplacer(`"`, "", " ", "").Replace(string(m[2]))
			registered[string(m[1])] = labels
		}
		for _, m := range nameRE.FindAllSubmatch(b, -1) {
			registered[string(m[1])] = ""
		}
		if p == "status.go" {
			for _, m := range engineRE.FindAllSubmatch(b, -1) {
				registered["walflow_"+string(m[1])] = ""
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, labels := range registered {
		doc, ok := documented[name]
		switch {
		case !ok:
			t.Errorf("walflow registers %s{%s}, which docs/operations.md does not list", name, labels)
		case doc != labels:
			t.Errorf("docs/operations.md lists %s{%s}, but its labels are {%s}", name, doc, labels)
		}
	}
	for name := range documented {
		if _, ok := registered[name]; !ok {
			t.Errorf("docs/operations.md lists %s, which walflow does not register", name)
		}
	}
}
