package realtime

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/redact"
)

const (
	// ClaimNameDefault is the default [JWTConfig.ClaimName].
	ClaimNameDefault = "channels"
	// LeewayDefault is the default [JWTConfig.Leeway].
	LeewayDefault = 30 * time.Second
	// AccessTokenParam is the query parameter that may carry the token.
	AccessTokenParam = "access_token"
	// MaxTokenBytes is the longest token accepted; longer ones are denied unread.
	MaxTokenBytes = 16 << 10
	// minHS256SecretBytes is the smallest HS256 secret (RFC 7518 section 3.2).
	minHS256SecretBytes = 32
	// minRSABits is the smallest RS256 key.
	minRSABits = 2048
	// JWKSRefreshIntervalDefault is the default [JWTConfig.JWKSRefreshInterval].
	JWKSRefreshIntervalDefault = 15 * time.Minute
	// JWKSMinRefreshIntervalDefault is the default [JWTConfig.JWKSMinRefreshInterval].
	JWKSMinRefreshIntervalDefault = 30 * time.Second
	// JWKSFetchTimeoutDefault bounds one fetch of a JWKS.
	JWKSFetchTimeoutDefault = 10 * time.Second
)

// JWTConfig configures a [JWTAuthorizer]. At least one key or JWKS URL must be set unless
// AllowAnonymous is true. Each configured key enables exactly its algorithm, and JWKSURLs
// enable RS256 and ES256; a token whose alg header names another algorithm (including none)
// is denied.
type JWTConfig struct {
	// HS256Secret enables HS256 with this shared secret, at least 32 bytes. Default: none.
	HS256Secret []byte
	// RS256PublicKeyPEM enables RS256 with this RSA public key of at least 2048 bits, as a
	// PEM "PUBLIC KEY" (PKIX), "RSA PUBLIC KEY" (PKCS #1) or "CERTIFICATE" block.
	// Default: none.
	RS256PublicKeyPEM []byte
	// ES256PublicKeyPEM enables ES256 with this P-256 public key, as a PEM "PUBLIC KEY"
	// (PKIX) or "CERTIFICATE" block. Default: none.
	ES256PublicKeyPEM []byte
	// JWKSURLs are JSON Web Key Set documents (RFC 7517) holding RS256 (RSA, at least
	// 2048 bits) and ES256 (P-256) public keys, like an identity provider's
	// /.well-known/jwks.json. A token whose header has a kid is verified with the key of
	// that kid; one without a kid with every key of its algorithm. Keys are fetched on the
	// first token, kept, and fetched again when older than JWKSRefreshInterval or when a
	// token names a kid no set holds (at most once per JWKSMinRefreshInterval), so an
	// issuer can rotate keys without a restart. A failed fetch keeps the keys already held.
	// Each URL must be https, or http to a loopback address. Default: none.
	JWKSURLs []string
	// JWKSRefreshInterval is how old the keys of a JWKS may get before the next token
	// fetches them again. Default: JWKSRefreshIntervalDefault (15m).
	JWKSRefreshInterval time.Duration
	// JWKSMinRefreshInterval is the least time between two fetches of one JWKS, however
	// many tokens name unknown kids or find the keys stale; it keeps a flood of forged
	// tokens from becoming a flood of fetches. Default: JWKSMinRefreshIntervalDefault (30s).
	JWKSMinRefreshInterval time.Duration
	// JWKSHTTPClient fetches the JWKS. Each fetch runs under the context of the request
	// that needed it and at most JWKSFetchTimeoutDefault (10s). Default: an http.Client
	// that follows no redirect to another host.
	JWKSHTTPClient *http.Client
	// ClaimName is the claim holding the JSON array of channel patterns a token grants.
	// Default: ClaimNameDefault ("channels").
	ClaimName string
	// Issuer, when set, must equal the token's iss claim. Default: not checked.
	Issuer string
	// Audience, when set, must equal the token's aud claim or be one of its values.
	// Default: not checked.
	Audience string
	// Leeway is the clock skew allowed when checking exp and nbf. Default: LeewayDefault
	// (30s); a negative value means none.
	Leeway time.Duration
	// AllowAnonymous lets requests without a token subscribe to AnonymousChannels.
	// Default: false (every request needs a token).
	AllowAnonymous bool
	// AnonymousChannels are the patterns a request without a token may subscribe to, only
	// when AllowAnonymous is true. They may not hold {name} placeholders. Default: none.
	AnonymousChannels []string
	// Logger receives one Info record per denial (never with the token) and a Warn record
	// per invalid pattern in a token. Default: discard.
	Logger *slog.Logger
	// NowFunc returns the current time; it is for tests. Default: time.Now.
	NowFunc func() time.Time
}

