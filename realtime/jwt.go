package realtime

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net/http"
	"strings"
	"time"

	"github.com/walflow/walflow/channel"
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
)

// JWTConfig configures a [JWTAuthorizer]. At least one key must be set unless
// AllowAnonymous is true. Each configured key enables exactly its algorithm; a token whose
// alg header names another algorithm (including none) is denied.
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
	return c
}

// JWTAuthorizer is an [Authorizer] that verifies JSON Web Tokens (RFC 7519) signed with
// HS256, RS256 or ES256 and allows the channels their patterns cover. It is safe for
// concurrent use.
type JWTAuthorizer struct {
	cfg    JWTConfig
	hs     []byte
	rs     *rsa.PublicKey
	es     *ecdsa.PublicKey
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
			return nil, fmt.Errorf("realtime: JWTConfig.HS256Secret has %d bytes; use at least %d random bytes",
				len(cfg.HS256Secret), minHS256SecretBytes)
		}
		a.hs = bytes.Clone(cfg.HS256Secret)
	}
	if len(cfg.RS256PublicKeyPEM) > 0 {
		k, err := parsePublicKeyPEM(cfg.RS256PublicKeyPEM)
		if err != nil {
			return nil, fmt.Errorf("realtime: JWTConfig.RS256PublicKeyPEM: %w", err)
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("realtime: JWTConfig.RS256PublicKeyPEM holds a %T, not an RSA public key", k)
		}
		if rk.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("realtime: JWTConfig.RS256PublicKeyPEM is a %d-bit RSA key; use at least %d bits",
				rk.N.BitLen(), minRSABits)
		}
		a.rs = rk
	}
	if len(cfg.ES256PublicKeyPEM) > 0 {
		k, err := parsePublicKeyPEM(cfg.ES256PublicKeyPEM)
		if err != nil {
			return nil, fmt.Errorf("realtime: JWTConfig.ES256PublicKeyPEM: %w", err)
		}
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok || ek.Curve != elliptic.P256() {
			return nil, errors.New("realtime: JWTConfig.ES256PublicKeyPEM is not a P-256 ECDSA public key; ES256 needs a P-256 key")
		}
		a.es = ek
	}
	if a.hs == nil && a.rs == nil && a.es == nil && !cfg.AllowAnonymous {
		return nil, errors.New("realtime: JWTConfig has no key; set HS256Secret, RS256PublicKeyPEM or ES256PublicKeyPEM, or set AllowAnonymous")
	}
	if len(cfg.AnonymousChannels) > 0 && !cfg.AllowAnonymous {
		return nil, errors.New("realtime: JWTConfig.AnonymousChannels is set but AllowAnonymous is false; set AllowAnonymous to allow them")
	}
	for i, s := range cfg.AnonymousChannels {
		p, err := parsePattern(s, nil)
		if err != nil {
			return nil, fmt.Errorf("realtime: JWTConfig.AnonymousChannels[%d] %q: %w", i, s, err)
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
	claims, exp, d, ok := a.verify(tok)
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

// verify checks the token and returns its claims and expiry.
func (a *JWTAuthorizer) verify(tok string) (map[string]any, time.Time, Decision, bool) {
	fail := func(status int, reason string) (map[string]any, time.Time, Decision, bool) {
		return nil, time.Time{}, deny(status, reason), false
	}
	if len(tok) > MaxTokenBytes {
		return fail(http.StatusUnauthorized, reasonTooLarge)
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return fail(http.StatusUnauthorized, reasonMalformed)
	}
	enc := base64.RawURLEncoding.Strict()
	hb, err1 := enc.DecodeString(parts[0])
	pb, err2 := enc.DecodeString(parts[1])
	sig, err3 := enc.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return fail(http.StatusUnauthorized, reasonMalformed)
	}
	var header struct {
		Alg  string          `json:"alg"`
		Crit json.RawMessage `json:"crit"`
	}
	if err := json.Unmarshal(hb, &header); err != nil {
		return fail(http.StatusUnauthorized, reasonMalformed)
	}
	if header.Crit != nil {
		return fail(http.StatusUnauthorized, reasonUnsupportedCrit)
	}
	signed := []byte(tok[:len(parts[0])+1+len(parts[1])])
	digest := sha256.Sum256(signed)
	var valid bool
	// Each algorithm is accepted only when its own key is configured, so none and
	// HS256-signed-with-the-RSA-public-key never reach a verifier.
	switch header.Alg {
	case "HS256":
		if a.hs == nil {
			return fail(http.StatusUnauthorized, reasonBadAlg)
		}
		m := hmac.New(sha256.New, a.hs)
		m.Write(signed)
		valid = hmac.Equal(m.Sum(nil), sig)
	case "RS256":
		if a.rs == nil {
			return fail(http.StatusUnauthorized, reasonBadAlg)
		}
		valid = rsa.VerifyPKCS1v15(a.rs, crypto.SHA256, digest[:], sig) == nil
	case "ES256":
		if a.es == nil {
			return fail(http.StatusUnauthorized, reasonBadAlg)
		}
		if len(sig) == 64 {
			r := new(big.Int).SetBytes(sig[:32])
			s := new(big.Int).SetBytes(sig[32:])
			valid = ecdsa.Verify(a.es, digest[:], r, s)
		}
	default:
		return fail(http.StatusUnauthorized, reasonBadAlg)
	}
	if !valid {
		return fail(http.StatusUnauthorized, reasonBadSignature)
	}

	dec := json.NewDecoder(bytes.NewReader(pb))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil || claims == nil || dec.More() {
		return fail(http.StatusUnauthorized, reasonBadClaims)
	}
	now := a.cfg.NowFunc()
	var exp time.Time
	if v, present := claims["exp"]; present {
		t, ok := numericDate(v)
		if !ok {
			return fail(http.StatusUnauthorized, reasonBadClaims)
		}
		if !now.Before(t.Add(a.cfg.Leeway)) {
			return fail(http.StatusUnauthorized, reasonExpired)
		}
		exp = t
	}
	if v, present := claims["nbf"]; present {
		t, ok := numericDate(v)
		if !ok {
			return fail(http.StatusUnauthorized, reasonBadClaims)
		}
		if now.Add(a.cfg.Leeway).Before(t) {
			return fail(http.StatusUnauthorized, reasonNotYetValid)
		}
	}
	if a.cfg.Issuer != "" {
		if iss, _ := claims["iss"].(string); iss != a.cfg.Issuer {
			return fail(http.StatusUnauthorized, reasonBadIssuer)
		}
	}
	if a.cfg.Audience != "" && !hasAudience(claims["aud"], a.cfg.Audience) {
		return fail(http.StatusUnauthorized, reasonBadAudience)
	}
	return claims, exp, Decision{}, true
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

// hasAudience reports whether aud (a string or an array of strings) holds want.
func hasAudience(aud any, want string) bool {
	switch v := aud.(type) {
	case string:
		return v == want
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok && s == want {
				return true
			}
		}
	}
	return false
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
