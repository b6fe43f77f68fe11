package retry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/walflow/walflow/event"
)

// ErrHalted is wrapped by the error [Loop.Run] returns when the consumer halted.
var ErrHalted = errors.New("retry: halted")

// Loop retries one failing event of a consumer. Set its fields, then call [Loop.Run]; a
// Loop holds no state between runs and may be reused.
type Loop struct {
	// Consumer is the failing consumer, for the reporter and the logs. Required.
	Consumer Consumer
	// Policy is the backoff and the number of retries. The zero value is the default
	// policy ([Policy.WithDefaults]).
	Policy Policy
	// Reporter receives each retry and the halt. Required.
	Reporter Reporter
	// SleepFunc waits between attempts. Default [Sleep].
	SleepFunc SleepFunc
	// Logger receives a warning at each wait for the database. Default: discarded.
	Logger *slog.Logger
	// TransientFunc tells the failures that are waited out without spending retries.
	// Default [IsTransient].
	TransientFunc func(error) bool
	// PermanentFunc tells the failures that halt at once. Default [IsPermanent].
	PermanentFunc func(error) bool
	// ParkFunc, when set, is asked before the consumer halts on err: it returns true when
	// it set the event aside in part (an operator parks it for one derived row), and the
	// loop then tries the event again at once with fresh retries. Default: never.
	ParkFunc func(ctx context.Context, err error) bool
	// HaltFunc records that the consumer halted on the event with cause. It is called
	// before Reporter.Halted, so that the reporter sees only recorded halts. Default: none.
	HaltFunc func(ctx context.Context, cause error)
}

// stopError carries the error a try stops the loop with.
type stopError struct{ err error }

func (s *stopError) Error() string { return s.err.Error() }
func (s *stopError) Unwrap() error { return s.err }

// Stop wraps err so that a try returning it ends [Loop.Run] at once, which returns err
// itself: for failures that are not the event's (another process took the consumer over).
func Stop(err error) error { return &stopError{err: err} }

// Run retries the event e, which failed with err, by calling try until it returns nil.
// Before each try it waits: for a transient failure, the policy's delay for the number
// of transient failures in a row, spending no retry; for any other failure, the policy's
// delay for the retry's number, reported to Reporter.Retry. When the retries are spent,
// or the failure is permanent, the consumer halts (unless ParkFunc parks the event): Run
// calls HaltFunc, then Reporter.Halted, and returns an error wrapping [ErrHalted] and the
// cause.
//
// Run returns nil once try succeeded; ctx's error (or SleepFunc's) when ctx ended first;
// and err itself when try returned [Stop](err).
func (l *Loop) Run(ctx context.Context, e *event.Event, err error, try func(context.Context) error) error {
	p := l.Policy.WithDefaults()
	sleep, transientf, permanentf, log := l.SleepFunc, l.TransientFunc, l.PermanentFunc, l.Logger
	if sleep == nil {
		sleep = Sleep
	}
	if transientf == nil {
		transientf = IsTransient
	}
	if permanentf == nil {
		permanentf = IsPermanent
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for attempt, transient := 1, 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case transientf(err):
			// The database is unreachable: wait without spending the event's retries.
			transient++
			attempt--
			d := p.Delay(transient)
			kind := l.Consumer.Kind.String()
			log.WarnContext(ctx, kind+" cannot reach the database; waiting", slog.String(kind, l.Consumer.Name),
				slog.Duration("delay", d), slog.Any("error", err))
			if err := sleep(ctx, d); err != nil {
				return err
			}
		case attempt > p.retries() || permanentf(err):
			if l.ParkFunc != nil && l.ParkFunc(ctx, err) {
				attempt, transient = 0, 0
				break
			}
			if l.HaltFunc != nil {
				l.HaltFunc(ctx, err)
			}
			l.Reporter.Halted(ctx, l.Consumer, e, err)
			return fmt.Errorf("%w: %s at position %d: %w", ErrHalted, l.Consumer, e.Position, err)
		default:
			d := p.Delay(attempt)
			l.Reporter.Retry(ctx, l.Consumer, e, attempt, d, err)
			if err := sleep(ctx, d); err != nil {
				return err
			}
		}
		err = try(ctx)
		if err == nil {
			return nil
		}
		if s := (*stopError)(nil); errors.As(err, &s) {
			return s.err
		}
	}
}
