package configfile

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/channel"
)

// noEnv is a getenv with nothing set.
func noEnv(string) string { return "" }

// envOf is a getenv with the given variables set.
func envOf(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

const fullConfig = `
database_url: postgres://app:s3cret@db.internal:5432/app
slot: walflow_app
temporary_slot: false
publication: walflow_pub
ledger:
  dir: /var/lib/walflow
  backend: disk
  retention: 30d
http:
  addr: 0.0.0.0:9188
log:
  level: debug
  format: json
status_interval: 5s
sync_delay: 2ms
tables:
  posts:
  comments:
    id: id
    scopes: ["posts/{post_id}", "organizations/{org_id}/posts/{post_id}"]
    timestamp: changed_at
  public.users: {}
`

func TestParseConfigFull(t *testing.T) {
	t.Parallel()
	c, err := parseConfig("walflow.yaml", []byte(fullConfig), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	e := c.Engine
	checks := []struct {
		name      string
		got, want any
	}{
		{"DatabaseURL", e.DatabaseURL, "postgres://app:s3cret@db.internal:5432/app"},
		{"dsnFrom", c.DSNFrom, "database_url"},
		{"Slot", e.Slot, "walflow_app"},
		{"TemporarySlot", e.TemporarySlot, false},
		{"Publication", e.Publication, "walflow_pub"},
		{"LedgerDir", e.LedgerDir, "/var/lib/walflow"},
		{"MemoryLedger", e.MemoryLedger, false},
		{"Retention", e.Retention, 30 * 24 * time.Hour},
		{"HTTPAddr", e.HTTPAddr, "0.0.0.0:9188"},
		{"logLevel", c.LogLevel, slog.LevelDebug},
		{"logJSON", c.LogJSON, true},
		{"StatusInterval", e.StatusInterval, 5 * time.Second},
		{"SyncDelay", e.SyncDelay, 2 * time.Millisecond},
		{"tables", len(e.Tables), 3},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
	if t.Failed() {
		return
	}
	// Tables keep the file's order; null and {} give the defaults.
	if e.Tables[0].Name != "posts" || e.Tables[1].Name != "comments" || e.Tables[2].Name != "public.users" {
		t.Errorf("table order = %v, %v, %v", e.Tables[0].Name, e.Tables[1].Name, e.Tables[2].Name)
	}
	com := e.Tables[1]
	if com.IDColumn != "id" || com.TimestampColumn != "changed_at" || len(com.Scopes) != 2 ||
		com.Scopes[1].String() != "organizations/{org_id}/posts/{post_id}" {
		t.Errorf("comments = %+v", com)
	}
	if _, err := channel.NewRouter(e.Tables); err != nil {
		t.Errorf("the tables do not make a router: %v", err)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := parseConfig(filepath.Join("etc", "walflow.yaml"), []byte("# only comments\n"), envOf("WALFLOW_DATABASE_URL", "postgres://w@h/db", "DATABASE_URL", "postgres://d@h/db"))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Engine
	if e.DatabaseURL != "postgres://w@h/db" || c.DSNFrom != "WALFLOW_DATABASE_URL" {
		t.Errorf("DatabaseURL = %q from %s, want WALFLOW_DATABASE_URL's", e.DatabaseURL, c.DSNFrom)
	}
	if e.LedgerDir != filepath.Join("etc", "walflow-data") {
		t.Errorf("LedgerDir = %q, want it next to the file", e.LedgerDir)
	}
	if e.Retention != 0 {
		t.Errorf("Retention = %v, want 0 (the engine's default)", e.Retention)
	}
	for in, want := range map[string]time.Duration{"72h": 72 * time.Hour, "forever": -1, "1d": 24 * time.Hour} {
		c, err := parseConfig("walflow.yaml", []byte("ledger: {retention: "+in+"}\n"), envOf("DATABASE_URL", "postgres://d@h/db"))
		if err != nil || c.Engine.Retention != want {
			t.Errorf("retention %s: %v, %v; want %v", in, c, err, want)
		}
	}
	if e.HTTPAddr != HTTPAddrDefault || c.LogLevel != slog.LevelInfo || c.LogJSON || e.Slot != "" || len(e.Tables) != 0 {
		t.Errorf("defaults: %+v %+v", e, c)
	}

	c, err = parseConfig("walflow.yaml", []byte("http:\n  addr: \"\"\n"), envOf("DATABASE_URL", "postgres://d@h/db"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Engine.DatabaseURL != "postgres://d@h/db" || c.DSNFrom != "DATABASE_URL" {
		t.Errorf("DatabaseURL = %q from %s, want DATABASE_URL's", c.Engine.DatabaseURL, c.DSNFrom)
	}
	if c.Engine.HTTPAddr != "" {
		t.Errorf(`addr: "" gave HTTPAddr %q, want none`, c.Engine.HTTPAddr)
	}

	// The file wins over the environment.
	c, err = parseConfig("walflow.yaml", []byte("database_url: postgres://f@h/db\n"), envOf("WALFLOW_DATABASE_URL", "postgres://w@h/db"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Engine.DatabaseURL != "postgres://f@h/db" {
		t.Errorf("DatabaseURL = %q, want the file's", c.Engine.DatabaseURL)
	}

	c, err = parseConfig("walflow.yaml", []byte("temporary_slot: true\nledger: {backend: memory}\n"), envOf("DATABASE_URL", "postgres://d@h/db"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Engine.MemoryLedger || !c.Engine.TemporarySlot {
		t.Errorf("memory ledger: %+v", c.Engine)
	}
}

func TestParseConfigErrors(t *testing.T) {
	t.Parallel()
	const db = "database_url: postgres://app@localhost/app\n"
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error, in order
	}{
		{"missing database_url", "slot: a\n", []string{"walflow.yaml: database_url: missing", "WALFLOW_DATABASE_URL or DATABASE_URL environment variable"}},
		{"unknown top-level key", db + "tabels:\n  posts:\n", []string{"walflow.yaml:2: tabels: unknown key (did you mean tables?); the top-level keys are", "database_url, slot, temporary_slot"}},
		{"unknown ledger key", db + "ledger:\n  backnd: disk\n", []string{"walflow.yaml:3: ledger.backnd: unknown key (did you mean backend?)", "the keys of ledger are dir, backend"}},
		{"unknown table key", db + "tables:\n  comments:\n    scope: [\"posts/{post_id}\"]\n", []string{"walflow.yaml:4: tables.comments.scope: unknown key (did you mean scopes?)", "id, scopes, timestamp"}},
		{"bad scope", db + "tables:\n  comments:\n    scopes: [\"posts/{post_id}\", \"posts/post_id\"]\n", []string{"walflow.yaml:4: tables.comments.scopes[1]: invalid scope \"posts/post_id\"", "{post_id}"}},
		{"scope braces", db + "tables:\n  comments:\n    scopes:\n      - posts/{post id}\n", []string{"walflow.yaml:5: tables.comments.scopes[0]:", "not a column name"}},
		{"scopes not a list", db + "tables:\n  comments:\n    scopes: posts/{post_id}\n", []string{`tables.comments.scopes: want a list of scope templates like ["posts/{post_id}"]`}},
		{"unquoted flow scope", db + "tables:\n  comments:\n    scopes: [posts/{post_id}]\n", []string{"walflow.yaml:4: ", "not valid YAML", `quote scope templates, like scopes: ["posts/{post_id}"]`}},
		{"same parents", db + "tables:\n  comments:\n    scopes: [\"posts/{post_id}\", \"posts/{parent_id}\"]\n", []string{"tables.comments.scopes:", "have the same parents"}},
		{"bad id column", db + "tables:\n  comments:\n    id: comment-id\n", []string{"tables.comments.id: id column \"comment-id\""}},
		{"bad timestamp column", db + "tables:\n  comments:\n    timestamp: 9am\n", []string{"tables.comments.timestamp: timestamp column \"9am\""}},
		{"bad table name", db + "tables:\n  com-ments:\n", []string{`tables["com-ments"]: the name`, "use a name like comments"}},
		{"table not a mapping", db + "tables:\n  comments: [id]\n", []string{"tables.comments: want a mapping of keys, found a list"}},
		{"tables a list", db + "tables:\n  - comments\n", []string{"tables: want a mapping of table names"}},
		{"bad duration", db + "status_interval: 10\n", []string{`walflow.yaml:2: status_interval: "10" is not a duration; write it like 10s`}},
		{"negative duration", db + "sync_delay: -5ms\n", []string{`sync_delay: "-5ms" is not positive`}},
		{"bad process status store", db + "process_status: redis\n", []string{`walflow.yaml:2: process_status: "redis" is not a process-status store; use postgres`}},
		{"bad level", db + "log:\n  level: verbose\n", []string{`walflow.yaml:3: log.level: "verbose" is not a log level; use debug, info (the default), warn or error`}},
		{"bad format", db + "log: {format: xml}\n", []string{`log.format: "xml" is not a log format`}},
		{"bad backend", db + "ledger: {backend: s3}\n", []string{`ledger.backend: "s3" is not a ledger backend; use disk`}},
		{"bad retention", db + "ledger: {retention: a week}\n", []string{`ledger.retention: "a week" is not a retention; write it like 7d or 72h, or forever`}},
		{"zero days", db + "ledger: {retention: 0d}\n", []string{`ledger.retention: "0d" is not a number of days`}},
		{"negative retention", db + "ledger: {retention: -1h}\n", []string{`ledger.retention: "-1h" is not a retention`}},
		{"memory durable slot", db + "ledger: {backend: memory}\n", []string{"ledger.backend: memory forgets", "temporary_slot: true"}},
		{"memory with dir", db + "temporary_slot: true\nledger: {backend: memory, dir: x}\n", []string{"ledger.dir: set, but ledger.backend is memory"}},
		{"bad addr", db + "http: {addr: 9187}\n", []string{`http.addr: "9187" is not host:port; write it like 127.0.0.1:9187`}},
		{"bad bool", db + "temporary_slot: yes please\n", []string{`temporary_slot: want true or false, found "yes please"`}},
		{"bad slot", db + "slot: My-Slot\n", []string{`slot: "My-Slot" is not a replication slot name`}},
		{"bad publication", db + "publication: 1pub\n", []string{`publication: "1pub" is not a publication name`}},
		{"scalar for mapping", db + "log: debug\n", []string{`log: want a mapping of keys, found "debug"`}},
		{"list for scalar", db + "slot: [a]\n", []string{"slot: want a replication slot name like walflow_app, found a list"}},
		{"duplicate key", db + "slot: a\nslot: b\n", []string{"walflow.yaml:3: slot: set twice (first on line 2)"}},
		{"duplicate table", db + "tables:\n  posts:\n  posts:\n", []string{"tables.posts: set twice"}},
		{"not yaml", "database_url: x\n  slot: y\n", []string{"walflow.yaml:2: mapping values are not allowed in this context; the file is not valid YAML"}},
		{"not a mapping", "- database_url\n", []string{"walflow.yaml:1: the file must be a mapping of keys (database_url, slot"}},
		{"bad url", "database_url: postgres://app:s3cret@db:port/app\n", []string{"walflow.yaml:1: database_url: not a PostgreSQL connection string"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseConfig("walflow.yaml", []byte(tt.yaml), noEnv)
			if err == nil {
				t.Fatalf("parseConfig succeeded (%+v), want an error with %q", c, tt.want)
			}
			msg := err.Error()
			rest := msg
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error\n\t%s\ndoes not contain (in order)\n\t%s", msg, w)
				}
				rest = rest[i+len(w):]
			}
			if strings.Contains(msg, "s3cret") {
				t.Errorf("error shows the password: %s", msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
		})
	}
}

func TestParseConfigEnvURL(t *testing.T) {
	t.Parallel()
	_, err := parseConfig("walflow.yaml", nil, envOf("DATABASE_URL", "postgres://app:s3cret@db:port/app"))
	if err == nil || !strings.Contains(err.Error(), "database_url (from DATABASE_URL): not a PostgreSQL connection string") {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error shows the password: %v", err)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	_, err := Load(path, noEnv)
	var ce *configError
	if err == nil || !strings.Contains(err.Error(), path+": no such file") || !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a configuration error naming the file", err)
	}
}

// TestExampleConfigs loads walflow.example.yaml and the README's YAML blocks, so the
// documentation cannot drift from what run accepts.
func TestExampleConfigs(t *testing.T) {
	t.Parallel()
	if _, err := Load(filepath.Join("..", "..", "walflow.example.yaml"), noEnv); err != nil {
		t.Errorf("walflow.example.yaml: %v", err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("README.md has no yaml block")
	}
	for i, b := range blocks {
		if _, err := parseConfig("README.md", b[1], envOf("DATABASE_URL", "postgres://app@localhost/app")); err != nil {
			t.Errorf("README.md yaml block %d: %v", i+1, err)
		}
	}
}
