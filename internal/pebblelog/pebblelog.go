// Package pebblelog sends Pebble's log messages to slog, for walflow's stores on Pebble
// (the ledger, the indexes, the state store).
package pebblelog

import (
	"fmt"
	"log/slog"
)

// Logger is a pebble.Logger: information at debug level, errors at error level. Fatalf
// logs and panics, as Pebble expects it not to return.
type Logger struct{ Log *slog.Logger }

// Infof logs at debug level.
func (p Logger) Infof(format string, args ...any) {
	p.Log.Debug("pebble: " + fmt.Sprintf(format, args...))
}

// Errorf logs at error level.
func (p Logger) Errorf(format string, args ...any) {
	p.Log.Error("pebble: " + fmt.Sprintf(format, args...))
}

// Fatalf logs at error level and panics.
func (p Logger) Fatalf(format string, args ...any) {
	msg := "pebble: " + fmt.Sprintf(format, args...)
	p.Log.Error(msg)
	panic(msg)
}
