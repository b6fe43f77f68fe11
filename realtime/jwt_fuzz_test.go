package realtime

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/channel"
)

// FuzzJWTAuthorize feeds arbitrary tokens to an authorizer with an HS256 secret, an RS256
// and an ES256 key and a JWKS. It must never panic, and every token it allows must carry a
// signature that the standard library verifies, over the token's own first two parts, with
// a configured key of the token's algorithm.
func FuzzJWTAuthorize(f *testing.F) {
	rk := testRSAKey(f)
	ek := newECKey(f)
	jk := newECKey(f)
	srv := newJWKSServer(f, ecJWK("j", &jk.PublicKey))
	a, err := NewJWTAuthorizer(JWTConfig{
		HS256Secret:       testSecret,
		RS256PublicKeyPEM: publicPEM(f, &rk.PublicKey),
		ES256PublicKeyPEM: publicPEM(f, &ek.PublicKey),
		JWKSURLs:          []string{srv.URL},
		NowFunc:           func() time.Time { return testNow },
	})
	if err != nil {
		f.Fatal(err)
	}
	t := f
	grant := claims{"exp": testNow.Add(time.Hour).Unix(), "sub": "42", "channels": []string{"comments", "posts/{sub}"}}
	for _, tok := range []string{
		signToken(t, "HS256", testSecret, grant),
		signToken(t, "RS256", rk, grant),
		signToken(t, "ES256", ek, grant),
		kidToken(t, "ES256", "j", jk),
		kidToken(t, "ES256", "", jk),
		signToken(t, "none", nil, grant),
		signToken(t, "HS256", publicPEM(t, &rk.PublicKey), grant),
		signTokenHeader(t, map[string]any{"alg": "HS256", "crit": []string{"exp"}}, testSecret, grant),
		"", "a.b.c", "..", "eyJhbGciOiJIUzI1NiJ9.e30.",
	} {
		f.Add(tok)
	}
	chans := []channel.Channel{{Table: "comments"}, {Table: "posts", ID: "42"}}
	f.Fuzz(func(t *testing.T, tok string) {
		for _, ch := range chans {
			r := bearer("")
			r.Header.Set("Authorization", "Bearer "+tok)
			d := a.Authorize(r, ch)
			if d.Allow {
				if !signedByConfiguredKey(tok, testSecret, &rk.PublicKey, []*ecdsa.PublicKey{&ek.PublicKey, &jk.PublicKey}) {
					t.Fatalf("allowed %q on %s, which no configured key signed", tok, ch)
				}
			} else if d.Status != http.StatusUnauthorized && d.Status != http.StatusForbidden {
				t.Fatalf("denial with status %d", d.Status)
			}
		}
	})
}

// signedByConfiguredKey verifies tok with the standard library alone, as the oracle of
// FuzzJWTAuthorize.
func signedByConfiguredKey(tok string, secret []byte, rs crypto.PublicKey, es []*ecdsa.PublicKey) bool {
	tok = strings.TrimSpace(tok)
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	enc := base64.RawURLEncoding.Strict()
	hb, err1 := enc.DecodeString(parts[0])
	sig, err2 := enc.DecodeString(parts[2])
	if err1 != nil || err2 != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(hb, &h) != nil {
		return false
	}
	signed := []byte(parts[0] + "." + parts[1])
	digest := sha256.Sum256(signed)
	switch h.Alg {
	case "HS256":
		m := hmac.New(sha256.New, secret)
		m.Write(signed)
		return hmac.Equal(m.Sum(nil), sig)
	case "RS256":
		return rsaVerify(rs, digest[:], sig)
	case "ES256":
		if len(sig) != 64 {
			return false
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		for _, k := range es {
			if ecdsa.Verify(k, digest[:], r, s) {
				return true
			}
		}
	}
	return false
}

func rsaVerify(pub crypto.PublicKey, digest, sig []byte) bool {
	k, ok := pub.(*rsa.PublicKey)
	return ok && rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil
}
