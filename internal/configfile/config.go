package configfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v3"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/suggest"
	"github.com/walflow/walflow/source/pgwal"
)

// Defaults of the configuration file that differ from walflow.Config's.
const (
	// ConfigFileDefault is the file run and status read without --config.
	ConfigFileDefault = "walflow.yaml"
	// HTTPAddrDefault is where run serves /metrics, /healthz and /status.
	HTTPAddrDefault = "127.0.0.1:9187"
)

// databaseURLEnv are the environment variables that give database_url when the file does
// not, in order of preference.
var databaseURLEnv = []string{"WALFLOW_DATABASE_URL", "DATABASE_URL"}

// fileConfig is the configuration file's form. Its keys are snake_case.
type fileConfig struct {
	DatabaseURL    string                  `yaml:"database_url"`
	Slot           string                  `yaml:"slot"`
	TemporarySlot  bool                    `yaml:"temporary_slot"`
	SlotFailover   bool                    `yaml:"slot_failover"`
	Publication    string                  `yaml:"publication"`
	Ledger         ledgerConfig            `yaml:"ledger"`
	HTTP           httpConfig              `yaml:"http"`
	Log            logConfig               `yaml:"log"`
	StatusInterval string                  `yaml:"status_interval"`
	SyncDelay      string                  `yaml:"sync_delay"`
	ProcessStatus  string                  `yaml:"process_status"`
	Tables         map[string]*tableConfig `yaml:"tables"`
	// Operators are keyed by name; operatorConfig holds their settings.
	Operators        map[string]*operatorConfig `yaml:"operators"`
	OperatorDefaults operatorDefaultsConfig     `yaml:"operator_defaults"`
	Realtime         *realtimeConfig            `yaml:"realtime"`
	// Indexes are keyed by name; indexConfig says what each holds.
	Indexes map[string]*indexConfig `yaml:"indexes"`
	Alerts  *alertsConfig           `yaml:"alerts"`
	Cluster *clusterConfig          `yaml:"cluster"`
}

type ledgerConfig struct {
	Dir       string `yaml:"dir"`
	Backend   string `yaml:"backend"`
	Retention string `yaml:"retention"`
}

type httpConfig struct {
	// Addr is nil when the file leaves it out (default), "" when it turns HTTP off.
	Addr *string `yaml:"addr"`
	// AdminTokenFile and AdminTokenEnv say where the console's admin token is read from.
	AdminTokenFile string `yaml:"admin_token_file"`
	AdminTokenEnv  string `yaml:"admin_token_env"`
}

type logConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

type tableConfig struct {
	ID        string   `yaml:"id"`
	Scopes    []string `yaml:"scopes"`
	Timestamp string   `yaml:"timestamp"`
}

// Config is a loaded and validated configuration file.
type Config struct {
	// Engine is the engine's configuration, without a Logger.
	Engine walflow.Config
	// DSNFrom says where DatabaseURL came from: "database_url" or an environment variable.
	DSNFrom  string
	LogLevel slog.Level
	LogJSON  bool
	// Realtime is the realtime section, nil without one; run reads its keys into
	// Engine.Realtime (see RealtimeSettings.Resolve).
	Realtime *RealtimeSettings
	// AdminToken is where run reads the console's admin token (http.admin_token_file or
	// _env); nil without one.
	AdminToken *AdminTokenSource
}

// configError is a mistake in the configuration file: the file, the line (0 when unknown),
// the key path (tables.comments.scopes[0]) and what is wrong with the fix.
type configError struct {
	file string
	line int
	path string
	msg  string
}

func (e *configError) Error() string {
	var b strings.Builder
	b.WriteString(e.file)
	if e.line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.line))
	}
	b.WriteString(": ")
	if e.path != "" {
		b.WriteString(e.path)
		b.WriteString(": ")
	}
	b.WriteString(e.msg)
	return b.String()
}

// Load reads and validates the configuration file at path. getenv supplies database_url
// when the file has none. Every error is a mistake in the file (or a file that cannot be
// read), naming the file, the line and the key path with the fix.
func Load(path string, getenv func(string) string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &configError{file: path, msg: "no such file; write one with walflow init (it shows every key) or pass --config FILE"}
		}
		return nil, &configError{file: path, msg: err.Error()}
	}
	return parseConfig(path, data, getenv)
}

