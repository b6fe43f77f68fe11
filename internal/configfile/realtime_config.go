package configfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/ledger/memory"
	"github.com/walflow/walflow/realtime"
)

// realtimeConfig is the realtime section: the gateway run serves on http.addr.
type realtimeConfig struct {
	Path              string   `yaml:"path"`
	AllowAnonymous    bool     `yaml:"allow_anonymous"`
	AnonymousChannels []string `yaml:"anonymous_channels"`
	AllowedOrigins    []string `yaml:"allowed_origins"`
	// Numbers are kept as the file's text, to name the key of a bad one.
	MaxConnections string     `yaml:"max_connections"`
	MaxChannels    string     `yaml:"max_channels"`
	Buffer         string     `yaml:"buffer"`
	Heartbeat      string     `yaml:"heartbeat"`
	FlushInterval  string     `yaml:"flush_interval"`
	WriteTimeout   string     `yaml:"write_timeout"`
	ResumeWait     string     `yaml:"resume_wait"`
	JWT            *jwtConfig `yaml:"jwt"`
}

// jwtConfig is realtime.jwt. Keys come from files or environment variables only, never
// from the file itself.
type jwtConfig struct {
	HS256SecretFile    string `yaml:"hs256_secret_file"`
	HS256SecretEnv     string `yaml:"hs256_secret_env"`
	RS256PublicKeyFile string `yaml:"rs256_public_key_file"`
	RS256PublicKeyEnv  string `yaml:"rs256_public_key_env"`
	ES256PublicKeyFile string `yaml:"es256_public_key_file"`
	ES256PublicKeyEnv  string `yaml:"es256_public_key_env"`
	// JWKS URLs are not secrets: they are read from the file.
	JWKSURLs            []string `yaml:"jwks_urls"`
	JWKSRefreshInterval string   `yaml:"jwks_refresh_interval"`
	Claim               string   `yaml:"claim"`
	Issuer              string   `yaml:"issuer"`
	Audience            string   `yaml:"audience"`
	Leeway              string   `yaml:"leeway"`
}

var realtimeSpec = mapSpec("the keys of realtime",
	"path", scalar("a URL path prefix like /realtime/"),
	"allow_anonymous", &spec{kind: kindBool, want: "true or false"},
	"anonymous_channels", &spec{kind: kindList, want: `a list of channel patterns like [posts, "posts/*"]`, elem: scalar(`a channel pattern like posts or "posts/*"`)},
	"allowed_origins", &spec{kind: kindList, want: `a list of origin patterns like ["https://app.example.com", "http://localhost:*"]`, elem: scalar(`an origin pattern like "https://app.example.com"`)},
	"max_connections", scalar("a number of streams like 10000"),
	"max_channels", scalar("a number of channels like 32"),
	"buffer", scalar("a number of events like 1024"),
	"heartbeat", scalar("a duration like 15s"),
	"flush_interval", scalar("a duration like 25ms"),
	"write_timeout", scalar("a duration like 10s"),
	"resume_wait", scalar("a duration like 10s"),
	"jwt", jwtSpec,
)

var jwtSpec = func() *spec {
	s := mapSpec("the keys of realtime.jwt",
		"hs256_secret_file", scalar("a file holding the HS256 secret, like /run/secrets/walflow_jwt"),
		"hs256_secret_env", scalar("an environment variable holding the HS256 secret, like WALFLOW_JWT_SECRET"),
		"rs256_public_key_file", scalar("a PEM file holding the RS256 public key, like /etc/walflow/jwt_rs256.pem"),
		"rs256_public_key_env", scalar("an environment variable holding the RS256 public key in PEM, like WALFLOW_JWT_RS256_KEY"),
		"es256_public_key_file", scalar("a PEM file holding the ES256 public key, like /etc/walflow/jwt_es256.pem"),
		"es256_public_key_env", scalar("an environment variable holding the ES256 public key in PEM, like WALFLOW_JWT_ES256_KEY"),
		"jwks_urls", &spec{kind: kindList, want: `a list of JWKS URLs like ["https://auth.example.com/.well-known/jwks.json"]`, elem: scalar("a JWKS URL like https://auth.example.com/.well-known/jwks.json")},
		"jwks_refresh_interval", scalar("a duration like 15m"),
		"claim", scalar("a claim name like channels"),
		"issuer", scalar("the iss tokens must carry, like https://auth.example.com"),
		"audience", scalar("the aud tokens must carry, like walflow"),
		"leeway", scalar("a duration like 30s"),
	)
	s.refuse = map[string]string{
		"hs256_secret":     "a secret is never written in the configuration file; put it in a file and set hs256_secret_file: /run/secrets/walflow_jwt, or in an environment variable and set hs256_secret_env: WALFLOW_JWT_SECRET",
		"rs256_public_key": "keys are read from a file or an environment variable; set rs256_public_key_file: FILE.pem or rs256_public_key_env: VARIABLE",
		"es256_public_key": "keys are read from a file or an environment variable; set es256_public_key_file: FILE.pem or es256_public_key_env: VARIABLE",
	}
	return s
}()

