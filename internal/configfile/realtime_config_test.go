package configfile

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/realtime"
)

// testSecret is an HS256 secret for tests (32 bytes).
const testSecret = "0123456789abcdef0123456789abcdef"

// hs256Token signs claims with secret.
func hs256Token(t *testing.T, secret string, claims map[string]any) string {
	t.Helper()
	enc := base64.RawURLEncoding
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	signed := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(signed))
	return signed + "." + enc.EncodeToString(m.Sum(nil))
}

// authorize asks a's decision for a request to ch with token (none when "").
func authorize(t *testing.T, a realtime.Authorizer, token, ch string) realtime.Decision {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/?channel="+ch, nil)
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	c, err := channel.Parse(ch)
	if err != nil {
		t.Fatal(err)
	}
	return a.Authorize(r, c)
}

// parseRealtime parses a file of db plus yaml at dir/walflow.yaml and resolves its realtime
// section.
func parseRealtime(t *testing.T, dir, yaml string, getenv func(string) string) (*Config, error) {
	t.Helper()
	c, err := parseConfig(filepath.Join(dir, "walflow.yaml"), []byte("database_url: postgres://app@localhost/app\n"+yaml), getenv)
	if err != nil {
		return nil, err
	}
	if c.Realtime == nil {
		t.Fatal("no realtime settings")
	}
	if c.Engine.Realtime, err = c.Realtime.Resolve(getenv, slog.New(slog.DiscardHandler)); err != nil {
		return nil, err
	}
	return c, nil
}