// spec describes the keys and values a YAML node may hold.
type spec struct {
	kind kind
	// what names the node in unknown-key errors: "the top-level keys", "the keys of ledger".
	what string
	// want says what a value must look like, for type errors.
	want string
	keys []string         // a mapping with fixed keys: their names, in documentation order
	sub  map[string]*spec // ... and their specs
	any  *spec            // a mapping whose keys are names (tables): every value's spec
	elem *spec            // a list: its elements' spec
	// refuse are keys a mapping never takes, with the error that says what to write instead
	// (an inline secret).
	refuse map[string]string
}

type kind uint8

const (
	kindScalar kind = iota
	kindBool
	kindMap
	kindList
)

func mapSpec(what string, pairs ...any) *spec {
	s := &spec{kind: kindMap, what: what, want: "a mapping of keys", sub: map[string]*spec{}}
	for i := 0; i < len(pairs); i += 2 {
		name := pairs[i].(string)
		s.keys = append(s.keys, name)
		s.sub[name] = pairs[i+1].(*spec)
	}
	return s
}

func scalar(want string) *spec { return &spec{kind: kindScalar, want: want} }

// fileSpec is the configuration file's schema, for errors that name the key and the fix
// before yaml decodes the file into fileConfig.
var fileSpec = mapSpec("the top-level keys",
	"database_url", scalar("a PostgreSQL URL like postgres://user:password@host:5432/db"),
	"slot", scalar("a replication slot name like walflow_app"),
	"temporary_slot", &spec{kind: kindBool, want: "true or false"},
	"slot_failover", &spec{kind: kindBool, want: "true or false"},
	"publication", scalar("a publication name like walflow"),
	"ledger", mapSpec("the keys of ledger",
		"dir", scalar("a directory like walflow-data"),
		"backend", scalar("disk, pebble or memory"),
		"retention", scalar("a duration like 7d or 72h, or forever"),
	),
	"http", func() *spec {
		s := mapSpec("the keys of http",
			"addr", scalar(`host:port like 127.0.0.1:9187, or "" for no HTTP server`),
			"admin_token_file", scalar("a file holding the console's admin token, like /run/secrets/walflow_admin"),
			"admin_token_env", scalar("an environment variable holding the console's admin token, like WALFLOW_ADMIN_TOKEN"),
		)
		s.refuse = map[string]string{"admin_token": "a secret is never written in the configuration file; put the token in a file and set admin_token_file: /run/secrets/walflow_admin, or in an environment variable and set admin_token_env: WALFLOW_ADMIN_TOKEN"}
		return s
	}(),
	"log", mapSpec("the keys of log",
		"level", scalar("debug, info, warn or error"),
		"format", scalar("text or json"),
	),
	"status_interval", scalar("a duration like 10s"),
	"sync_delay", scalar("a duration like 5ms"),
	"process_status", scalar("postgres, memory or none"),
	"tables", &spec{kind: kindMap, want: "a mapping of table names to their settings, like comments: {scopes: [\"posts/{post_id}\"]}",
		any: mapSpec("the keys of a table",
			"id", scalar("a column name like id"),
			"scopes", &spec{kind: kindList, want: `a list of scope templates like ["posts/{post_id}"]`, elem: scalar("a scope template like posts/{post_id}")},
			"timestamp", scalar("a column name like updated_at"),
		),
	},
	"operators", operatorsSpec,
	"operator_defaults", operatorDefaultsSpec,
	"realtime", realtimeSpec,
	"indexes", indexesSpec,
	"alerts", alertsSpec,
	"cluster", clusterSpec,
)

// loader checks one file.
type loader struct {
	file  string
	nodes map[string]*yaml.Node // key path → value node, for the line of later errors
	keys  map[string]*yaml.Node // key path → key node, for errors about a whole entry
	lines map[int]string        // line → key path of a value on it, for yaml's errors
	order map[string][]string   // key path of a mapping → its keys in file order
}

func (l *loader) errAt(n *yaml.Node, path, format string, args ...any) error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &configError{file: l.file, line: line, path: path, msg: fmt.Sprintf(format, args...)}
}

