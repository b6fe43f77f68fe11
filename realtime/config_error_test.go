package realtime

import (
	"errors"
	"strings"
	"testing"

	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/ledger/memory"
)

// TestConfigErrorNamesTheSetting: every setting NewJWTAuthorizer and NewGateway refuse is
// a *ConfigError naming the configuration, the field and the list entry, so that a caller
// maps it to where the setting came from without reading the text.
func TestConfigErrorNamesTheSetting(t *testing.T) {
	t.Parallel()
	router, err := channel.NewRouter(nil)
	if err != nil {
		t.Fatal(err)
	}
	led := memory.New(nil)
	t.Cleanup(func() { led.Close() })
	gateway := func(c GatewayConfig) error { _, err := NewGateway(c); return err }
	jwt := func(c JWTConfig) error { _, err := NewJWTAuthorizer(c); return err }
	tests := []struct {
		name          string
		err           error
		config, field string
		index         int
		problem       string // a substring of Err
	}{
		{"no key", jwt(JWTConfig{}), "JWTConfig", "", -1, "no key"},
		{"short secret", jwt(JWTConfig{HS256Secret: []byte("short")}), "JWTConfig", "HS256Secret", -1, "5 bytes are too few"},
		{"not PEM", jwt(JWTConfig{RS256PublicKeyPEM: []byte("nope")}), "JWTConfig", "RS256PublicKeyPEM", -1, "no PEM block"},
		{"not PEM for ES256", jwt(JWTConfig{ES256PublicKeyPEM: []byte("nope")}), "JWTConfig", "ES256PublicKeyPEM", -1, "no PEM block"},
		{"bad JWKS URL", jwt(JWTConfig{JWKSURLs: []string{"https://a.example/jwks", "http://a.example/jwks"}}), "JWTConfig", "JWKSURLs", 1, "must be https"},
		{"negative refresh", jwt(JWTConfig{JWKSURLs: []string{"https://a.example/jwks"}, JWKSRefreshInterval: -1}), "JWTConfig", "JWKSRefreshInterval", -1, "negative"},
		{"negative min refresh", jwt(JWTConfig{JWKSURLs: []string{"https://a.example/jwks"}, JWKSMinRefreshInterval: -1}), "JWTConfig", "JWKSMinRefreshInterval", -1, "negative"},
		{"anonymous channels without AllowAnonymous", jwt(JWTConfig{HS256Secret: testSecret, AnonymousChannels: []string{"comments"}}), "JWTConfig", "AnonymousChannels", -1, "AllowAnonymous"},
		{"bad anonymous channel", jwt(JWTConfig{AllowAnonymous: true, AnonymousChannels: []string{"posts", "post*"}}), "JWTConfig", "AnonymousChannels", 1, `"post*" is not a channel pattern`},
		{"no ledger", gateway(GatewayConfig{Router: router, Authorizer: AllowAll{}}), "GatewayConfig", "Ledger", -1, "nil"},
		{"no authorizer", gateway(GatewayConfig{Ledger: led, Router: router}), "GatewayConfig", "Authorizer", -1, "AllowAll"},
		{"origin with a path", gateway(GatewayConfig{Ledger: led, Router: router, Authorizer: AllowAll{}, AllowedOrigins: []string{"a.example", "b.example", "https://c.example/x"}}), "GatewayConfig", "AllowedOrigins", 2, "not an origin pattern"},
	}
	for _, tt := range tests {
		var ce *ConfigError
		if !errors.As(tt.err, &ce) {
			t.Errorf("%s: %v is not a *ConfigError", tt.name, tt.err)
			continue
		}
		if ce.Config != tt.config || ce.Field != tt.field || ce.Index != tt.index || !strings.Contains(ce.Err.Error(), tt.problem) {
			t.Errorf("%s: ConfigError{%q, %q, %d, %q}, want {%q, %q, %d, containing %q}", tt.name, ce.Config, ce.Field, ce.Index, ce.Err, tt.config, tt.field, tt.index, tt.problem)
		}
		if !strings.HasPrefix(ce.Error(), "realtime: "+tt.config) || strings.Contains(ce.Err.Error(), "realtime:") {
			t.Errorf("%s: Error() = %q, Err = %q; want the prefix once, in Error", tt.name, ce.Error(), ce.Err)
		}
	}
}
