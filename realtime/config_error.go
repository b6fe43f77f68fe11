package realtime

import (
	"fmt"
	"strconv"
)

// ConfigError is a setting of a [GatewayConfig] or a [JWTConfig] that [NewGateway] or
// [NewJWTAuthorizer] refuses. Callers that read the settings from a file (the walflow
// command line) map Config, Field and Index to the place in the file, and show Err.
type ConfigError struct {
	// Config is the configuration at fault: GatewayConfig or JWTConfig.
	Config string
	// Field is the setting at fault, a field of Config (HS256Secret, AllowedOrigins,
	// JWKSURLs, AnonymousChannels...); "" when the configuration as a whole is (a JWTConfig
	// with no key).
	Field string
	// Index is the entry at fault of a list Field (AllowedOrigins, JWKSURLs,
	// AnonymousChannels); -1 otherwise.
	Index int
	// Err is what is wrong and the fix, without the setting's name. It never shows a
	// secret.
	Err error
}

func (e *ConfigError) Error() string {
	s := "realtime: " + e.Config
	if e.Field != "" {
		s += "." + e.Field
	}
	if e.Index >= 0 {
		s += "[" + strconv.Itoa(e.Index) + "]"
	}
	return s + ": " + e.Err.Error()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// configErrorf is a ConfigError about field of config (no entry).
func configErrorf(config, field, format string, args ...any) error {
	return &ConfigError{Config: config, Field: field, Index: -1, Err: fmt.Errorf(format, args...)}
}

// entryError is a ConfigError about entry i of the list field of config.
func entryError(config, field string, i int, err error) error {
	return &ConfigError{Config: config, Field: field, Index: i, Err: err}
}