func (c JWTConfig) withDefaults() JWTConfig {
	c.ClaimName = cmp.Or(c.ClaimName, ClaimNameDefault)
	switch {
	case c.Leeway == 0:
		c.Leeway = LeewayDefault
	case c.Leeway < 0:
		c.Leeway = 0
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.NowFunc == nil {
		c.NowFunc = time.Now
	}
	c.JWKSRefreshInterval = cmp.Or(c.JWKSRefreshInterval, JWKSRefreshIntervalDefault)
	c.JWKSMinRefreshInterval = cmp.Or(c.JWKSMinRefreshInterval, JWKSMinRefreshIntervalDefault)
	if c.JWKSHTTPClient == nil {
		c.JWKSHTTPClient = &http.Client{CheckRedirect: sameHostRedirect}
	}
	return c
}

// JWTAuthorizer is an [Authorizer] that verifies JSON Web Tokens (RFC 7519) signed with
// HS256, RS256 or ES256 and allows the channels their patterns cover. Tokens are parsed and
// verified by github.com/golang-jwt/jwt/v5. It is safe for concurrent use and starts no
// goroutine: JWKS fetches run in the goroutine of the request that needs them.
type JWTAuthorizer struct {
	cfg    JWTConfig
	hs     []byte
	rs     *rsa.PublicKey
	es     *ecdsa.PublicKey
	jwks   []*jwksCache
	algs   []string // the algorithms some key enables
	anon   []pattern
	logger *slog.Logger
}

var _ Authorizer = (*JWTAuthorizer)(nil)

// NewJWTAuthorizer returns a JWTAuthorizer, or an error naming the field to fix.
func NewJWTAuthorizer(cfg JWTConfig) (*JWTAuthorizer, error) {
	cfg = cfg.withDefaults()
	a := &JWTAuthorizer{cfg: cfg, logger: cfg.Logger.With("component", "realtime_auth")}
	if len(cfg.HS256Secret) > 0 {
		if len(cfg.HS256Secret) < minHS256SecretBytes {
			return nil, configErrorf("JWTConfig", "HS256Secret", "%d bytes are too few; use at least %d random bytes",
				len(cfg.HS256Secret), minHS256SecretBytes)
		}
		a.hs = bytes.Clone(cfg.HS256Secret)
	}
	if len(cfg.RS256PublicKeyPEM) > 0 {
		k, err := parsePublicKeyPEM(cfg.RS256PublicKeyPEM)
		if err != nil {
			return nil, configErrorf("JWTConfig", "RS256PublicKeyPEM", "%w", err)
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, configErrorf("JWTConfig", "RS256PublicKeyPEM", "a %T, not an RSA public key; RS256 needs an RSA key", k)
		}
		if rk.N.BitLen() < minRSABits {
			return nil, configErrorf("JWTConfig", "RS256PublicKeyPEM", "a %d-bit RSA key is too weak; use at least %d bits",
				rk.N.BitLen(), minRSABits)
		}
		a.rs = rk
	}
	if len(cfg.ES256PublicKeyPEM) > 0 {
		k, err := parsePublicKeyPEM(cfg.ES256PublicKeyPEM)
		if err != nil {
			return nil, configErrorf("JWTConfig", "ES256PublicKeyPEM", "%w", err)
		}
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok || ek.Curve != elliptic.P256() {
			return nil, configErrorf("JWTConfig", "ES256PublicKeyPEM", "not a P-256 ECDSA public key; ES256 needs a P-256 key")
		}
		a.es = ek
	}
	for i, u := range cfg.JWKSURLs {
		c, err := newJWKSCache(u, cfg, a.logger)
		if err != nil {
			return nil, entryError("JWTConfig", "JWKSURLs", i, err)
		}
		a.jwks = append(a.jwks, c)
	}
	if cfg.JWKSRefreshInterval < 0 {
		return nil, configErrorf("JWTConfig", "JWKSRefreshInterval", "%s is negative; give a positive interval, or 0 for the default %s", cfg.JWKSRefreshInterval, JWKSRefreshIntervalDefault)
	}
	if cfg.JWKSMinRefreshInterval < 0 {
		return nil, configErrorf("JWTConfig", "JWKSMinRefreshInterval", "%s is negative; give a positive interval, or 0 for the default %s", cfg.JWKSMinRefreshInterval, JWKSMinRefreshIntervalDefault)
	}
	if a.hs != nil {
		a.algs = append(a.algs, jwt.SigningMethodHS256.Alg())
	}
	if a.rs != nil || len(a.jwks) > 0 {
		a.algs = append(a.algs, jwt.SigningMethodRS256.Alg())
	}
	if a.es != nil || len(a.jwks) > 0 {
		a.algs = append(a.algs, jwt.SigningMethodES256.Alg())
	}
	if len(a.algs) == 0 && !cfg.AllowAnonymous {
		return nil, configErrorf("JWTConfig", "", "no key; set HS256Secret, RS256PublicKeyPEM, ES256PublicKeyPEM or JWKSURLs, or set AllowAnonymous")
	}
	if len(cfg.AnonymousChannels) > 0 && !cfg.AllowAnonymous {
		return nil, configErrorf("JWTConfig", "AnonymousChannels", "set, but AllowAnonymous is false; set AllowAnonymous to allow them")
	}
	for i, s := range cfg.AnonymousChannels {
		p, err := parsePattern(s, nil)
		if err != nil {
			return nil, entryError("JWTConfig", "AnonymousChannels", i, fmt.Errorf("%q is not a channel pattern: %w", s, err))
		}
		a.anon = append(a.anon, p)
	}
	return a, nil
}

// parsePublicKeyPEM parses the first PEM block of b.
func parsePublicKeyPEM(b []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block found; paste the key with its -----BEGIN ...----- line")
	}
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return c.PublicKey, nil
	default:
		return nil, fmt.Errorf("PEM block is %q; use a PUBLIC KEY block (never a private key)", block.Type)
	}
}