// errPath reports a problem with the value at path, on its line when the file has it.
func (l *loader) errPath(path, format string, args ...any) error {
	return l.errAt(l.nodes[path], path, format, args...)
}

// errKey reports a problem with a whole entry (an operator), on the line of its key.
func (l *loader) errKey(path, format string, args ...any) error {
	n := l.keys[path]
	if n == nil {
		n = l.nodes[path]
	}
	return l.errAt(n, path, format, args...)
}

func parseConfig(file string, data []byte, getenv func(string) string) (*Config, error) {
	l := &loader{file: file, nodes: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}, lines: map[int]string{}, order: map[string][]string{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, syntaxError(file, data, err)
	}
	var fc fileConfig
	if len(doc.Content) > 0 {
		if err := l.walk(doc.Content[0], fileSpec, ""); err != nil {
			return nil, err
		}
		// The walk found every unknown key and misshapen value with its path; the strict
		// decode is the safety net that keeps fileConfig and fileSpec in step.
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&fc); err != nil {
			return nil, l.decodeError(err)
		}
	}
	return l.build(&fc, getenv)
}

// walk checks node n against s; path is n's key path.
func (l *loader) walk(n *yaml.Node, s *spec, path string) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	l.nodes[path] = n
	l.lines[n.Line] = path
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // an empty value takes the default
	}
	where := path
	if where == "" {
		where = "the file"
	}
	switch s.kind {
	case kindScalar:
		if n.Kind != yaml.ScalarNode {
			return l.errAt(n, path, "want %s, found %s", s.want, describe(n))
		}
	case kindBool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return l.errAt(n, path, "want %s, found %s", s.want, describe(n))
		}
	case kindList:
		if n.Kind != yaml.SequenceNode {
			return l.errAt(n, path, "want %s, found %s", s.want, describe(n))
		}
		for i, c := range n.Content {
			if err := l.walk(c, s.elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case kindMap:
		if n.Kind != yaml.MappingNode {
			if path == "" {
				return l.errAt(n, "", "the file must be a mapping of keys (%s), found %s", strings.Join(s.keys, ", "), describe(n))
			}
			return l.errAt(n, path, "want %s, found %s", s.want, describe(n))
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return l.errAt(k, path, "a key of %s is %s; keys are names", where, describe(k))
			}
			name := k.Value
			kp := joinPath(path, name)
			if first, dup := seen[name]; dup {
				return l.errAt(k, kp, "set twice (first on line %d); keep one", first)
			}
			seen[name] = k.Line
			l.keys[kp] = k
			l.order[path] = append(l.order[path], name)
			vs := s.any
			if vs == nil {
				vs = s.sub[name]
			}
			if msg, ok := s.refuse[name]; ok {
				return l.errAt(k, kp, "%s", msg)
			}
			if vs == nil {
				msg := "unknown key"
				if sug := suggest.Closest(name, s.keys); sug != "" {
					msg += " (did you mean " + sug + "?)"
				}
				return l.errAt(k, kp, "%s; %s are %s", msg, s.what, strings.Join(s.keys, ", "))
			}
			if err := l.walk(v, vs, kp); err != nil {
				return err
			}
		}
	}
	return nil
}

// describe names what a node holds, for errors.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	default:
		return "something else"
	}
}

var plainKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)

// joinPath appends key to a key path: tables.comments, or tables["public.comments"] when the
// key is not a plain name.
func joinPath(path, key string) string {
	if !plainKey.MatchString(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// syntaxError reports a YAML syntax error at its line, with a hint for the usual trap: a
// scope template in a flow list, where { starts a mapping.
func syntaxError(file string, data []byte, err error) error {
	e := &configError{file: file, msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		e.line, _ = strconv.Atoi(m[1])
		e.msg = m[2]
	}
	e.msg += "; the file is not valid YAML"
	lines := strings.Split(string(data), "\n")
	// yaml reports a bad flow list on the line before it.
	for _, n := range []int{e.line, e.line + 1} {
		if n >= 1 && n <= len(lines) && strings.Contains(lines[n-1], "[") && strings.Contains(lines[n-1], "{") {
			e.line = n
			e.msg += `; inside [ ] quote scope templates, like scopes: ["posts/{post_id}"]`
			break
		}
	}
	return e
}

// decodeError turns an error of the strict decode into a configError at the key path of
// its line.
func (l *loader) decodeError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		if m := yamlLine.FindStringSubmatch(te.Errors[0]); m != nil {
			line, _ := strconv.Atoi(m[1])
			return &configError{file: l.file, line: line, path: l.lines[line], msg: m[2]}
		}
		return &configError{file: l.file, msg: te.Errors[0]}
	}
	return &configError{file: l.file, msg: strings.TrimPrefix(err.Error(), "yaml: ")}
}