func TestParseConfigRealtime(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A trailing newline, as echo writes it, is not part of the secret.
	if err := os.WriteFile(filepath.Join(dir, "jwt_secret"), []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := parseRealtime(t, dir, `
realtime:
  path: /live
  allow_anonymous: true
  anonymous_channels: [posts, "posts/*"]
  allowed_origins: ["https://app.example.com", "http://localhost:*"]
  max_connections: 100
  max_channels: 4
  buffer: 64
  heartbeat: 5s
  flush_interval: 25ms
  write_timeout: 2s
  resume_wait: 3s
  jwt:
    hs256_secret_file: jwt_secret
    claim: grants
    issuer: https://auth.example.com
    audience: walflow
    leeway: 0s
`, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	rc := c.Engine.Realtime
	g := rc.Gateway
	if rc.Path != "/live/" || g.MaxConnections != 100 || g.MaxChannels != 4 || g.Buffer != 64 ||
		g.Heartbeat != 5*time.Second || g.WriteTimeout != 2*time.Second || g.FlushInterval != 25*time.Millisecond ||
		g.ResumeWait != 3*time.Second || strings.Join(g.AllowedOrigins, " ") != "https://app.example.com http://localhost:*" {
		t.Errorf("realtime = %+v", rc)
	}
	a := g.Authorizer
	if _, ok := a.(*realtime.JWTAuthorizer); !ok {
		t.Fatalf("Authorizer is %T, want *realtime.JWTAuthorizer", a)
	}
	claims := func(extra map[string]any) map[string]any {
		m := map[string]any{"iss": "https://auth.example.com", "aud": "walflow", "grants": []string{"posts/*/comments"}, "exp": time.Now().Add(time.Hour).Unix()}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, tt := range []struct {
		name, token, ch string
		status          int // 0: allowed
	}{
		{"token", hs256Token(t, testSecret, claims(nil)), "posts/42/comments", 0},
		{"anonymous", "", "posts/42", 0},
		{"anonymous not covered", "", "comments", http.StatusUnauthorized},
		{"channel not granted", hs256Token(t, testSecret, claims(nil)), "comments", http.StatusForbidden},
		{"secret with the newline", hs256Token(t, testSecret+"\n", claims(nil)), "posts/42/comments", http.StatusUnauthorized},
		{"other issuer", hs256Token(t, testSecret, claims(map[string]any{"iss": "x"})), "posts/42/comments", http.StatusUnauthorized},
		{"other audience", hs256Token(t, testSecret, claims(map[string]any{"aud": "x"})), "posts/42/comments", http.StatusUnauthorized},
		{"claim name", hs256Token(t, testSecret, claims(map[string]any{"grants": nil, "channels": []string{"posts/*/comments"}})), "posts/42/comments", http.StatusForbidden},
		// leeway: 0s allows no clock skew.
		{"just expired", hs256Token(t, testSecret, claims(map[string]any{"exp": time.Now().Add(-2 * time.Second).Unix()})), "posts/42/comments", http.StatusUnauthorized},
	} {
		d := authorize(t, a, tt.token, tt.ch)
		if d.Allow != (tt.status == 0) || d.Status != tt.status {
			t.Errorf("%s: %+v, want status %d", tt.name, d, tt.status)
		}
	}

	// The secret from the environment, with the defaults of everything else.
	c, err = parseRealtime(t, dir, "realtime:\n  jwt: {hs256_secret_env: WALFLOW_JWT_SECRET}\n", envOf("WALFLOW_JWT_SECRET", testSecret))
	if err != nil {
		t.Fatal(err)
	}
	rc = c.Engine.Realtime
	if rc.Path != "/realtime/" || rc.Gateway.MaxConnections != 0 || rc.Gateway.Heartbeat != 0 {
		t.Errorf("defaults: %+v", rc)
	}
	tok := hs256Token(t, testSecret, map[string]any{"channels": []string{"posts"}})
	if d := authorize(t, rc.Gateway.Authorizer, tok, "posts"); !d.Allow {
		t.Errorf("token signed with the secret from the environment: %+v", d)
	}
	if d := authorize(t, rc.Gateway.Authorizer, "", "posts"); d.Status != http.StatusUnauthorized {
		t.Errorf("no token without allow_anonymous: %+v, want 401", d)
	}

	// Anonymous only: no jwt, only the anonymous channels.
	c, err = parseRealtime(t, dir, "realtime:\n  allow_anonymous: true\n  anonymous_channels: [\"posts/*\"]\n", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	a = c.Engine.Realtime.Gateway.Authorizer
	if d := authorize(t, a, "", "posts/1"); !d.Allow {
		t.Errorf("anonymous posts/1: %+v", d)
	}
	if d := authorize(t, a, "", "posts"); d.Allow {
		t.Errorf("anonymous posts: %+v, want denied", d)
	}
	if d := authorize(t, a, tok, "posts"); d.Allow {
		t.Errorf("token without any key: %+v, want denied", d)
	}
	if s := c.Realtime.Summary(); s != "anonymous: posts/*" {
		t.Errorf("summary = %q", s)
	}
}

// TestParseConfigRealtimeJWKS checks realtime.jwt.jwks_urls: tokens signed with a key of a
// JWKS served on loopback are verified by the kid in their header.
func TestParseConfigRealtimeJWKS(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := key.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{map[string]any{
			"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(pub[1:33]), "y": b64(pub[33:]),
		}}})
	}))
	defer srv.Close()
	c, err := parseRealtime(t, t.TempDir(), "realtime:\n  jwt:\n    jwks_urls: [\""+srv.URL+"/jwks.json\"]\n    jwks_refresh_interval: 5m\n", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Realtime.jwt.JWKSRefreshInterval; got != 5*time.Minute {
		t.Errorf("JWKSRefreshInterval = %v, want 5m", got)
	}
	if s := c.Realtime.Summary(); s != "jwks from "+srv.URL+"/jwks.json" {
		t.Errorf("summary = %q", s)
	}
	sign := func(kid string, k *ecdsa.PrivateKey) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"channels": []string{"posts"}, "exp": time.Now().Add(time.Hour).Unix()})
		tok.Header["kid"] = kid
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a := c.Engine.Realtime.Gateway.Authorizer
	if d := authorize(t, a, sign("k1", key), "posts"); !d.Allow {
		t.Errorf("token signed with the JWKS key: %+v", d)
	}
	if d := authorize(t, a, sign("k1", other), "posts"); d.Allow || d.Status != http.StatusUnauthorized {
		t.Errorf("token signed with another key: %+v, want 401", d)
	}
	if d := authorize(t, a, hs256Token(t, testSecret, map[string]any{"channels": []string{"posts"}}), "posts"); d.Allow {
		t.Errorf("HS256 token with only a JWKS: %+v, want denied", d)
	}
}