// Authorize verifies the request's token and reports whether its patterns cover ch. See
// the package documentation for where the token is read from.
func (a *JWTAuthorizer) Authorize(r *http.Request, ch channel.Channel) Decision {
	d := a.authorize(r, ch)
	if !d.Allow {
		a.logger.InfoContext(r.Context(), "subscription denied",
			slog.String("channel", ch.String()),
			slog.Int("status", d.Status),
			slog.String("reason", d.Reason),
			slog.String("remote_addr", r.RemoteAddr))
	}
	return d
}

func (a *JWTAuthorizer) authorize(r *http.Request, ch channel.Channel) Decision {
	tok, d, ok := bearerToken(r)
	if !ok {
		return d
	}
	// Re-check the channel as Parse would, so a Channel built in code cannot smuggle in
	// segments a parsed one could not hold.
	if back, err := channel.Parse(ch.String()); err != nil || !back.Equal(ch) {
		return deny(http.StatusForbidden, reasonInvalidChannel)
	}
	segs := channelSegments(ch)
	if tok == "" {
		if !a.cfg.AllowAnonymous {
			return deny(http.StatusUnauthorized, reasonMissingToken)
		}
		if matchAny(a.anon, segs) {
			return Decision{Allow: true}
		}
		return deny(http.StatusUnauthorized, reasonAnonNotCovered)
	}
	claims, exp, d, ok := a.verify(r.Context(), tok)
	if !ok {
		return d
	}
	patterns := a.grant(r.Context(), claims)
	if !matchAny(patterns, segs) {
		return Decision{Status: http.StatusForbidden, Reason: reasonNotCovered, Expires: exp}
	}
	return Decision{Allow: true, Expires: exp}
}

