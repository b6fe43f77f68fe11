package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/ledger/disk"
)

func TestIndexCommandLine(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "walflow.yaml")
	tests := []cliCase{
		{args: []string{"help"}, code: ExitOK, stdout: "\n  ledger    Read the ledger's events"},
		{args: []string{"help"}, code: ExitOK, stdout: "\n  index     Rebuild the configured indexes"},
		{args: []string{"ledger"}, code: ExitUsage, stderr: "walflow: ledger: no command given; the ledger commands are read, migrate"},
		{args: []string{"index"}, code: ExitUsage, stderr: "walflow: index: no command given; the index commands are rebuild, status"},
		{args: []string{"help", "ledger", "read"}, code: ExitOK, stdout: "Usage: walflow ledger read [--index NAME --value V | --channel C] [--after P] [--limit N] [--json] [--config FILE]"},
		{args: []string{"help", "index", "rebuild"}, code: ExitOK, stdout: "Usage: walflow index rebuild NAME [--config FILE]"},
		{args: []string{"index", "rebuild"}, code: ExitUsage, stderr: "walflow: index rebuild: missing NAME"},
		{args: []string{"ledger", "read", "--index", "by_post"}, code: ExitUsage, stderr: "walflow: ledger read: --index by_post needs --value V"},
		{args: []string{"ledger", "read", "--value", "1"}, code: ExitUsage, stderr: "walflow: ledger read: --value needs --index NAME"},
		{args: []string{"ledger", "read", "--index", "", "--value", ""}, code: ExitUsage, stderr: "walflow: ledger read: --index is empty"},
		{args: []string{"ledger", "read", "--index", "a", "--value", "1", "--channel", "posts"}, code: ExitUsage, stderr: "give --index or --channel, not both"},
		{args: []string{"ledger", "read", "--after", "last"}, code: ExitUsage, stderr: `walflow: ledger read: --after "last" is not a ledger position; give a decimal position like 1042`},
		{args: []string{"ledger", "read", "--after", "-3"}, code: ExitUsage, stderr: `--after "-3" is not a ledger position`},
		{args: []string{"ledger", "read", "--limit", "-1"}, code: ExitUsage, stderr: "--limit -1 is negative"},
		{args: []string{"ledger", "read", "--config", missing}, code: ExitUsage, stderr: "walflow: " + missing + ": no such file"},
		{args: []string{"index", "status", "--config", missing}, code: ExitUsage, stderr: "no such file"},
	}
	runCLICases(t, tests)
}

// TestIndexCommandsWithoutFiles: before walflow run, or with a memory ledger, there is
// nothing to read; without indexes, an index name is unknown.
func TestIndexCommandsWithoutFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, config string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// No HTTP address: a walflow another test (or a developer) runs on the default one is not
	// this configuration's.
	disk := write("disk.yaml", "database_url: postgres://app@127.0.0.1:1/app\nhttp: {addr: \"\"}\nindexes:\n  by_post: {field: post_id}\n")
	memory := write("memory.yaml", "database_url: postgres://app@127.0.0.1:1/app\ntemporary_slot: true\nledger: {backend: memory}\nindexes:\n  by_post: {field: post_id}\n")
	none := write("none.yaml", "database_url: postgres://app@127.0.0.1:1/app\n")
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"ledger", "read", "--config", disk}, ExitFailure, "walflow: ledger read: the ledger " + filepath.Join(dir, "walflow-data") + " does not exist yet; walflow run --config " + disk + " creates it"},
		{[]string{"index", "status", "--config", disk}, ExitFailure, "walflow: index status: the ledger " + filepath.Join(dir, "walflow-data") + " does not exist yet"},
		{[]string{"index", "rebuild", "by_post", "--config", memory}, ExitUsage, "walflow: index rebuild: ledger.backend is memory in " + memory},
		{[]string{"ledger", "read", "--index", "by_post", "--value", "1", "--config", none}, ExitUsage, "walflow: ledger read: " + none + " configures no indexes; add an indexes: block"},
		{[]string{"index", "status", "--config", none}, ExitUsage, "walflow: index status: " + none + " configures no indexes"},
	}
	for _, tt := range tests {
		r := runCLI(t.Context(), noEnv, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) || r.stdout != "" {
			t.Errorf("walflow %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s\nwant stderr with %q", strings.Join(tt.args, " "), r.code, tt.code, r.stdout, r.stderr, tt.stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "walflow-data")); !os.IsNotExist(err) {
		t.Errorf("the commands created the ledger directory (%v)", err)
	}
}

