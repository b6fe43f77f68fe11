package realtime

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walflow/walflow/channel"
)

var (
	testNow    = time.Unix(1_800_000_000, 0)
	testSecret = []byte("0123456789abcdef0123456789abcdef")
)

type claims = map[string]any

// signToken builds a compact JWT. key is []byte (HS256), *rsa.PrivateKey (RS256),
// *ecdsa.PrivateKey (ES256) or nil (none, empty signature).
func signToken(t testing.TB, alg string, key any, c claims) string {
	t.Helper()
	return signTokenHeader(t, map[string]any{"alg": alg, "typ": "JWT"}, key, c)
}

// signTokenHeader is signToken with the whole header given.
func signTokenHeader(t testing.TB, header map[string]any, key any, c claims) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString(h) + "." + enc.EncodeToString(p)
	digest := sha256.Sum256([]byte(signed))
	var sig []byte
	switch k := key.(type) {
	case nil:
	case []byte:
		m := hmac.New(sha256.New, k)
		m.Write([]byte(signed))
		sig = m.Sum(nil)
	case *rsa.PrivateKey:
		sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:])
		if err != nil {
			t.Fatal(err)
		}
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
	default:
		t.Fatalf("signToken: unsupported key %T", key)
	}
	return signed + "." + enc.EncodeToString(sig)
}

func publicPEM(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

func testRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsaKey = k
	})
	return rsaKey
}

