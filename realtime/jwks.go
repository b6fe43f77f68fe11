package realtime

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// maxJWKSBytes is the largest JWKS document read; a longer one is refused.
	maxJWKSBytes = 1 << 20
	// maxRSABits is the largest RS256 key taken from a JWKS, so a key cannot make every
	// verification slow.
	maxRSABits = 8192
)

// jwk is one usable key of a JWKS.
type jwk struct {
	kid string
	alg string // RS256 or ES256
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// jwksCache holds the keys of one JWKS URL and fetches them again when they are stale or a
// token names a kid they lack, at most once per minGap. It starts no goroutine: a fetch
// runs in the goroutine of the request that needs it, one at a time.
type jwksCache struct {
	url     string
	client  *http.Client
	refresh time.Duration
	minGap  time.Duration
	now     func() time.Time
	logger  *slog.Logger
	sem     chan struct{} // holds a token while a fetch runs

	mu        sync.Mutex
	keySet    []jwk
	fetched   time.Time // when keySet was fetched; zero before the first success
	attempted time.Time // when the last fetch started; zero before the first
}

func newJWKSCache(raw string, cfg JWTConfig, logger *slog.Logger) (*jwksCache, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not a URL; write it like https://auth.example.com/.well-known/jwks.json", raw)
	}
	if err := checkJWKSURL(u); err != nil {
		return nil, fmt.Errorf("%q: %w", raw, err)
	}
	return &jwksCache{
		url:     u.String(),
		client:  cfg.JWKSHTTPClient,
		refresh: cfg.JWKSRefreshInterval,
		minGap:  cfg.JWKSMinRefreshInterval,
		now:     cfg.NowFunc,
		logger:  logger,
		sem:     make(chan struct{}, 1),
	}, nil
}

// checkJWKSURL refuses a URL whose keys could be replaced on the way: keys decide who may
// read what, so they come over https, or over http only from this machine.
func checkJWKSURL(u *url.URL) error {
	switch {
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	default:
		return errors.New("a JWKS URL must be https (or http to localhost, 127.0.0.1 or [::1]), or anyone on the way could replace the keys")
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sameHostRedirect is the default client's redirect policy: it follows a redirect only to a
// URL checkJWKSURL accepts, on the same host.
func sameHostRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("more than 5 redirects")
	}
	if req.URL.Host != via[0].URL.Host {
		return fmt.Errorf("redirect to another host (%s)", req.URL.Host)
	}
	return checkJWKSURL(req.URL)
}

// keys returns the keys for alg with kid (every key for alg when kid is ""), fetching the
// set first when it is stale or lacks them and the last fetch is at least minGap old.
func (c *jwksCache) keys(ctx context.Context, alg, kid string) []jwt.VerificationKey {
	c.mu.Lock()
	set, fetched, attempted := c.keySet, c.fetched, c.attempted
	c.mu.Unlock()
	found := match(set, alg, kid)
	now := c.now()
	stale := fetched.IsZero() || now.Sub(fetched) >= c.refresh
	if !stale && len(found) > 0 {
		return found
	}
	if !attempted.IsZero() && now.Sub(attempted) < c.minGap {
		return found
	}
	if len(found) > 0 {
		// Stale but usable: refresh unless another request already is, and never wait.
		select {
		case c.sem <- struct{}{}:
		default:
			return found
		}
	} else {
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
	}
	defer func() { <-c.sem }()
	c.mu.Lock()
	again := c.attempted.Equal(attempted)
	c.mu.Unlock()
	if again {
		c.fetch(ctx)
	}
	c.mu.Lock()
	set = c.keySet
	c.mu.Unlock()
	return match(set, alg, kid)
}

// match returns the keys of set for alg with kid, or for alg alone when kid is "".
func match(set []jwk, alg, kid string) []jwt.VerificationKey {
	var out []jwt.VerificationKey
	for _, k := range set {
		if k.alg == alg && (kid == "" || k.kid == kid) {
			out = append(out, k.key)
		}
	}
	return out
}