// RealtimeSettings is the validated realtime section. Its keys are read by Resolve, which
// only run calls: status and the operator commands need no access to them.
type RealtimeSettings struct {
	l       *loader
	path    string
	gateway realtime.GatewayConfig // without Authorizer
	jwt     realtime.JWTConfig     // without keys
	keys    []keySource            // the configured keys
}

// keySource is where one JWT key is read from: a file or an environment variable.
type keySource struct {
	alg   string // hs256, rs256 or es256
	field string // its JWTConfig field
	what  string // "secret" or "public key"
	key   string // the key path that set it, for errors
	file  string // the file, relative paths resolved against the configuration file's
	env   string // or the environment variable
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// realtime validates the realtime section into c.Realtime, after http.addr.
func (l *loader) realtime(fc *fileConfig, c *Config) error {
	if l.keys["realtime"] == nil {
		return nil
	}
	rc := fc.Realtime
	if rc == nil {
		rc = &realtimeConfig{}
	}
	if c.Engine.HTTPAddr == "" {
		return l.errKey("realtime", `set, but http.addr is "" (no HTTP server), so nothing would serve the gateway; set http.addr, or remove realtime`)
	}
	rs := &RealtimeSettings{l: l, path: walflow.RealtimePathDefault}
	if rc.Path != "" {
		p := rc.Path
		if !strings.HasSuffix(p, "/") {
			p += "/"
		}
		if !walflow.ValidRealtimePath(p) {
			return l.errPath("realtime.path", "%q is not a URL path prefix; write it like /realtime/ (a slash, then segments of letters, digits, - or _)", rc.Path)
		}
		rs.path = p
	}

	g := &rs.gateway
	var err error
	if g.MaxConnections, err = l.count("realtime.max_connections", rc.MaxConnections, "streams", realtime.MaxConnectionsDefault); err != nil {
		return err
	}
	if g.MaxChannels, err = l.count("realtime.max_channels", rc.MaxChannels, "channels per connection", realtime.MaxChannelsDefault); err != nil {
		return err
	}
	if g.Buffer, err = l.count("realtime.buffer", rc.Buffer, "events", realtime.BufferDefault); err != nil {
		return err
	}
	if g.FlushInterval, err = l.duration("realtime.flush_interval", rc.FlushInterval); err != nil {
		return err
	}
	if g.Heartbeat, err = l.duration("realtime.heartbeat", rc.Heartbeat); err != nil {
		return err
	}
	if g.WriteTimeout, err = l.duration("realtime.write_timeout", rc.WriteTimeout); err != nil {
		return err
	}
	if g.ResumeWait, err = l.duration("realtime.resume_wait", rc.ResumeWait); err != nil {
		return err
	}
	if err := l.allowedOrigins(rc.AllowedOrigins, g); err != nil {
		return err
	}

	if err := l.jwt(rc.JWT, rs); err != nil {
		return err
	}
	switch {
	case l.keys["realtime.jwt"] == nil && !rc.AllowAnonymous:
		return l.errKey("realtime", "no jwt, and allow_anonymous is not true, so no one could subscribe; configure realtime.jwt (like hs256_secret_file: /run/secrets/walflow_jwt), or set allow_anonymous: true, with which anyone who reaches http.addr reads the anonymous_channels without a token")
	case len(rc.AnonymousChannels) > 0 && !rc.AllowAnonymous:
		return l.errPath("realtime.anonymous_channels", "set, but allow_anonymous is not true; set allow_anonymous: true to let requests without a token read them, or remove anonymous_channels")
	case l.keys["realtime.jwt"] == nil && len(rc.AnonymousChannels) == 0:
		return l.errPath("realtime.allow_anonymous", `true, but with no anonymous_channels and no jwt no one could subscribe; list the channel patterns anyone may read, like anonymous_channels: [posts, "posts/*"]`)
	}
	rs.jwt.AllowAnonymous = rc.AllowAnonymous
	if len(rc.AnonymousChannels) > 0 {
		if _, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{AllowAnonymous: true, AnonymousChannels: rc.AnonymousChannels}); err != nil {
			return l.realtimeError(err)
		}
	}
	rs.jwt.AnonymousChannels = rc.AnonymousChannels
	c.Realtime = rs
	return nil
}