// build validates the decoded file and turns it into a Config.
func (l *loader) build(fc *fileConfig, getenv func(string) string) (*Config, error) {
	c := &Config{DSNFrom: "database_url", LogLevel: slog.LevelInfo}
	e := &c.Engine

	e.DatabaseURL = fc.DatabaseURL
	if e.DatabaseURL == "" {
		for _, name := range databaseURLEnv {
			if v := getenv(name); v != "" {
				e.DatabaseURL, c.DSNFrom = v, name
				break
			}
		}
	}
	if e.DatabaseURL == "" {
		return nil, l.errPath("database_url", "missing; set database_url: postgres://user:password@host:5432/db in the file, or the %s or %s environment variable",
			databaseURLEnv[0], databaseURLEnv[1])
	}
	if _, err := pgconn.ParseConfig(e.DatabaseURL); err != nil {
		path := "database_url"
		if c.DSNFrom != "database_url" {
			path = "database_url (from " + c.DSNFrom + ")"
		}
		return nil, l.errAt(l.nodes["database_url"], path, "not a PostgreSQL connection string: %v; write it like postgres://user:password@host:5432/db", err)
	}

	e.Slot = fc.Slot
	if e.Slot != "" && !pgwal.ValidSlot(e.Slot) {
		return nil, l.errPath("slot", "%q is not a replication slot name; use 1 to 63 lower-case letters, digits and underscores, like walflow_app", e.Slot)
	}
	e.TemporarySlot = fc.TemporarySlot
	e.SlotFailover = fc.SlotFailover
	if e.SlotFailover && e.TemporarySlot {
		return nil, l.errPath("slot_failover", "true, but temporary_slot is true too, and PostgreSQL does not fail over temporary slots; remove one of them")
	}
	e.Publication = fc.Publication
	if e.Publication != "" && !pgwal.ValidPublication(e.Publication) {
		return nil, l.errPath("publication", "%q is not a publication name; use a letter or underscore, then letters, digits or underscores, like walflow", e.Publication)
	}

	switch fc.Ledger.Backend {
	case "", "disk", "pebble":
		e.LedgerBackend = fc.Ledger.Backend
		dir := fc.Ledger.Dir
		if dir == "" {
			dir = walflow.LedgerDirDefault
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(filepath.Dir(l.file), dir)
		}
		e.LedgerDir = dir
	case "memory":
		if fc.Ledger.Dir != "" {
			return nil, l.errPath("ledger.dir", "set, but ledger.backend is memory, which keeps no files; remove ledger.dir or set backend: disk")
		}
		if !fc.TemporarySlot {
			return nil, l.errPath("ledger.backend", "memory forgets the ledger when walflow exits, so the slot could not resume after a restart; set temporary_slot: true as well, or use backend: disk")
		}
		e.MemoryLedger = true
	default:
		return nil, l.errPath("ledger.backend", "%q is not a ledger backend; use disk (the default, crash-safe, segment files in ledger.dir), pebble (the format of walflow before segment files) or memory (for throwaway runs)", fc.Ledger.Backend)
	}

	retention, rerr := l.retention(fc.Ledger.Retention)
	if rerr != nil {
		return nil, rerr
	}
	e.Retention = retention

	e.HTTPAddr = HTTPAddrDefault
	if fc.HTTP.Addr != nil {
		e.HTTPAddr = *fc.HTTP.Addr
	}
	if e.HTTPAddr != "" {
		_, port, err := net.SplitHostPort(e.HTTPAddr)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
			return nil, l.errPath("http.addr", `%q is not host:port; write it like 127.0.0.1:9187 (or "" for no HTTP server)`, e.HTTPAddr)
		}
	}

	if err := l.adminToken(fc.HTTP, c); err != nil {
		return nil, err
	}

	switch fc.Log.Level {
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "", "info":
		c.LogLevel = slog.LevelInfo
	case "warn":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		return nil, l.errPath("log.level", "%q is not a log level; use debug, info (the default), warn or error", fc.Log.Level)
	}
	switch fc.Log.Format {
	case "", "text":
	case "json":
		c.LogJSON = true
	default:
		return nil, l.errPath("log.format", "%q is not a log format; use text (the default) or json", fc.Log.Format)
	}

	var err error
	if e.StatusInterval, err = l.duration("status_interval", fc.StatusInterval); err != nil {
		return nil, err
	}
	if e.SyncDelay, err = l.duration("sync_delay", fc.SyncDelay); err != nil {
		return nil, err
	}

	if fc.ProcessStatus != "" && !walflow.ValidProcessStatus(fc.ProcessStatus) {
		return nil, l.errPath("process_status", "%q is not a process-status store; use postgres (the default: the walflow schema of the followed database), memory or none", fc.ProcessStatus)
	}
	e.ProcessStatus = fc.ProcessStatus

	for _, name := range l.order["tables"] {
		t, err := l.table(name, fc.Tables[name])
		if err != nil {
			return nil, err
		}
		e.Tables = append(e.Tables, t)
	}
	if err := l.operators(fc, e); err != nil {
		return nil, err
	}
	if err := l.realtime(fc, c); err != nil {
		return nil, err
	}
	if err := l.indexes(fc, e); err != nil {
		return nil, err
	}
	if err := l.alerts(fc, e); err != nil {
		return nil, err
	}
	if err := l.cluster(fc, e); err != nil {
		return nil, err
	}
	return c, nil
}