func newHS(t *testing.T, mod func(*JWTConfig)) *JWTAuthorizer {
	t.Helper()
	cfg := JWTConfig{HS256Secret: testSecret, NowFunc: func() time.Time { return testNow }}
	if mod != nil {
		mod(&cfg)
	}
	a, err := NewJWTAuthorizer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func bearer(tok string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/stream", nil)
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	return r
}

// subscribe parses raw as the gateway does and authorizes it; an unparsable channel is
// denied before any authorizer runs. It returns the number of messages that would flow:
// 1 when allowed, 0 when denied.
func subscribe(t *testing.T, a Authorizer, r *http.Request, raw string) (Decision, int) {
	t.Helper()
	ch, err := channel.Parse(raw)
	if err != nil {
		if !errors.Is(err, channel.ErrInvalid) {
			t.Fatalf("Parse(%q): %v does not match ErrInvalid", raw, err)
		}
		return Decision{Status: http.StatusBadRequest, Reason: reasonInvalidChannel}, 0
	}
	d := a.Authorize(r, ch)
	if d.Allow {
		return d, 1
	}
	if d.Status != http.StatusUnauthorized && d.Status != http.StatusForbidden {
		t.Errorf("denial of %q has status %d, want 401 or 403", raw, d.Status)
	}
	if d.Reason == "" {
		t.Errorf("denial of %q has no reason", raw)
	}
	return d, 0
}

func valid(c claims) claims {
	out := claims{"exp": testNow.Add(time.Hour).Unix()}
	for k, v := range c {
		out[k] = v
	}
	return out
}

func TestJWTPatterns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		claims   claims
		channel  string
		wantCode int // 0 = allowed, 400 = channel does not parse
	}{
		{"unscoped allowed", claims{"channels": []string{"comments"}}, "comments", 0},
		{"unscoped denied", claims{"channels": []string{"posts"}}, "comments", 403},
		{"unscoped not covered by direct", claims{"channels": []string{"comments/7"}}, "comments", 403},
		{"direct allowed", claims{"channels": []string{"comments/7"}}, "comments/7", 0},
		{"direct other id", claims{"channels": []string{"comments/7"}}, "comments/8", 403},
		{"direct wildcard", claims{"channels": []string{"comments/*"}}, "comments/8", 0},
		{"direct wildcard not unscoped", claims{"channels": []string{"comments/*"}}, "comments", 403},
		{"scoped allowed", claims{"channels": []string{"posts/42/comments"}}, "posts/42/comments", 0},
		{"scoped wildcard", claims{"channels": []string{"posts/*/comments"}}, "posts/43/comments", 0},
		{"token for another scope", claims{"channels": []string{"posts/42/comments"}}, "posts/43/comments", 403},
		{"wildcard is one segment", claims{"channels": []string{"posts/*"}}, "posts/42/comments", 403},
		{"wildcard not across scopes", claims{"channels": []string{"*/comments"}}, "users/1/posts/42/comments", 403},
		{"sub allowed", claims{"sub": "42", "channels": []string{"post_with_comments_counts/{sub}"}}, "post_with_comments_counts/42", 0},
		{"sub other id", claims{"sub": "42", "channels": []string{"post_with_comments_counts/{sub}"}}, "post_with_comments_counts/43", 403},
		{"custom claim", claims{"org": "7", "channels": []string{"orgs/{org}/posts"}}, "orgs/7/posts", 0},
		{"missing claim", claims{"channels": []string{"orgs/{org}/posts"}}, "orgs/7/posts", 403},
		{"numeric claim", claims{"org": 7, "channels": []string{"orgs/{org}/posts"}}, "orgs/7/posts", 403},
		{"dot dot", claims{"channels": []string{"posts/42/comments"}}, "posts/42/../43/comments", 400},
		{"dot dot in scope wildcard", claims{"channels": []string{"posts/*/comments"}}, "posts/42/../43/comments", 400},
		{"encoded slash in table", claims{"channels": []string{"posts/*/comments"}}, "posts%2F42/comments", 400},
		{"encoded slash in id literal", claims{"channels": []string{"posts/42/comments"}}, "posts/42%2F43/comments", 403},
		{"encoded slash in id wildcard", claims{"channels": []string{"posts/*/comments"}}, "posts/42%2F43/comments", 403},
		{"encoded slash in id vs direct", claims{"channels": []string{"posts/42"}}, "posts/42%2Fcomments", 403},
		{"encoded literal escapes compare decoded", claims{"channels": []string{"files/a%20b"}}, "files/a%20b", 0},
		{"sub star injection", claims{"sub": "*", "channels": []string{"posts/{sub}/comments"}}, "posts/42/comments", 403},
		{"sub slash injection", claims{"sub": "42/comments", "channels": []string{"posts/{sub}"}}, "posts/42/comments", 403},
		{"sub dot dot injection", claims{"sub": "..", "channels": []string{"posts/42/comments/{sub}"}}, "posts/42/comments", 403},
		{"mixed star", claims{"channels": []string{"post*"}}, "posts", 403},
		{"mixed star id", claims{"channels": []string{"posts/4*/comments"}}, "posts/42/comments", 403},
		{"pattern with dot dot", claims{"channels": []string{"posts/42/../comments"}}, "posts/42/comments", 403},
		{"pattern with empty segment", claims{"channels": []string{"posts//comments"}}, "posts/42/comments", 403},
		{"patterns not an array", claims{"channels": "comments"}, "comments", 403},
		{"no patterns", claims{}, "comments", 403},
		{"non-string pattern ignored", claims{"channels": []any{1, "comments"}}, "comments", 0},
		{"star channel is a literal id", claims{"channels": []string{"posts/42/comments"}}, "posts/*/comments", 403},
		{"too many segments", claims{"channels": []string{"posts/*/comments"}}, strings.Repeat("a/1/", 9) + "b", 400},
	}
	a := newHS(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok := signToken(t, "HS256", testSecret, valid(tt.claims))
			d, n := subscribe(t, a, bearer(tok), tt.channel)
			switch {
			case tt.wantCode == 0 && n != 1:
				t.Fatalf("denied %+v, want allowed", d)
			case tt.wantCode != 0 && n != 0:
				t.Fatalf("allowed, want %d", tt.wantCode)
			case tt.wantCode != 0 && d.Status != tt.wantCode:
				t.Fatalf("status %d (%s), want %d", d.Status, d.Reason, tt.wantCode)
			}
		})
	}
}

