package cli

import (
	"log/slog"

	"github.com/walflow/walflow/internal/redact"
)

// redactedDSN is a PostgreSQL connection string that keeps its password out of logs and
// messages: it implements slog.LogValuer and fmt.Stringer with the password replaced by
// xxxxx, in the URL form (postgres://app:xxxxx@db/app, ?password=xxxxx) and in the
// key=value form (password=xxxxx).
type redactedDSN string

// LogValue logs the connection string without its password.
func (d redactedDSN) LogValue() slog.Value { return slog.StringValue(d.String()) }

// String returns the connection string without its password.
func (d redactedDSN) String() string { return redact.DSN(string(d)) }
