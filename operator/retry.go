package operator

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/event"
)

// Defaults of [RetryPolicy]: a first retry after 500ms, each wait doubling up to 10s, and
// five retries before the operator halts.
const (
	RetryMinDefault        = 500 * time.Millisecond
	RetryMultiplierDefault = 2.0
	RetryMaxDefault        = 10 * time.Second
	MaxRetriesDefault      = 5
)

// RetryPolicy says how a failing event is retried before its operator halts. The zero value
// is the default policy.
type RetryPolicy struct {
	// Min is the wait before the first retry. Default 500ms.
	Min time.Duration
	// Multiplier grows the wait after each retry. Default 2.
	Multiplier float64
	// Max caps the wait. Default 10s.
	Max time.Duration
	// MaxRetries is how many retries follow the first failure before the operator halts.
	// Default 5; a negative value means none.
	MaxRetries int
}

// WithDefaults returns p with its zero fields set to their defaults, and a negative
// MaxRetries as 0. Runners call it; projectors share the policy.
func (p RetryPolicy) WithDefaults() RetryPolicy {
	if p.Min <= 0 {
		p.Min = RetryMinDefault
	}
	if p.Multiplier < 1 {
		p.Multiplier = RetryMultiplierDefault
	}
	if p.Max <= 0 {
		p.Max = RetryMaxDefault
	}
	if p.MaxRetries == 0 {
		p.MaxRetries = MaxRetriesDefault
	}
	if p.MaxRetries < 0 {
		p.MaxRetries = 0
	}
	return p
}

// Delay is the wait before retry number attempt (from 1).
func (p RetryPolicy) Delay(attempt int) time.Duration {
	d := float64(p.Min)
	for i := 1; i < attempt; i++ {
		d *= p.Multiplier
		if d >= float64(p.Max) {
			return p.Max
		}
	}
	return min(time.Duration(d), p.Max)
}

// ErrorReporter receives operator failures. Its methods are called from the operator's
// goroutine and must not block for long.
type ErrorReporter interface {
	// Retry reports a failure that will be retried after delay (attempt counts from 1).
	Retry(ctx context.Context, operator string, e *event.Event, attempt int, delay time.Duration, err error)
	// Halted reports the final failure: the operator stopped at e.
	Halted(ctx context.Context, operator string, e *event.Event, err error)
}

// LogReporter reports failures to a slog.Logger: retries as warnings, halts as errors.
type LogReporter struct{ Logger *slog.Logger }

// Retry logs a retry.
func (r LogReporter) Retry(ctx context.Context, op string, e *event.Event, attempt int, delay time.Duration, err error) {
	r.Logger.WarnContext(ctx, "operator failed; retrying", slog.String("operator", op), slog.Uint64("position", uint64(e.Position)),
		slog.String("entity", e.Name), slog.String("type", e.Type.String()), slog.Int("attempt", attempt),
		slog.Duration("delay", delay), slog.Any("error", err))
}

// Halted logs a halt.
func (r LogReporter) Halted(ctx context.Context, op string, e *event.Event, err error) {
	r.Logger.ErrorContext(ctx, "operator halted; fix the cause, then restart it (walflow operator restart) or skip the event (walflow operator skip)",
		slog.String("operator", op), slog.Uint64("position", uint64(e.Position)), slog.String("entity", e.Name),
		slog.String("type", e.Type.String()), slog.Any("error", err))
}

// SleepFunc waits d or until ctx ends. Tests pass a fake one to observe retry delays
// without waiting.
type SleepFunc func(ctx context.Context, d time.Duration) error

// Sleep is the SleepFunc runners use by default: a timer.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// IsPermanent reports whether err cannot heal by retrying the same event, so that its
// operator halts at once instead of after its retries: an event that lacks its id column
// ([*IDColumnError]), or a PostgreSQL error of class 42 (syntax error or access rule
// violation: a query that does not parse, a missing table, column or privilege) or class
// 22 (data exception: a value the statement cannot take). Each needs a person to change
// the configuration, the schema or the data; restarting the operator then retries the
// event.
func IsPermanent(err error) bool {
	var ce *IDColumnError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pgerrcode.IsSyntaxErrororAccessRuleViolation(pe.Code) || pgerrcode.IsDataException(pe.Code)
	}
	return false
}