func TestJWTTokenAttacks(t *testing.T) {
	t.Parallel()
	rk := testRSAKey(t)
	rsPEM := publicPEM(t, &rk.PublicKey)
	grantAll := claims{"channels": []string{"comments", "comments/*", "posts/*/comments"}}
	attacks := []struct {
		name  string
		cfg   func(*JWTConfig) // nil = HS256 authorizer
		token func(t *testing.T) string
		want  int
	}{
		{"no token", nil, func(*testing.T) string { return "" }, 401},
		{"expired", nil, func(t *testing.T) string {
			c := valid(grantAll)
			c["exp"] = testNow.Add(-time.Minute).Unix()
			return signToken(t, "HS256", testSecret, c)
		}, 401},
		{"expired exactly at leeway", nil, func(t *testing.T) string {
			c := valid(grantAll)
			c["exp"] = testNow.Add(-LeewayDefault).Unix()
			return signToken(t, "HS256", testSecret, c)
		}, 401},
		{"exp not a number", nil, func(t *testing.T) string {
			c := valid(grantAll)
			c["exp"] = "tomorrow"
			return signToken(t, "HS256", testSecret, c)
		}, 401},
		{"nbf in the future", nil, func(t *testing.T) string {
			c := valid(grantAll)
			c["nbf"] = testNow.Add(time.Minute).Unix()
			return signToken(t, "HS256", testSecret, c)
		}, 401},
		{"wrong signature", nil, func(t *testing.T) string {
			return signToken(t, "HS256", []byte("another-secret-another-secret-32"), valid(grantAll))
		}, 401},
		{"tampered payload", nil, func(t *testing.T) string {
			tok := signToken(t, "HS256", testSecret, valid(claims{"channels": []string{"other"}}))
			parts := strings.Split(tok, ".")
			p, _ := json.Marshal(valid(grantAll))
			return parts[0] + "." + base64.RawURLEncoding.EncodeToString(p) + "." + parts[2]
		}, 401},
		{"alg none", nil, func(t *testing.T) string { return signToken(t, "none", nil, valid(grantAll)) }, 401},
		{"alg None", nil, func(t *testing.T) string { return signToken(t, "None", nil, valid(grantAll)) }, 401},
		{"alg none with HS signature", nil, func(t *testing.T) string {
			tok := signToken(t, "HS256", testSecret, valid(grantAll))
			parts := strings.Split(tok, ".")
			h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`))
			return h + "." + parts[1] + "." + parts[2]
		}, 401},
		{"alg confusion HS256 with RSA public key", func(c *JWTConfig) { c.HS256Secret = nil; c.RS256PublicKeyPEM = rsPEM },
			func(t *testing.T) string { return signToken(t, "HS256", rsPEM, valid(grantAll)) }, 401},
		{"alg confusion with both configured", func(c *JWTConfig) { c.RS256PublicKeyPEM = rsPEM },
			func(t *testing.T) string { return signToken(t, "HS256", rsPEM, valid(grantAll)) }, 401},
		{"RS256 token to HS authorizer", nil, func(t *testing.T) string { return signToken(t, "RS256", rk, valid(grantAll)) }, 401},
		{"malformed two parts", nil, func(*testing.T) string { return "abc.def" }, 401},
		{"malformed four parts", nil, func(t *testing.T) string { return signToken(t, "HS256", testSecret, valid(grantAll)) + ".x" }, 401},
		{"bad base64", nil, func(t *testing.T) string {
			tok := signToken(t, "HS256", testSecret, valid(grantAll))
			return tok[:len(tok)-2] + "*="
		}, 401},
		{"padded base64", nil, func(t *testing.T) string { return signToken(t, "HS256", testSecret, valid(grantAll)) + "=" }, 401},
		{"header not json", nil, func(*testing.T) string { return "bm90anNvbg.e30.c2ln" }, 401},
		{"crit header", nil, func(t *testing.T) string {
			h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","crit":["exp"]}`))
			p, _ := json.Marshal(valid(grantAll))
			signed := h + "." + base64.RawURLEncoding.EncodeToString(p)
			m := hmac.New(sha256.New, testSecret)
			m.Write([]byte(signed))
			return signed + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
		}, 401},
		{"oversized", nil, func(*testing.T) string { return strings.Repeat("a", MaxTokenBytes+1) }, 401},
		{"wrong issuer", func(c *JWTConfig) { c.Issuer = "https://auth.example" }, func(t *testing.T) string {
			c := valid(grantAll)
			c["iss"] = "https://evil.example"
			return signToken(t, "HS256", testSecret, c)
		}, 401},
		{"wrong audience", func(c *JWTConfig) { c.Audience = "walflow" }, func(t *testing.T) string {
			c := valid(grantAll)
			c["aud"] = []string{"other"}
			return signToken(t, "HS256", testSecret, c)
		}, 401},
		{"missing audience", func(c *JWTConfig) { c.Audience = "walflow" }, func(t *testing.T) string {
			return signToken(t, "HS256", testSecret, valid(grantAll))
		}, 401},
	}
	channels := map[string]string{"unscoped": "comments", "direct": "comments/7", "scoped": "posts/42/comments"}
	for _, tt := range attacks {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := newHS(t, tt.cfg)
			tok := tt.token(t)
			delivered := 0
			for kind, raw := range channels {
				for _, r := range []*http.Request{bearer(tok), queryToken(tok)} {
					d, n := subscribe(t, a, r, raw)
					delivered += n
					if n == 0 && d.Status != tt.want {
						t.Errorf("%s %s: status %d (%s), want %d", kind, raw, d.Status, d.Reason, tt.want)
					}
					if tok != "" && strings.Contains(d.Reason, tok) {
						t.Errorf("reason contains the token")
					}
				}
			}
			if delivered != 0 {
				t.Fatalf("%d messages delivered, want 0", delivered)
			}
		})
	}
}