// bearerToken returns the token of the request, "" when it has none, or a denial.
func bearerToken(r *http.Request) (string, Decision, bool) {
	var header, query string
	if h := r.Header.Values("Authorization"); len(h) > 0 {
		if len(h) > 1 {
			return "", deny(http.StatusUnauthorized, reasonTwoHeaders), false
		}
		scheme, t, found := strings.Cut(h[0], " ")
		if !found || !strings.EqualFold(scheme, "Bearer") {
			return "", deny(http.StatusUnauthorized, reasonBadScheme), false
		}
		header = strings.TrimSpace(t)
		if header == "" {
			return "", deny(http.StatusUnauthorized, reasonMalformed), false
		}
	}
	if q := r.URL.Query()[AccessTokenParam]; len(q) > 0 {
		if header != "" {
			return "", deny(http.StatusUnauthorized, reasonTwoTokens), false
		}
		if len(q) > 1 {
			return "", deny(http.StatusUnauthorized, reasonTwoParams), false
		}
		query = q[0]
		if query == "" {
			return "", deny(http.StatusUnauthorized, reasonMalformed), false
		}
	}
	return header + query, Decision{}, true
}

// verify checks the token with golang-jwt and returns its claims and expiry. Signature
// checks, base64url decoding and the time, issuer and audience checks are the library's;
// this function picks the keys and turns its errors into constant reasons.
func (a *JWTAuthorizer) verify(ctx context.Context, tok string) (map[string]any, time.Time, Decision, bool) {
	fail := func(status int, reason string) (map[string]any, time.Time, Decision, bool) {
		return nil, time.Time{}, deny(status, reason), false
	}
	if len(tok) > MaxTokenBytes {
		return fail(http.StatusUnauthorized, reasonTooLarge)
	}
	if len(a.algs) == 0 {
		// Anonymous only: no token can be verified (and an empty WithValidMethods would
		// check nothing).
		return fail(http.StatusUnauthorized, reasonBadAlg)
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(a.algs),
		jwt.WithJSONNumber(),
		jwt.WithStrictDecoding(),
		jwt.WithLeeway(a.cfg.Leeway),
		jwt.WithTimeFunc(a.cfg.NowFunc),
	}
	if a.cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(a.cfg.Issuer))
	}
	if a.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(a.cfg.Audience))
	}
	var claims jwt.MapClaims
	token, err := jwt.NewParser(opts...).ParseWithClaims(tok, &claims, func(t *jwt.Token) (any, error) {
		return a.keyFor(ctx, t)
	})
	if err != nil {
		return fail(http.StatusUnauthorized, a.reason(token, err))
	}
	if claims == nil {
		return fail(http.StatusUnauthorized, reasonBadClaims)
	}
	// The library has checked exp and nbf; these re-reads keep their range to sane dates
	// (a NumericDate from 0 to year 5138) and give exp to the decision unrounded.
	var exp time.Time
	for _, name := range []string{"exp", "nbf"} {
		v, present := claims[name]
		if !present {
			continue
		}
		t, ok := numericDate(v)
		if !ok {
			return fail(http.StatusUnauthorized, reasonBadClaims)
		}
		if name == "exp" {
			exp = t
		}
	}
	return claims, exp, Decision{}, true
}

// Errors keyFor returns, mapped to reasons by reason.
var (
	errCritHeader = errors.New("realtime: token has a crit header")
	errAlgRefused = errors.New("realtime: token algorithm not accepted")
	errUnknownKey = errors.New("realtime: no key for the token's kid")
)

// keyFor returns the keys that may have signed t: the configured key of its algorithm and
// the JWKS keys of that algorithm with its kid (all of them when it has no kid). A kid no
// JWKS holds makes each JWKS refresh, at most once per JWKSMinRefreshInterval.
func (a *JWTAuthorizer) keyFor(ctx context.Context, t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		return nil, errCritHeader
	}
	alg := t.Method.Alg()
	kid, _ := t.Header["kid"].(string)
	var keys []jwt.VerificationKey
	switch alg {
	case jwt.SigningMethodHS256.Alg():
		if a.hs != nil {
			keys = append(keys, a.hs)
		}
	case jwt.SigningMethodRS256.Alg():
		if a.rs != nil {
			keys = append(keys, a.rs)
		}
	case jwt.SigningMethodES256.Alg():
		if a.es != nil {
			keys = append(keys, a.es)
		}
	default:
		return nil, errAlgRefused
	}
	if alg != jwt.SigningMethodHS256.Alg() {
		for _, set := range a.jwks {
			keys = append(keys, set.keys(ctx, alg, kid)...)
		}
	}
	if len(keys) == 0 {
		if len(a.jwks) > 0 && alg != jwt.SigningMethodHS256.Alg() {
			return nil, errUnknownKey
		}
		return nil, errAlgRefused
	}
	return jwt.VerificationKeySet{Keys: keys}, nil
}