// duration parses a positive Go duration; empty gives 0 (the default).
func (l *loader) duration(path, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, l.errPath(path, "%q is not a duration; write it like 10s, 500ms or 1m", s)
	}
	if d <= 0 {
		return 0, l.errPath(path, "%q is not positive; write a duration like 10s, or leave the key out for the default", s)
	}
	return d, nil
}

// retention reads ledger.retention: a duration, whole days like 30d, or forever.
func (l *loader) retention(s string) (time.Duration, error) {
	const path = "ledger.retention"
	if s == "forever" {
		return -1, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 || n > 36500 {
			return 0, l.errPath(path, "%q is not a number of days; write it like 7d, or as a duration like 72h, or forever", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := l.duration(path, s)
	if err != nil {
		return 0, l.errPath(path, "%q is not a retention; write it like 7d or 72h, or forever to keep every event", s)
	}
	return d, nil
}

// table validates one entry of tables, naming the key of each mistake.
func (l *loader) table(name string, tc *tableConfig) (channel.Table, error) {
	path := joinPath("tables", name)
	t := channel.Table{Name: name}
	if err := t.Validate(); err != nil {
		return t, l.errPath(path, "%s", channelProblem(err))
	}
	if tc == nil {
		return t, nil
	}
	t.IDColumn = tc.ID
	if err := t.Validate(); err != nil {
		return t, l.errPath(path+".id", "%s", channelProblem(err))
	}
	t.TimestampColumn = tc.Timestamp
	if err := t.Validate(); err != nil {
		return t, l.errPath(path+".timestamp", "%s", channelProblem(err))
	}
	for i, s := range tc.Scopes {
		sc, err := channel.ParseScope(s)
		if err != nil {
			return t, l.errPath(fmt.Sprintf("%s.scopes[%d]", path, i), "%s", channelProblem(err))
		}
		t.Scopes = append(t.Scopes, sc)
	}
	if err := t.Validate(); err != nil {
		return t, l.errPath(path+".scopes", "%s", channelProblem(err))
	}
	return t, nil
}

// channelProblem is a channel error's problem, without the package and the table's name,
// which the key path already says.
func channelProblem(err error) string {
	if ce := (*channel.Error)(nil); errors.As(err, &ce) {
		return ce.Problem
	}
	return err.Error()
}

// Logger returns the logger the file's log section asks for, writing to w.
func (c *Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