func queryToken(tok string) *http.Request {
	target := "/stream"
	if tok != "" {
		target += "?" + AccessTokenParam + "=" + url.QueryEscape(tok)
	}
	return httptest.NewRequest(http.MethodGet, target, nil)
}

func TestJWTAllowedAndExpiry(t *testing.T) {
	t.Parallel()
	rk := testRSAKey(t)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherEK, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	exp := testNow.Add(90 * time.Second)
	c := claims{"exp": exp.Unix(), "channels": []string{"comments", "comments/*", "posts/*/comments"}}
	tests := []struct {
		name    string
		cfg     JWTConfig
		token   func(t *testing.T) string
		request func(string) *http.Request
		allow   bool
	}{
		{"HS256 header", JWTConfig{HS256Secret: testSecret}, func(t *testing.T) string { return signToken(t, "HS256", testSecret, c) }, bearer, true},
		{"HS256 query", JWTConfig{HS256Secret: testSecret}, func(t *testing.T) string { return signToken(t, "HS256", testSecret, c) }, queryToken, true},
		{"RS256", JWTConfig{RS256PublicKeyPEM: publicPEM(t, &rk.PublicKey)}, func(t *testing.T) string { return signToken(t, "RS256", rk, c) }, bearer, true},
		{"RS256 PKCS1 PEM", JWTConfig{RS256PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rk.PublicKey)})},
			func(t *testing.T) string { return signToken(t, "RS256", rk, c) }, bearer, true},
		{"ES256", JWTConfig{ES256PublicKeyPEM: publicPEM(t, &ek.PublicKey)}, func(t *testing.T) string { return signToken(t, "ES256", ek, c) }, bearer, true},
		{"ES256 other key", JWTConfig{ES256PublicKeyPEM: publicPEM(t, &ek.PublicKey)}, func(t *testing.T) string { return signToken(t, "ES256", otherEK, c) }, bearer, false},
		{"ES256 with RS key configured", JWTConfig{RS256PublicKeyPEM: publicPEM(t, &rk.PublicKey)}, func(t *testing.T) string { return signToken(t, "ES256", ek, c) }, bearer, false},
		{"all keys, ES256", JWTConfig{HS256Secret: testSecret, RS256PublicKeyPEM: publicPEM(t, &rk.PublicKey), ES256PublicKeyPEM: publicPEM(t, &ek.PublicKey)},
			func(t *testing.T) string { return signToken(t, "ES256", ek, c) }, bearer, true},
		{"issuer and audience", JWTConfig{HS256Secret: testSecret, Issuer: "iss", Audience: "walflow"}, func(t *testing.T) string {
			cc := claims{"iss": "iss", "aud": "walflow"}
			for k, v := range c {
				cc[k] = v
			}
			return signToken(t, "HS256", testSecret, cc)
		}, bearer, true},
		{"both header and query", JWTConfig{HS256Secret: testSecret}, func(t *testing.T) string { return signToken(t, "HS256", testSecret, c) },
			func(tok string) *http.Request {
				r := queryToken(tok)
				r.Header.Set("Authorization", "Bearer "+tok)
				return r
			}, false},
		{"basic scheme", JWTConfig{HS256Secret: testSecret}, func(t *testing.T) string { return signToken(t, "HS256", testSecret, c) },
			func(tok string) *http.Request { r := bearer(""); r.Header.Set("Authorization", "Basic "+tok); return r }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg
			cfg.NowFunc = func() time.Time { return testNow }
			a, err := NewJWTAuthorizer(cfg)
			if err != nil {
				t.Fatal(err)
			}
			tok := tt.token(t)
			for _, raw := range []string{"comments", "comments/7", "posts/42/comments"} {
				d, n := subscribe(t, a, tt.request(tok), raw)
				if tt.allow != (n == 1) {
					t.Fatalf("%s: decision %+v, want allow=%v", raw, d, tt.allow)
				}
				if tt.allow && !d.Expires.Equal(exp) {
					t.Fatalf("%s: Expires %v, want exp %v", raw, d.Expires, exp)
				}
			}
		})
	}
}

