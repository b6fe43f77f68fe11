package realtime

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// jwksServer serves a JWK Set that a test replaces to rotate keys, on loopback, and counts
// the fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []map[string]any
	status  int
	fetches int
}

func newJWKSServer(t testing.TB, keys ...map[string]any) *jwksServer {
	t.Helper()
	s := &jwksServer{keys: keys, status: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.fetches++
		if s.status != http.StatusOK {
			http.Error(w, "down", s.status)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": s.keys})
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(status int, keys ...map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.keys = status, keys
}

func (s *jwksServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(kid string, k *rsa.PublicKey) map[string]any {
	return map[string]any{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
		"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(kid string, k *ecdsa.PublicKey) map[string]any {
	b, err := k.Bytes()
	if err != nil {
		panic(err)
	}
	return map[string]any{"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(b[1:33]), "y": b64(b[33:])}
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testClock is a NowFunc a test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func kidToken(t testing.TB, alg, kid string, key any) string {
	t.Helper()
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	return signTokenHeader(t, h, key, claims{"exp": testNow.Add(24 * time.Hour).Unix(), "channels": []string{"comments"}})
}

func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	rk := testRSAKey(t)
	ek := newECKey(t)
	srv := newJWKSServer(t, rsaJWK("a", &rk.PublicKey))
	clock := &testClock{now: testNow}
	a, err := NewJWTAuthorizer(JWTConfig{
		JWKSURLs:               []string{srv.URL + "/jwks.json"},
		JWKSRefreshInterval:    10 * time.Minute,
		JWKSMinRefreshInterval: time.Minute,
		NowFunc:                clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	check := func(step, tok string, allow bool, reason string) {
		t.Helper()
		d, n := subscribe(t, a, bearer(tok), "comments")
		if (n == 1) != allow || (!allow && d.Reason != reason) {
			t.Fatalf("%s: %+v, want allow=%v reason %q", step, d, allow, reason)
		}
	}
	fetches := func(step string, want int) {
		t.Helper()
		if got := srv.count(); got != want {
			t.Fatalf("%s: %d fetches, want %d", step, got, want)
		}
	}
	if n := srv.count(); n != 0 {
		t.Fatalf("NewJWTAuthorizer fetched %d times; keys are fetched on the first token", n)
	}
	tokA := kidToken(t, "RS256", "a", rk)
	tokB := kidToken(t, "ES256", "b", ek)
	check("key a", tokA, true, "")
	check("key a again", tokA, true, "")
	fetches("first token", 1)

	// The issuer adds key b. Within the minimum interval an unknown kid fetches nothing.
	srv.set(http.StatusOK, rsaJWK("a", &rk.PublicKey), ecJWK("b", &ek.PublicKey))
	check("kid b too soon", tokB, false, reasonUnknownKey)
	fetches("kid b too soon", 1)
	clock.Add(time.Minute)
	check("kid b", tokB, true, "")
	fetches("kid b", 2)

	// A flood of unknown kids fetches at most once per minimum interval.
	clock.Add(time.Minute)
	for i := range 50 {
		check("unknown kid", kidToken(t, "ES256", "nope"+string(rune('a'+i%26)), ek), false, reasonUnknownKey)
	}
	fetches("flood", 3)

	// Key a is retired: it still verifies until the set is stale, then not.
	srv.set(http.StatusOK, ecJWK("b", &ek.PublicKey))
	check("a before refresh", tokA, true, "")
	fetches("a before refresh", 3)
	clock.Add(10 * time.Minute)
	check("a after refresh", tokA, false, reasonUnknownKey)
	fetches("a after refresh", 4)
	check("b after refresh", tokB, true, "")

	// Kid selection: a token must verify with the key of its kid, of its algorithm.
	other := newECKey(t)
	check("kid b signed by another key", kidToken(t, "ES256", "b", other), false, reasonBadSignature)
	check("no kid, signed by b", kidToken(t, "ES256", "", ek), true, "")
	check("no kid, another key", kidToken(t, "ES256", "", other), false, reasonBadSignature)
	check("kid b as RS256", kidToken(t, "RS256", "b", rk), false, reasonUnknownKey)
	// Algorithm confusion: the JWKS never enables HS256, whatever the token is signed with.
	pub, _ := json.Marshal(ecJWK("b", &ek.PublicKey))
	check("HS256 with the JWK as secret", kidToken(t, "HS256", "b", pub), false, reasonBadAlg)
	check("alg none", kidToken(t, "none", "b", nil), false, reasonBadAlg)
}

// A fetch that fails keeps the keys already held, and the next one is rate-limited too.
func TestJWKSServerDown(t *testing.T) {
	t.Parallel()
	ek := newECKey(t)
	srv := newJWKSServer(t, ecJWK("b", &ek.PublicKey))
	clock := &testClock{now: testNow}
	var logs bytes.Buffer
	var logMu sync.Mutex
	a, err := NewJWTAuthorizer(JWTConfig{
		JWKSURLs:               []string{srv.URL},
		JWKSRefreshInterval:    time.Minute,
		JWKSMinRefreshInterval: time.Minute,
		NowFunc:                clock.Now,
		Logger:                 slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := kidToken(t, "ES256", "b", ek)
	if _, n := subscribe(t, a, bearer(tok), "comments"); n != 1 {
		t.Fatal("denied with the server up")
	}
	srv.set(http.StatusInternalServerError)
	clock.Add(time.Minute)
	for range 5 {
		if d, n := subscribe(t, a, bearer(tok), "comments"); n != 1 {
			t.Fatalf("denied while the server is down: %+v", d)
		}
	}
	if got := srv.count(); got != 2 {
		t.Fatalf("%d fetches, want 2 (one at start, one refresh)", got)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "jwks fetch failed") || !strings.Contains(logs.String(), "500") {
		t.Fatalf("log has no failed fetch:\n%s", logs.String())
	}
}

// A JWKS that cannot be fetched at all denies tokens without panicking or waiting.
func TestJWKSNeverFetched(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t)
	srv.set(http.StatusNotFound)
	a, err := NewJWTAuthorizer(JWTConfig{JWKSURLs: []string{srv.URL}, NowFunc: func() time.Time { return testNow }})
	if err != nil {
		t.Fatal(err)
	}
	d, n := subscribe(t, a, bearer(kidToken(t, "ES256", "b", newECKey(t))), "comments")
	if n != 0 || d.Reason != reasonUnknownKey {
		t.Fatalf("%+v, want denied with %q", d, reasonUnknownKey)
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestJWKSConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ url, want string }{
		{"http://auth.example.com/jwks.json", "must be https"},
		{"http://10.0.0.1/jwks.json", "must be https"},
		{"ftp://localhost/jwks.json", "must be https"},
		{"/jwks.json", "not a URL"},
		{"::", "not a URL"},
	} {
		_, err := NewJWTAuthorizer(JWTConfig{JWKSURLs: []string{"https://ok.example/jwks", tt.url}})
		if err == nil || !strings.Contains(err.Error(), "JWKSURLs[1]") || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want one naming JWKSURLs[1] and %q", tt.url, err, tt.want)
		}
	}
	for _, u := range []string{"https://auth.example.com/jwks.json", "http://localhost:8080/jwks", "http://127.0.0.1/jwks", "http://[::1]:9/jwks"} {
		if _, err := NewJWTAuthorizer(JWTConfig{JWKSURLs: []string{u}}); err != nil {
			t.Errorf("%q: %v", u, err)
		}
	}
}

func TestParseJWKS(t *testing.T) {
	t.Parallel()
	rk := testRSAKey(t)
	ek := newECKey(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	with := func(m map[string]any, k string, v any) map[string]any {
		out := map[string]any{}
		for kk, vv := range m {
			out[kk] = vv
		}
		out[k] = v
		return out
	}
	good := rsaJWK("r", &rk.PublicKey)
	offCurve := ecJWK("e", &ek.PublicKey)
	offCurve["y"] = offCurve["x"]
	bad := []struct {
		name string
		key  map[string]any
		want string
	}{
		{"private key", with(good, "d", "AQAB"), "private key"},
		{"encryption key", with(good, "use", "enc"), "use"},
		{"RS512", with(good, "alg", "RS512"), "alg"},
		{"small RSA", rsaJWK("s", &small.PublicKey), "bits"},
		{"even exponent", with(good, "e", b64([]byte{2})), "exponent"},
		{"bad n", with(good, "n", "***"), "invalid n"},
		{"P-384", with(ecJWK("e", &ek.PublicKey), "crv", "P-384"), "curve"},
		{"point not on curve", offCurve, "P-256"},
		{"oct", map[string]any{"kty": "oct", "k": b64(testSecret)}, "kty"},
	}
	for _, tt := range bad {
		doc, _ := json.Marshal(map[string]any{"keys": []any{tt.key, ecJWK("ok", &ek.PublicKey)}})
		var reasons []string
		set, err := parseJWKS(doc, func(i int, err error) { reasons = append(reasons, err.Error()) })
		if err != nil || len(set) != 1 || set[0].kid != "ok" {
			t.Errorf("%s: set %v, error %v; want only the good key", tt.name, set, err)
			continue
		}
		if len(reasons) != 1 || !strings.Contains(reasons[0], tt.want) {
			t.Errorf("%s: skipped because %q, want a reason with %q", tt.name, reasons, tt.want)
		}
	}
	for _, doc := range []string{`{"keys":[]}`, `[]`, `{"keys":[{"kty":"RSA"}]}`, `not json`} {
		if _, err := parseJWKS([]byte(doc), func(int, error) {}); err == nil {
			t.Errorf("%s: parsed, want an error", doc)
		}
	}
}