// jwt validates realtime.jwt into rs, without reading its keys.
func (l *loader) jwt(jc *jwtConfig, rs *RealtimeSettings) error {
	if l.keys["realtime.jwt"] == nil {
		return nil
	}
	if jc == nil {
		jc = &jwtConfig{}
	}
	for _, k := range []struct {
		alg, field, what, name, example string
		file, env                       string
	}{
		{"hs256", "HS256Secret", "secret", "hs256_secret", "WALFLOW_JWT_SECRET", jc.HS256SecretFile, jc.HS256SecretEnv},
		{"rs256", "RS256PublicKeyPEM", "public key", "rs256_public_key", "WALFLOW_JWT_RS256_KEY", jc.RS256PublicKeyFile, jc.RS256PublicKeyEnv},
		{"es256", "ES256PublicKeyPEM", "public key", "es256_public_key", "WALFLOW_JWT_ES256_KEY", jc.ES256PublicKeyFile, jc.ES256PublicKeyEnv},
	} {
		fileKey, envKey := "realtime.jwt."+k.name+"_file", "realtime.jwt."+k.name+"_env"
		src := keySource{alg: k.alg, field: k.field, what: k.what}
		switch {
		case k.file != "" && k.env != "":
			return l.errKey(envKey, "set together with %s_file; keep one", k.name)
		case k.file != "":
			src.key, src.file = fileKey, k.file
			if !filepath.IsAbs(src.file) {
				src.file = filepath.Join(filepath.Dir(l.file), src.file)
			}
		case k.env != "":
			if !envName.MatchString(k.env) {
				return l.errPath(envKey, "%q is not an environment variable name; write one like %s", k.env, k.example)
			}
			src.key, src.env = envKey, k.env
		default:
			continue
		}
		rs.keys = append(rs.keys, src)
	}
	if len(jc.JWKSURLs) > 0 {
		if _, err := realtime.NewJWTAuthorizer(realtime.JWTConfig{JWKSURLs: jc.JWKSURLs}); err != nil {
			return l.realtimeError(err)
		}
	}
	rs.jwt.JWKSURLs = jc.JWKSURLs
	if len(rs.keys) == 0 && len(jc.JWKSURLs) == 0 {
		return l.errKey("realtime.jwt", "no key; set hs256_secret_file or hs256_secret_env (a shared secret of at least 32 bytes), or rs256_public_key_file/_env or es256_public_key_file/_env (a PEM public key), or jwks_urls (your identity provider's JWKS, like [https://auth.example.com/.well-known/jwks.json])")
	}
	var err error
	if rs.jwt.JWKSRefreshInterval, err = l.duration("realtime.jwt.jwks_refresh_interval", jc.JWKSRefreshInterval); err != nil {
		return err
	}
	rs.jwt.ClaimName = jc.Claim
	rs.jwt.Issuer = jc.Issuer
	rs.jwt.Audience = jc.Audience
	if s := jc.Leeway; s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return l.errPath("realtime.jwt.leeway", "%q is not a duration from 0; write it like 30s, or 0s to allow no clock skew", s)
		}
		rs.jwt.Leeway = d
		if d == 0 {
			rs.jwt.Leeway = -1 // JWTConfig's zero means the default; negative means none
		}
	}
	return nil
}

// allowedOrigins validates realtime.allowed_origins into g.
func (l *loader) allowedOrigins(origins []string, g *realtime.GatewayConfig) error {
	router, err := channel.NewRouter(nil)
	if err != nil {
		return err
	}
	// Whatever NewGateway refuses, it refuses here, at the entry's index. It starts nothing.
	_, err = realtime.NewGateway(realtime.GatewayConfig{
		Ledger: validationLedger, Router: router, Authorizer: realtime.AllowAll{}, AllowedOrigins: origins,
	})
	if err != nil {
		return l.realtimeError(err)
	}
	g.AllowedOrigins = origins
	return nil
}

// validationLedger is the ledger NewGateway is given to validate the gateway's settings.
var validationLedger = memory.New(nil)