// A resumed stream is authorized again: the same token passes before exp (within leeway)
// and fails after it.
func TestJWTReauthorizeOnResume(t *testing.T) {
	t.Parallel()
	now := testNow
	var mu sync.Mutex
	a := newHS(t, func(c *JWTConfig) {
		c.NowFunc = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	exp := testNow.Add(time.Minute)
	tok := signToken(t, "HS256", testSecret, claims{"exp": exp.Unix(), "channels": []string{"posts/*/comments"}})
	steps := []struct {
		at    time.Time
		allow bool
	}{
		{testNow, true},
		{exp.Add(LeewayDefault - time.Second), true},
		{exp.Add(LeewayDefault), false},
		{exp.Add(time.Hour), false},
	}
	for _, s := range steps {
		mu.Lock()
		now = s.at
		mu.Unlock()
		d, n := subscribe(t, a, bearer(tok), "posts/42/comments")
		if (n == 1) != s.allow {
			t.Fatalf("at exp%+v: %+v, want allow=%v", s.at.Sub(exp), d, s.allow)
		}
		if !s.allow && d.Status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", d.Status)
		}
	}
}

func TestJWTNoExp(t *testing.T) {
	t.Parallel()
	a := newHS(t, nil)
	tok := signToken(t, "HS256", testSecret, claims{"channels": []string{"comments"}})
	d, n := subscribe(t, a, bearer(tok), "comments")
	if n != 1 || !d.Expires.IsZero() {
		t.Fatalf("got %+v, want allowed with zero Expires", d)
	}
}

func TestJWTAnonymous(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     JWTConfig
		token   string
		channel string
		allow   bool
	}{
		{"disabled", JWTConfig{HS256Secret: testSecret}, "", "comments", false},
		{"enabled without channels", JWTConfig{HS256Secret: testSecret, AllowAnonymous: true}, "", "comments", false},
		{"enabled unscoped", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"comments"}}, "", "comments", true},
		{"enabled direct wildcard", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"comments/*"}}, "", "comments/7", true},
		{"enabled scoped", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"posts/*/comments"}}, "", "posts/42/comments", true},
		{"enabled other channel", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"comments"}}, "", "posts/42/comments", false},
		{"enabled encoded slash", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"posts/*/comments"}}, "", "posts/42%2F43/comments", false},
		{"invalid token does not fall back", JWTConfig{HS256Secret: testSecret, AllowAnonymous: true, AnonymousChannels: []string{"comments"}}, "x.y.z", "comments", false},
		{"token without key configured", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"comments"}}, "eyJhbGciOiJub25lIn0.e30.", "comments", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg
			cfg.NowFunc = func() time.Time { return testNow }
			a, err := NewJWTAuthorizer(cfg)
			if err != nil {
				t.Fatal(err)
			}
			d, n := subscribe(t, a, bearer(tt.token), tt.channel)
			if (n == 1) != tt.allow {
				t.Fatalf("%+v, want allow=%v", d, tt.allow)
			}
			if !tt.allow && d.Status != 0 && d.Status != http.StatusUnauthorized && d.Status != http.StatusBadRequest {
				t.Fatalf("status %d, want 401", d.Status)
			}
		})
	}
}