// readPositions runs walflow ledger read --json with args and returns the positions it
// printed.
func readPositions(t *testing.T, path string, args ...string) []event.Position {
	t.Helper()
	r := runCLI(t.Context(), noEnv, append([]string{"ledger", "read", "--json", "--config", path}, args...)...)
	if r.code != ExitOK {
		t.Fatalf("ledger read --json %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	var ps []event.Position
	for line := range strings.Lines(r.stdout) {
		var ev struct {
			Position event.Position `json:"position"`
			Name     string         `json:"name"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Name == "" {
			t.Fatalf("ledger read --json printed %q: %v", line, err)
		}
		ps = append(ps, ev.Position)
	}
	return ps
}

// TestLedgerReadAndIndexRebuild runs the engine with indexes on the blog, stops it, reads a
// post's events through the index and through its channel, rebuilds the index and reads
// again, and checks the errors: unknown names, and the lock while an engine runs.
func TestLedgerReadAndIndexRebuild(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "walflow.yaml")
	config := fmt.Sprintf(`database_url: %s
slot: %s
http:
  addr: %s
ledger:
  dir: data
tables:
  posts:
  comments:
    scopes: ["posts/{post_id}"]
indexes:
  by_post: {field: post_id}
  by_type: {type: true}
`, dsn, conn.Config().Database, addr)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	// The engine, as walflow run starts it, puts the blog's events in the ledger and
	// indexes them.
	cfg := quietEngineConfig(t, path)
	const adminToken = "index-admin-token-index-admin-token"
	cfg.AdminToken = adminToken // path's configuration does not give it to the commands
	eng, err := walflow.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	until, stop := runEngineInTest(t, eng, "the engine", 60*time.Second)
	until("the engine streams", func() bool { return eng.Status(ctx).Streaming })
	writeBlogChanges(t, conn)
	until("the ledger has 7 events, all indexed", func() bool {
		sts, err := eng.Indexes().Status(ctx)
		for _, s := range sts {
			if s.Checkpoint < 7 {
				return false
			}
		}
		return err == nil && eng.Ledger().State().Head >= 7
	})

	// While the engine holds the files, the ledger's commands read the ledger (opened
	// read-only) and those that need the index store say it is held.
	data := filepath.Join(dir, "data")
	for _, args := range [][]string{
		{"ledger", "read", "--index", "by_post", "--value", "1"},
		{"index", "rebuild", "by_post"},
	} {
		r := runCLI(ctx, noEnv, append(args, "--config", path)...)
		want := fmt.Sprintf("walflow: %s %s: the index %s is in use by process %d (%s); stop walflow run first: %s %s opens the files itself", args[0], args[1], data+".index", os.Getpid(), strings.Join(os.Args, " "), args[0], args[1])
		if args[0] == "ledger" {
			want += "; or, to read an index beside it, set http.admin_token_env or http.admin_token_file (and http.addr) for walflow run and this command: ledger read --index then asks the running walflow"
		}
		want += "\n"
		if r.code != ExitFailure || r.stderr != want || r.stdout != "" {
			t.Errorf("walflow %s while walflow runs: exit %d\nstdout:\n%s\nstderr:\n%s\nwant stderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr, want)
		}
	}
	for _, args := range [][]string{{"ledger", "read"}, {"ledger", "read", "--channel", "posts/1/comments"}} {
		r := runCLI(ctx, noEnv, append(args, "--config", path)...)
		want := 7
		if len(args) > 2 {
			want = 4
		}
		if n := strings.Count(r.stdout, "\n#") + 1; r.code != ExitOK || r.stderr != "" || !strings.HasPrefix(r.stdout, "#") || n != want {
			t.Errorf("walflow %s while walflow runs: exit %d, %d events, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, n, want, r.stdout, r.stderr)
		}
	}
	// With the admin token, ledger read --index asks the running walflow, which answers
	// what its index holds (compared below with the answer once it stopped); a wrong token
	// is refused by it.
	pathToken := filepath.Join(dir, "token.yaml")
	withToken := strings.Replace(config, "  addr: "+addr+"\n", "  addr: "+addr+"\n  admin_token_env: WALFLOW_ADMIN_TOKEN\n", 1)
	if err := os.WriteFile(pathToken, []byte(withToken), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenEnv := func(token string) func(string) string {
		return func(k string) string {
			if k == "WALFLOW_ADMIN_TOKEN" {
				return token
			}
			return ""
		}
	}
	live := map[string]string{}
	for _, args := range [][]string{
		{"--index", "by_post", "--value", "1"},
		{"--index", "by_post", "--value", "1", "--after", "3", "--limit", "2"},
		{"--index", "by_type", "--value", "update", "--json"},
	} {
		r := runCLI(ctx, tokenEnv(adminToken), append([]string{"ledger", "read"}, append(args, "--config", pathToken)...)...)
		if r.code != ExitOK || r.stderr != "" || r.stdout == "" {
			t.Errorf("ledger read %s with the admin token while walflow runs: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		live[strings.Join(args, " ")] = r.stdout
	}
	r := runCLI(ctx, tokenEnv("wrong-token-wrong-token-wrong"), "ledger", "read", "--index", "by_post", "--value", "1", "--config", pathToken)
	if r.code != ExitFailure || !strings.Contains(r.stderr, "401 Unauthorized") || !strings.Contains(r.stderr, "needs the admin token") {
		t.Errorf("ledger read --index with a wrong admin token: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// index status asks the running walflow.
	doc := indexStatusJSON(t, path)
	if doc.LedgerHeadFrom != "the running walflow at http://"+addr+"/status" || doc.LedgerHead != 7 || len(doc.Indexes) != 2 {
		t.Errorf("index status while walflow runs: %+v", doc)
	}
	for _, s := range doc.Indexes {
		if !s.Built || s.Checkpoint != 7 || s.LagEvents != 0 || s.Phase != "live" {
			t.Errorf("index status while walflow runs: %+v", s)
		}
	}
	r = runCLI(ctx, noEnv, "index", "status", "--config", path)
	for _, want := range []string{
		"ledger head: position 7 (from the running walflow at http://" + addr + "/status)\n",
		"INDEX     CHECKPOINT   LAG   PHASE   SINCE\n",
		"by_post   7            0     live    -\n",
	} {
		if r.code != ExitOK || !strings.Contains(r.stdout, want) {
			t.Errorf("index status while walflow runs lacks %q: exit %d\n%s%s", want, r.code, r.stdout, r.stderr)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}

	// Post 1's events: through the index, and through its scoped channel, which carries the
	// same events (the update that moved comment 3 away, and the delete, included).
	r = runCLI(ctx, noEnv, "ledger", "read", "--index", "by_post", "--value", "1", "--config", path)
	if r.code != ExitOK || r.stderr != "" {
		t.Fatalf("ledger read --index by_post --value 1: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	byIndex := r.stdout
	for args, got := range live {
		r := runCLI(ctx, noEnv, append([]string{"ledger", "read"}, append(strings.Fields(args), "--config", path)...)...)
		if r.code != ExitOK || got != r.stdout {
			t.Errorf("ledger read %s from the running walflow:\n%s\nwant what it reads from the files once stopped:\n%s%s", args, got, r.stdout, r.stderr)
		}
	}
	lines := strings.Split(strings.TrimSuffix(byIndex, "\n"), "\n")
	wantLines := []string{
		`^#3 +\S+ +comments +insert +id=1  post_id=1  body="x" +channels: comments, comments/1, posts/1/comments$`,
		`^#5 +\S+ +comments +insert +id=3  post_id=1  body="z" +channels: comments, comments/3, posts/1/comments$`,
		`^#6 +\S+ +comments +update +id=3  post_id: 1 → 2 +channels: comments, comments/3, posts/2/comments, posts/1/comments$`,
		`^#7 +\S+ +comments +delete +id=1 +channels: comments, comments/1, posts/1/comments$`,
	}
	if len(lines) != len(wantLines) {
		t.Fatalf("ledger read --index by_post --value 1 printed %d lines, want %d:\n%s", len(lines), len(wantLines), byIndex)
	}
	for i, w := range wantLines {
		if !regexp.MustCompile(w).MatchString(lines[i]) {
			t.Errorf("line %d is\n\t%s\nwant it to match\n\t%s", i+1, lines[i], w)
		}
	}
	r = runCLI(ctx, noEnv, "ledger", "read", "--channel", "posts/1/comments", "--config", path)
	if r.code != ExitOK || r.stdout != byIndex {
		t.Errorf("ledger read --channel posts/1/comments: exit %d\n%s%s\nwant the index's lines:\n%s", r.code, r.stdout, r.stderr, byIndex)
	}
	for _, tt := range []struct {
		args []string
		want []event.Position
	}{
		{[]string{"--index", "by_post", "--value", "1"}, []event.Position{3, 5, 6, 7}},
		{[]string{"--index", "by_post", "--value", "2"}, []event.Position{4, 6}},
		{[]string{"--index", "by_post", "--value", "2", "--after", "4"}, []event.Position{6}},
		{[]string{"--index", "by_post", "--value", "1", "--after", "3", "--limit", "2"}, []event.Position{5, 6}},
		{[]string{"--index", "by_post", "--value", "9"}, nil},
		{[]string{"--index", "by_type", "--value", "update"}, []event.Position{6}},
		{[]string{"--channel", "posts"}, []event.Position{1, 2}},
		{nil, []event.Position{1, 2, 3, 4, 5, 6, 7}},
		{[]string{"--after", "5"}, []event.Position{6, 7}},
		{[]string{"--after", "100"}, nil},
	} {
		if got := readPositions(t, path, tt.args...); !slices.Equal(got, tt.want) {
			t.Errorf("ledger read %s: positions %v, want %v", strings.Join(tt.args, " "), got, tt.want)
		}
	}
	r = runCLI(ctx, noEnv, "ledger", "read", "--index", "by_post", "--value", "9", "--config", path)
	if r.code != ExitOK || r.stdout != "" || r.stderr != "No events of by_post \"9\" after position 0 (the ledger head is 7).\n" {
		t.Errorf("ledger read of a value without events: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}

	// Unknown names list the configured indexes.
	r = runCLI(ctx, noEnv, "ledger", "read", "--index", "by_pots", "--value", "1", "--config", path)
	if r.code != ExitUsage || r.stderr != `walflow: ledger read: unknown index "by_pots" (did you mean by_post?); the indexes in `+path+" are by_post, by_type\n" {
		t.Errorf("ledger read of an unknown index: exit %d\n%s", r.code, r.stderr)
	}
	r = runCLI(ctx, noEnv, "index", "rebuild", "comments", "--config", path)
	if r.code != ExitUsage || r.stderr != `walflow: index rebuild: unknown index "comments"; the indexes in `+path+" are by_post, by_type\n" {
		t.Errorf("index rebuild of an unknown index: exit %d\n%s", r.code, r.stderr)
	}

	// Rebuild: progress on stderr (plain lines: not a terminal), the count and the
	// checkpoint on stdout, and the same answer afterwards.
	r = runCLI(ctx, noEnv, "index", "rebuild", "by_post", "--config", path)
	if r.code != ExitOK {
		t.Fatalf("index rebuild by_post: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !regexp.MustCompile(`^Rebuilt by_post in \S+: 6 entries under 2 values, checkpoint 7 \(the ledger head\)\.\n$`).MatchString(r.stdout) {
		t.Errorf("index rebuild by_post printed:\n%s", r.stdout)
	}
	if !regexp.MustCompile(`^by_post  events  0/7  0\.0%  0/s  ETA \?\n(by_post  events  .*\n)*by_post  events  7/7  100\.0%  [\d,]+/s  done in \S+\n$`).MatchString(r.stderr) {
		t.Errorf("index rebuild by_post progress:\n%s", r.stderr)
	}
	r = runCLI(ctx, noEnv, "ledger", "read", "--index", "by_post", "--value", "1", "--config", path)
	if r.code != ExitOK || r.stdout != byIndex {
		t.Errorf("ledger read after the rebuild: exit %d\n%s%s\nwant:\n%s", r.code, r.stdout, r.stderr, byIndex)
	}

	// An index added to the configuration after the run: read builds it first.
	if err := os.WriteFile(path, []byte(config+"  by_table: {table: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc = indexStatusJSON(t, path)
	if doc.LedgerHeadFrom != "the index store "+data+".index" || doc.LedgerHead != 7 || len(doc.Indexes) != 3 || !doc.Indexes[0].Built || doc.Indexes[0].Checkpoint != 7 || doc.Indexes[0].LagEvents != 0 ||
		doc.Indexes[2].Name != "by_table" || doc.Indexes[2].Built || doc.Indexes[2].LagEvents != 7 || doc.Indexes[2].Phase != "stopped" {
		t.Errorf("index status with a new index: %+v", doc)
	}
	r = runCLI(ctx, noEnv, "index", "status", "--config", path)
	for _, want := range []string{
		"ledger head: position 7 (from the index store " + data + ".index)\n",
		"INDEX      CHECKPOINT   LAG   PHASE     SINCE\n",
		"by_post    7            0     stopped   -\n",
		"by_table   -            -     stopped   -\n",
		"not built yet",
	} {
		if r.code != ExitOK || !strings.Contains(r.stdout, want) {
			t.Errorf("index status lacks %q: exit %d\n%s%s", want, r.code, r.stdout, r.stderr)
		}
	}
	if got := readPositions(t, path, "--index", "by_table", "--value", "posts"); !slices.Equal(got, []event.Position{1, 2}) {
		t.Errorf("ledger read --index by_table --value posts: %v, want [1 2]", got)
	}
	doc = indexStatusJSON(t, path)
	if s := doc.Indexes[2]; !s.Built || s.Checkpoint != 7 || s.LagEvents != 0 {
		t.Errorf("by_table after ledger read: %+v", s)
	}

	// Retention removes positions 1 and 2: reads start after the tail by default, and
	// --after before it is refused.
	tables := make([]channel.Table, len(cfg.Tables))
	for i, tb := range cfg.Tables {
		tables[i] = tb.WithDefaults()
	}
	router, err := channel.NewRouter(tables)
	if err != nil {
		t.Fatal(err)
	}
	led, err := disk.Open(ctx, data, &disk.Options{Indexer: router.Channels})
	if err != nil {
		t.Fatal(err)
	}
	if err := led.Truncate(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := led.Close(); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--after", "1"}, {"--index", "by_post", "--value", "1", "--after", "0"}, {"--channel", "posts", "--after", "1"}} {
		r = runCLI(ctx, noEnv, append([]string{"ledger", "read", "--config", path}, args...)...)
		after := args[len(args)-1]
		want := "walflow: ledger read: --after " + after + " is before the ledger's tail: retention removed the events up to position 2; give --after 2 or later\n"
		if r.code != ExitUsage || r.stderr != want {
			t.Errorf("ledger read %s after retention: exit %d\n%s\nwant %s", strings.Join(args, " "), r.code, r.stderr, want)
		}
	}
	if got := readPositions(t, path); !slices.Equal(got, []event.Position{3, 4, 5, 6, 7}) {
		t.Errorf("ledger read after retention: %v, want [3 4 5 6 7]", got)
	}
	if got := readPositions(t, path, "--index", "by_post", "--value", "1"); !slices.Equal(got, []event.Position{3, 5, 6, 7}) {
		t.Errorf("ledger read --index by_post --value 1 after retention: %v, want [3 5 6 7]", got)
	}
	r = runCLI(ctx, noEnv, "index", "rebuild", "by_post", "--config", path)
	if r.code != ExitOK || !regexp.MustCompile(`^Rebuilt by_post in \S+: 6 entries under 2 values, checkpoint 7 \(the ledger head\)\.
Retention had removed the events up to position 2, so the index starts after it\.\n$`).MatchString(r.stdout) ||
		!strings.Contains(r.stderr, "by_post  events  5/5  100.0%") {
		t.Errorf("index rebuild after retention: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// indexStatusJSON runs walflow index status --json and decodes its output.
func indexStatusJSON(t *testing.T, path string) indexStatusDoc {
	t.Helper()
	r := runCLI(t.Context(), noEnv, "index", "status", "--json", "--config", path)
	var doc indexStatusDoc
	if r.code != ExitOK {
		t.Fatalf("index status --json: exit %d\n%s", r.code, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("index status --json printed %q: %v", r.stdout, err)
	}
	// The source of the head has the key every status command gives it.
	var keys map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &keys); err != nil || keys["ledger_head_from"] == nil || keys["from"] != nil {
		t.Errorf("index status --json has no ledger_head_from key (or a from key):\n%s", r.stdout)
	}
	return doc
}