// count parses a whole number from 1; empty gives 0 (the default).
func (l *loader) count(path, s, unit string, def int) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, l.errPath(path, "%q is not a number of %s; write a whole number from 1, like %d (the default)", s, unit, def)
	}
	return n, nil
}

// Resolve reads the JWT keys and returns the engine's RealtimeConfig. Errors are
// configuration errors at the key that names the key's file or variable; they never
// contain a key.
func (rs *RealtimeSettings) Resolve(getenv func(string) string, log *slog.Logger) (*walflow.RealtimeConfig, error) {
	l := rs.l
	jc := rs.jwt
	jc.Logger = log
	for _, k := range rs.keys {
		b, err := k.read(l, getenv)
		if err != nil {
			return nil, err
		}
		switch k.alg {
		case "hs256":
			jc.HS256Secret = b
		case "rs256":
			jc.RS256PublicKeyPEM = b
		case "es256":
			jc.ES256PublicKeyPEM = b
		}
	}
	auth, err := realtime.NewJWTAuthorizer(jc)
	if err != nil {
		if ce := (*realtime.ConfigError)(nil); errors.As(err, &ce) && ce.Config == "JWTConfig" {
			for _, k := range rs.keys {
				if ce.Field == k.field {
					return nil, l.errKey(k.key, "the %s from %s: %v", k.what, k.from(), ce.Err)
				}
			}
		}
		return nil, l.realtimeError(err)
	}
	gc := rs.gateway
	gc.Authorizer = auth
	return &walflow.RealtimeConfig{Path: rs.path, Gateway: gc}, nil
}

// realtimeKeys are the keys of walflow.yaml that set the realtime settings, by
// realtime.ConfigError Config and Field. The JWT keys read from files or variables are
// mapped by resolve, which knows where each came from.
var realtimeKeys = map[[2]string]string{
	{"GatewayConfig", "AllowedOrigins"}:  "realtime.allowed_origins",
	{"JWTConfig", ""}:                    "realtime.jwt",
	{"JWTConfig", "JWKSURLs"}:            "realtime.jwt.jwks_urls",
	{"JWTConfig", "JWKSRefreshInterval"}: "realtime.jwt.jwks_refresh_interval",
	{"JWTConfig", "AnonymousChannels"}:   "realtime.anonymous_channels",
}

// realtimeError reports a realtime.ConfigError at the key that set the setting (its
// entry, for a list), with the problem alone; any other error at the realtime key.
func (l *loader) realtimeError(err error) error {
	ce := (*realtime.ConfigError)(nil)
	if !errors.As(err, &ce) {
		return l.errKey("realtime", "%v", err)
	}
	key, ok := realtimeKeys[[2]string{ce.Config, ce.Field}]
	if !ok {
		return l.errKey("realtime", "%v", err)
	}
	if ce.Index >= 0 {
		return l.errPath(fmt.Sprintf("%s[%d]", key, ce.Index), "%v", ce.Err)
	}
	return l.errPath(key, "%v", ce.Err)
}

// from names where the key is read from, for errors and logs.
func (k keySource) from() string {
	if k.file != "" {
		return k.file
	}
	return "$" + k.env
}

// read returns the key. A file's one trailing newline is dropped, as editors and echo add it.
func (k keySource) read(l *loader, getenv func(string) string) ([]byte, error) {
	if k.env != "" {
		v := getenv(k.env)
		if v == "" {
			return nil, l.errKey(k.key, "the environment variable %s is not set or empty; export the %s in it, or use %s_file", k.env, k.what, strings.TrimSuffix(k.key, "_env"))
		}
		return []byte(v), nil
	}
	b, err := os.ReadFile(k.file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, l.errKey(k.key, "read %s: %v; write the %s to that file, or fix the path", k.file, err, k.what)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	if len(b) == 0 {
		return nil, l.errKey(k.key, "%s is empty; write the %s to it", k.file, k.what)
	}
	return b, nil
}

// Summary describes the gateway's authorization for the start-up log, without any key.
func (rs *RealtimeSettings) Summary() string {
	var parts []string
	for _, k := range rs.keys {
		parts = append(parts, k.alg+" from "+k.from())
	}
	for _, s := range rs.jwt.JWKSURLs {
		if u, err := url.Parse(s); err == nil {
			s = u.Redacted()
		}
		parts = append(parts, "jwks from "+s)
	}
	if rs.jwt.AllowAnonymous {
		parts = append(parts, "anonymous: "+strings.Join(rs.jwt.AnonymousChannels, " "))
	}
	return strings.Join(parts, ", ")
}