// TestRealtimeSecretNotShown checks that neither errors nor dumps of the configuration
// show a key.
func TestRealtimeSecretNotShown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const secret = "s3cret-s3cret-s3cret-s3cret-s3cret"
	for _, yaml := range []string{
		"realtime:\n  jwt:\n    hs256_secret: " + secret + "\n",
		"realtime:\n  jwt: {hs256_secret: " + secret + "}\n",
		"realtime:\n  jwt:\n    hs256_secret_file: /x\n    hs256_secret: " + secret + "\n",
	} {
		_, err := parseRealtime(t, dir, yaml, noEnv)
		want := "realtime.jwt.hs256_secret: a secret is never written in the configuration file; put it in a file and set hs256_secret_file: /run/secrets/walflow_jwt, or in an environment variable and set hs256_secret_env: WALFLOW_JWT_SECRET"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("inline secret %q: %v\nwant %q", yaml, err, want)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows the secret: %v", err)
		}
	}

	// A secret too short is reported by length.
	_, err := parseRealtime(t, dir, "realtime:\n  jwt: {hs256_secret_env: S}\n", envOf("S", "short-s3cret"))
	if err == nil || !strings.Contains(err.Error(), "realtime.jwt.hs256_secret_env: the secret from $S: 12 bytes are too few; use at least 32 random bytes") ||
		strings.Contains(err.Error(), "short-s3cret") {
		t.Errorf("short secret: %v", err)
	}

	c, err := parseRealtime(t, dir, "realtime:\n  jwt: {hs256_secret_env: S}\n", envOf("S", secret))
	if err != nil {
		t.Fatal(err)
	}
	for _, dump := range []string{
		fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%+v", c.Engine), fmt.Sprintf("%#v", c.Engine),
		fmt.Sprintf("%+v", *c.Engine.Realtime), fmt.Sprintf("%#v", *c.Engine.Realtime), fmt.Sprintf("%+v", c.Realtime.Summary()),
	} {
		if strings.Contains(dump, secret) || strings.Contains(dump, fmt.Sprint([]byte(secret))) {
			t.Errorf("a dump of the configuration shows the secret: %s", dump)
		}
	}
}

func TestParseConfigRealtimeErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	empty := filepath.Join(dir, "empty")
	pem := filepath.Join(dir, "key.pem")
	for name, content := range map[string]string{short: "too-short", empty: "\n", pem: "not a key"} {
		if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const jwt = "realtime:\n  jwt: {hs256_secret_env: S}\n"
	env := envOf("S", testSecret, "EMPTY", "")
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error, in order
	}{
		{"no jwt and not anonymous", "realtime:\n  path: /live/\n", []string{"walflow.yaml:2: realtime: no jwt, and allow_anonymous is not true", "configure realtime.jwt", "or set allow_anonymous: true", "anyone who reaches http.addr reads the anonymous_channels"}},
		{"empty realtime", "realtime:\n", []string{"walflow.yaml:2: realtime: no jwt, and allow_anonymous is not true"}},
		{"no http", "http: {addr: \"\"}\n" + jwt, []string{`walflow.yaml:3: realtime: set, but http.addr is "" (no HTTP server)`}},
		{"unknown key", "realtime:\n  max_conections: 5\n", []string{"walflow.yaml:3: realtime.max_conections: unknown key (did you mean max_connections?); the keys of realtime are path, allow_anonymous"}},
		{"unknown jwt key", "realtime:\n  jwt:\n    secret_file: x\n", []string{"walflow.yaml:4: realtime.jwt.secret_file: unknown key", "the keys of realtime.jwt are hs256_secret_file"}},
		{"inline public key", "realtime:\n  jwt:\n    rs256_public_key: x\n", []string{"walflow.yaml:4: realtime.jwt.rs256_public_key: keys are read from a file or an environment variable; set rs256_public_key_file"}},
		{"bad path", "realtime:\n  path: live\n" + "  jwt: {hs256_secret_env: S}\n", []string{`walflow.yaml:3: realtime.path: "live" is not a URL path prefix; write it like /realtime/`}},
		{"path with pattern", "realtime:\n  path: /{x}/\n" + "  jwt: {hs256_secret_env: S}\n", []string{`realtime.path: "/{x}/" is not a URL path prefix`}},
		{"bad max_connections", "realtime:\n  max_connections: many\n", []string{`walflow.yaml:3: realtime.max_connections: "many" is not a number of streams; write a whole number from 1, like 10000 (the default)`}},
		{"zero max_channels", "realtime:\n  max_channels: 0\n", []string{`realtime.max_channels: "0" is not a number of channels per connection`}},
		{"negative buffer", "realtime:\n  buffer: -1\n", []string{`realtime.buffer: "-1" is not a number of events`}},
		{"bad heartbeat", "realtime:\n  heartbeat: 15\n", []string{`walflow.yaml:3: realtime.heartbeat: "15" is not a duration; write it like 10s`}},
		{"negative write_timeout", "realtime:\n  write_timeout: -1s\n", []string{`realtime.write_timeout: "-1s" is not positive`}},
		{"origin with a path", "realtime:\n  allowed_origins: [app.example.com, \"https://app.example.com/x\"]\n", []string{`walflow.yaml:3: realtime.allowed_origins[1]: "https://app.example.com/x" is not an origin pattern; write host[:port] or scheme://host[:port]`}},
		{"bad origin pattern", "realtime:\n  allowed_origins:\n    - \"[app\"\n", []string{`walflow.yaml:4: realtime.allowed_origins[0]: "[app": syntax error in pattern`}},
		{"allowed_origins not a list", "realtime:\n  allowed_origins: https://app.example.com\n", []string{`realtime.allowed_origins: want a list of origin patterns like ["https://app.example.com", "http://localhost:*"], found "https://app.example.com"`}},
		{"bad allow_anonymous", "realtime:\n  allow_anonymous: yes please\n", []string{`realtime.allow_anonymous: want true or false, found "yes please"`}},
		{"anonymous_channels without allow_anonymous", "realtime:\n  anonymous_channels: [posts]\n" + "  jwt: {hs256_secret_env: S}\n", []string{"walflow.yaml:3: realtime.anonymous_channels: set, but allow_anonymous is not true; set allow_anonymous: true"}},
		{"anonymous without channels", "realtime:\n  allow_anonymous: true\n", []string{"walflow.yaml:3: realtime.allow_anonymous: true, but with no anonymous_channels and no jwt no one could subscribe"}},
		{"bad anonymous channel", "realtime:\n  allow_anonymous: true\n  anonymous_channels: [posts, \"post*\"]\n", []string{`walflow.yaml:4: realtime.anonymous_channels[1]: "post*" is not a channel pattern: `}},
		{"anonymous placeholder", "realtime:\n  allow_anonymous: true\n  anonymous_channels:\n    - users/{sub}\n", []string{`walflow.yaml:5: realtime.anonymous_channels[0]: "users/{sub}" is not a channel pattern`}},
		{"anonymous_channels not a list", "realtime:\n  allow_anonymous: true\n  anonymous_channels: posts\n", []string{`realtime.anonymous_channels: want a list of channel patterns like [posts, "posts/*"], found "posts"`}},
		{"jwt without key", "realtime:\n  jwt: {claim: channels}\n", []string{"walflow.yaml:3: realtime.jwt: no key; set hs256_secret_file or hs256_secret_env", "or jwks_urls"}},
		{"empty jwt", "realtime:\n  jwt:\n", []string{"realtime.jwt: no key"}},
		{"file and env", "realtime:\n  jwt:\n    hs256_secret_file: /x\n    hs256_secret_env: S\n", []string{"walflow.yaml:5: realtime.jwt.hs256_secret_env: set together with hs256_secret_file; keep one"}},
		{"bad env name", "realtime:\n  jwt: {es256_public_key_env: my-key}\n", []string{`realtime.jwt.es256_public_key_env: "my-key" is not an environment variable name; write one like WALFLOW_JWT_ES256_KEY`}},
		{"bad leeway", "realtime:\n  jwt: {hs256_secret_env: S, leeway: soon}\n", []string{`realtime.jwt.leeway: "soon" is not a duration from 0`}},
		{"jwks url not https", "realtime:\n  jwt:\n    jwks_urls:\n      - https://auth.example.com/jwks\n      - http://auth.example.com/jwks\n", []string{`walflow.yaml:6: realtime.jwt.jwks_urls[1]: "http://auth.example.com/jwks": a JWKS URL must be https`}},
		{"jwks url not a URL", "realtime:\n  jwt: {jwks_urls: [auth.example.com]}\n", []string{`walflow.yaml:3: realtime.jwt.jwks_urls[0]: "auth.example.com" is not a URL; write it like https://`}},
		{"jwks_urls not a list", "realtime:\n  jwt: {jwks_urls: https://auth.example.com/jwks}\n", []string{`realtime.jwt.jwks_urls: want a list of JWKS URLs`}},
		{"bad jwks_refresh_interval", "realtime:\n  jwt: {jwks_urls: [\"https://a.example/jwks\"], jwks_refresh_interval: hourly}\n", []string{`walflow.yaml:3: realtime.jwt.jwks_refresh_interval: "hourly" is not a duration`}},
		{"jwt not a mapping", "realtime:\n  jwt: S\n", []string{`walflow.yaml:3: realtime.jwt: want a mapping of keys, found "S"`}},
		// Resolving: the keys are read by run only.
		{"missing file", "realtime:\n  jwt:\n    hs256_secret_file: nope/secret\n", []string{"walflow.yaml:4: realtime.jwt.hs256_secret_file: read " + filepath.Join(dir, "nope", "secret") + ": no such file or directory; write the secret to that file"}},
		{"empty file", "realtime:\n  jwt: {hs256_secret_file: " + empty + "}\n", []string{"realtime.jwt.hs256_secret_file: " + empty + " is empty; write the secret to it"}},
		{"short secret file", "realtime:\n  jwt: {hs256_secret_file: " + short + "}\n", []string{"realtime.jwt.hs256_secret_file: the secret from " + short + ": 9 bytes are too few; use at least 32 random bytes"}},
		{"unset env", "realtime:\n  jwt: {hs256_secret_env: WALFLOW_JWT_SECRET}\n", []string{"walflow.yaml:3: realtime.jwt.hs256_secret_env: the environment variable WALFLOW_JWT_SECRET is not set or empty; export the secret in it, or use realtime.jwt.hs256_secret_file"}},
		{"empty env", "realtime:\n  jwt: {hs256_secret_env: EMPTY}\n", []string{"the environment variable EMPTY is not set or empty"}},
		{"bad public key", "realtime:\n  jwt: {rs256_public_key_file: " + pem + "}\n", []string{"realtime.jwt.rs256_public_key_file: the public key from " + pem + ": no PEM block found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseRealtime(t, dir, tt.yaml, env)
			if err == nil {
				t.Fatalf("parsed, want an error with %q", tt.want)
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
			if strings.Contains(msg, testSecret) {
				t.Errorf("error shows the secret: %s", msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
		})
	}
}

// TestLoadReadsNoKey checks that Load does not read the keys (status and the operator
// commands load the file without them); Resolve does.
func TestLoadReadsNoKey(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	if err := os.WriteFile(path, []byte("database_url: postgres://app@localhost/app\nrealtime:\n  jwt: {hs256_secret_file: /nonexistent/secret}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, noEnv)
	if err != nil {
		t.Fatalf("Load read the key: %v", err)
	}
	if c.Engine.Realtime != nil {
		t.Errorf("Load set Engine.Realtime")
	}
	_, err = c.Realtime.Resolve(noEnv, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "realtime.jwt.hs256_secret_file: read /nonexistent/secret: no such file or directory") {
		t.Errorf("Resolve with a missing secret file: %v", err)
	}
}

// TestExampleRealtimeConfig loads the commented-out realtime section of
// walflow.example.yaml, uncommented, so it cannot drift from what run accepts.
func TestExampleRealtimeConfig(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("..", "..", "walflow.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n# realtime:\n")
	if !ok {
		t.Fatal("walflow.example.yaml has no # realtime: section")
	}
	var b strings.Builder
	b.WriteString("realtime:\n")
	for line := range strings.Lines(section) {
		if !strings.HasPrefix(line, "#") {
			t.Fatalf("line %q of the realtime section is not commented out", line)
		}
		b.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
	}
	c, err := parseConfig("walflow.example.yaml", []byte(b.String()), envOf("DATABASE_URL", "postgres://app@localhost/app"))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if c.Realtime == nil || c.Realtime.path != "/realtime/" || len(c.Realtime.keys) != 1 {
		t.Errorf("realtime = %+v", c.Realtime)
	}
}