// reason names why golang-jwt refused a token, as a constant reason.
func (a *JWTAuthorizer) reason(token *jwt.Token, err error) string {
	switch {
	case errors.Is(err, errCritHeader):
		return reasonUnsupportedCrit
	case errors.Is(err, errAlgRefused):
		return reasonBadAlg
	case errors.Is(err, errUnknownKey):
		return reasonUnknownKey
	case errors.Is(err, jwt.ErrTokenMalformed):
		return reasonMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// The alg header names no algorithm the library knows.
		return reasonBadAlg
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		if token == nil || token.Method == nil || !slices.Contains(a.algs, token.Method.Alg()) {
			return reasonBadAlg
		}
		return reasonBadSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return reasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return reasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return reasonBadIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return reasonBadAudience
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return reasonBadClaims
	default:
		return reasonMalformed
	}
}

// numericDate converts a JWT NumericDate (seconds since the epoch, maybe fractional).
func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1e11 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// grant parses the token's patterns once. Invalid patterns match nothing and are logged.
func (a *JWTAuthorizer) grant(ctx context.Context, claims map[string]any) []pattern {
	raw, ok := claims[a.cfg.ClaimName].([]any)
	if !ok {
		return nil
	}
	ps := make([]pattern, 0, len(raw))
	for i, v := range raw {
		s, ok := v.(string)
		if !ok {
			a.logger.WarnContext(ctx, "token pattern ignored",
				slog.String("claim", a.cfg.ClaimName), slog.Int("index", i),
				slog.String("error", "not a string"))
			continue
		}
		p, err := parsePattern(s, claims)
		if err != nil {
			a.logger.WarnContext(ctx, "token pattern ignored",
				slog.String("claim", a.cfg.ClaimName), slog.Int("index", i),
				slog.String("pattern", s), slog.String("error", err.Error()))
			continue
		}
		ps = append(ps, p)
	}
	return ps
}

// JWTSummary describes a [JWTAuthorizer]'s settings without its secret: what a person
// checks to understand who may subscribe. It holds no key, and JWKS URLs come with their
// query and password hidden.
type JWTSummary struct {
	// Algorithms are the algorithms some key enables (HS256, RS256, ES256).
	Algorithms []string `json:"algorithms"`
	// HS256Secret, RS256PublicKey and ES256PublicKey report which keys are configured.
	HS256Secret    bool `json:"hs256_secret"`
	RS256PublicKey bool `json:"rs256_public_key"`
	ES256PublicKey bool `json:"es256_public_key"`
	// JWKSURLs are the key sets' URLs.
	JWKSURLs          []string `json:"jwks_urls,omitempty"`
	ClaimName         string   `json:"claim_name"`
	Issuer            string   `json:"issuer,omitempty"`
	Audience          string   `json:"audience,omitempty"`
	LeewaySeconds     float64  `json:"leeway_seconds"`
	AllowAnonymous    bool     `json:"allow_anonymous"`
	AnonymousChannels []string `json:"anonymous_channels,omitempty"`
}

// Summary returns the authorizer's settings without its secret.
func (a *JWTAuthorizer) Summary() JWTSummary {
	s := JWTSummary{
		Algorithms: slices.Clone(a.algs), HS256Secret: a.hs != nil, RS256PublicKey: a.rs != nil, ES256PublicKey: a.es != nil,
		ClaimName: a.cfg.ClaimName, Issuer: a.cfg.Issuer, Audience: a.cfg.Audience, LeewaySeconds: a.cfg.Leeway.Seconds(),
		AllowAnonymous: a.cfg.AllowAnonymous, AnonymousChannels: slices.Clone(a.cfg.AnonymousChannels),
	}
	for _, u := range a.cfg.JWKSURLs {
		s.JWKSURLs = append(s.JWKSURLs, redact.URL(u))
	}
	return s
}