// Channels built in code are checked as Parse would check them.
func TestJWTChannelBuiltInCode(t *testing.T) {
	t.Parallel()
	a := newHS(t, nil)
	tok := signToken(t, "HS256", testSecret, valid(claims{"channels": []string{"*/*"}}))
	for _, ch := range []channel.Channel{
		{Table: "posts", ID: ".."},
		{Table: "posts/42"},
		{Table: "posts", ID: "1", Scopes: []channel.ScopeValue{{Table: "a", ID: "1"}}},
		{},
	} {
		if d := a.Authorize(bearer(tok), ch); d.Allow {
			t.Errorf("%#v allowed", ch)
		}
	}
}

func TestNewJWTAuthorizerErrors(t *testing.T) {
	t.Parallel()
	rk := testRSAKey(t)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  JWTConfig
		want string
	}{
		{"no key", JWTConfig{}, "no key"},
		{"short secret", JWTConfig{HS256Secret: []byte("short")}, "HS256Secret"},
		{"not PEM", JWTConfig{RS256PublicKeyPEM: []byte("nope")}, "RS256PublicKeyPEM"},
		{"EC key as RS256", JWTConfig{RS256PublicKeyPEM: publicPEM(t, &ek.PublicKey)}, "RS256PublicKeyPEM"},
		{"RSA key as ES256", JWTConfig{ES256PublicKeyPEM: publicPEM(t, &rk.PublicKey)}, "ES256PublicKeyPEM"},
		{"private key PEM", JWTConfig{ES256PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1}})}, "ES256PublicKeyPEM"},
		{"anonymous channels without AllowAnonymous", JWTConfig{HS256Secret: testSecret, AnonymousChannels: []string{"comments"}}, "AllowAnonymous"},
		{"placeholder in anonymous", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"posts/{sub}"}}, "AnonymousChannels[0]"},
		{"mixed star in anonymous", JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"post*"}}, "AnonymousChannels[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewJWTAuthorizer(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one naming %q", err, tt.want)
			}
		})
	}
}

// TestJWTTokenGivenTwice: a token sent twice is refused with what happened: twice in
// access_token, twice in the Authorization header, or in both places.
func TestJWTTokenGivenTwice(t *testing.T) {
	t.Parallel()
	a := newHS(t, nil)
	tok := signToken(t, "HS256", testSecret, valid(claims{"channels": []string{"comments"}}))
	twoParams := httptest.NewRequest(http.MethodGet, "/stream?"+AccessTokenParam+"="+tok+"&"+AccessTokenParam+"="+tok, nil)
	twoHeaders := bearer(tok)
	twoHeaders.Header.Add("Authorization", "Bearer "+tok)
	both := queryToken(tok)
	both.Header.Set("Authorization", "Bearer "+tok)
	for _, tc := range []struct {
		name   string
		r      *http.Request
		reason string
	}{
		{"access_token twice", twoParams, "access_token given more than once; send one"},
		{"Authorization twice", twoHeaders, "Authorization header given more than once; send one"},
		{"header and access_token", both, "token given both in the Authorization header and in access_token"},
	} {
		d, n := subscribe(t, a, tc.r, "comments")
		if n != 0 || d.Status != http.StatusUnauthorized || d.Reason != tc.reason {
			t.Errorf("%s: %+v, want 401 %q", tc.name, d, tc.reason)
		}
	}
}