// fetch reads the set and replaces the keys with it. A failure keeps the keys and is
// logged; it counts against minGap unless ctx ended first (the request went away).
func (c *jwksCache) fetch(ctx context.Context) {
	c.mu.Lock()
	prev := c.attempted
	c.attempted = c.now()
	c.mu.Unlock()
	set, err := c.get(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			c.attempted = prev
			return
		}
		c.logger.WarnContext(ctx, "jwks fetch failed; keeping the keys already held",
			slog.String("url", c.url), slog.Int("keys", len(c.keySet)), slog.String("error", err.Error()))
		return
	}
	c.keySet, c.fetched = set, c.now()
	c.logger.DebugContext(ctx, "jwks fetched", slog.String("url", c.url), slog.Int("keys", len(set)))
}

// get fetches and parses the set.
func (c *jwksCache) get(ctx context.Context) ([]jwk, error) {
	ctx, cancel := context.WithTimeout(ctx, JWKSFetchTimeoutDefault)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get: status %s, want 200 OK", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("document is over %d bytes", maxJWKSBytes)
	}
	return parseJWKS(body, func(i int, err error) {
		c.logger.WarnContext(ctx, "jwks key ignored", slog.String("url", c.url), slog.Int("index", i), slog.String("error", err.Error()))
	})
}

// rawJWK is the members of a JWK (RFC 7517, RFC 7518 section 6) this package reads.
type rawJWK struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
}

// parseJWKS parses a JWK Set. Keys this package cannot use for RS256 or ES256 are passed
// to skipped with the reason and left out; a set with no usable key is an error.
func parseJWKS(b []byte, skipped func(i int, err error)) ([]jwk, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("not a JWK Set (a JSON object with a keys array): %w", err)
	}
	var set []jwk
	for i, raw := range doc.Keys {
		var r rawJWK
		if err := json.Unmarshal(raw, &r); err != nil {
			skipped(i, fmt.Errorf("not a JWK object: %w", err))
			continue
		}
		k, err := r.key()
		if err != nil {
			skipped(i, err)
			continue
		}
		set = append(set, k)
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("no RS256 or ES256 public key among its %d keys", len(doc.Keys))
	}
	return set, nil
}

// key turns r into a verification key, or says why it cannot be one.
func (r rawJWK) key() (jwk, error) {
	if r.D != "" {
		return jwk{}, errors.New("holds a private key; publish only public keys")
	}
	if r.Use != "" && r.Use != "sig" {
		return jwk{}, fmt.Errorf("use is %q, not sig", r.Use)
	}
	b64 := base64.RawURLEncoding.Strict()
	switch r.Kty {
	case "RSA":
		if r.Alg != "" && r.Alg != "RS256" {
			return jwk{}, fmt.Errorf("alg %q is not accepted; RSA keys are used for RS256 only", r.Alg)
		}
		nb, err1 := b64.DecodeString(r.N)
		eb, err2 := b64.DecodeString(r.E)
		if err1 != nil || err2 != nil || len(nb) == 0 || len(eb) == 0 || len(eb) > 4 {
			return jwk{}, errors.New("RSA key has an invalid n or e")
		}
		n := new(big.Int).SetBytes(nb)
		e := int(new(big.Int).SetBytes(eb).Int64())
		if e < 3 || e%2 == 0 {
			return jwk{}, fmt.Errorf("RSA exponent %d is not an odd number from 3", e)
		}
		if n.BitLen() < minRSABits || n.BitLen() > maxRSABits {
			return jwk{}, fmt.Errorf("RSA key has %d bits; RS256 keys have %d to %d", n.BitLen(), minRSABits, maxRSABits)
		}
		return jwk{kid: r.Kid, alg: "RS256", key: &rsa.PublicKey{N: n, E: e}}, nil
	case "EC":
		if r.Alg != "" && r.Alg != "ES256" {
			return jwk{}, fmt.Errorf("alg %q is not accepted; EC keys are used for ES256 only", r.Alg)
		}
		if r.Crv != "P-256" {
			return jwk{}, fmt.Errorf("curve %q is not P-256, the curve of ES256", r.Crv)
		}
		x, err1 := b64.DecodeString(r.X)
		y, err2 := b64.DecodeString(r.Y)
		if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
			return jwk{}, errors.New("P-256 key has an invalid x or y")
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return jwk{}, fmt.Errorf("P-256 key: %w", err)
		}
		return jwk{kid: r.Kid, alg: "ES256", key: pub}, nil
	default:
		return jwk{}, fmt.Errorf("kty %q is not RSA or EC", strings.ToValidUTF8(r.Kty, "?"))
	}
}
