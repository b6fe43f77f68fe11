package retry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/retry"
)

func TestPolicyDefaults(t *testing.T) {
	t.Parallel()
	got := retry.Policy{}.WithDefaults()
	want := retry.Policy{Min: retry.MinDefault, Multiplier: retry.MultiplierDefault, Max: retry.MaxDefault, MaxRetries: retry.MaxRetriesDefault}
	if got != want {
		t.Fatalf("Policy{}.WithDefaults() = %+v, want %+v", got, want)
	}
	none := retry.Policy{MaxRetries: -1}.WithDefaults()
	if again := none.WithDefaults(); again != none || none.MaxRetries >= 0 {
		t.Fatalf("WithDefaults of MaxRetries -1 = %+v, then %+v; want it negative both times", none, again)
	}
	set := retry.Policy{Min: time.Second, Multiplier: 3, Max: time.Minute, MaxRetries: 2}
	if got := set.WithDefaults(); got != set {
		t.Fatalf("WithDefaults changed set fields: %+v", got)
	}
}

func TestPolicyDelay(t *testing.T) {
	t.Parallel()
	p := retry.Policy{Min: 100 * time.Millisecond, Multiplier: 3, Max: time.Second}.WithDefaults()
	var got []time.Duration
	for a := 1; a <= 5; a++ {
		got = append(got, p.Delay(a))
	}
	want := []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, 900 * time.Millisecond, time.Second, time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("delays = %v, want %v", got, want)
	}
}

// permanentErr says it is permanent, as operator.IDColumnError does.
type permanentErr struct{ permanent bool }

func (e permanentErr) Error() string   { return "permanent error" }
func (e permanentErr) Permanent() bool { return e.permanent }

func TestClassify(t *testing.T) {
	t.Parallel()
	pg := func(code string) error { return fmt.Errorf("query: %w", &pgconn.PgError{Code: code}) }
	for _, tt := range []struct {
		err                  error
		permanent, transient bool
	}{
		{pg(pgerrcode.SyntaxError), true, false},
		{pg(pgerrcode.UndefinedColumn), true, false},
		{pg(pgerrcode.UndefinedTable), true, false},
		{pg(pgerrcode.InsufficientPrivilege), true, false},
		{pg(pgerrcode.InvalidTextRepresentation), true, false},
		{pg(pgerrcode.DivisionByZero), true, false},
		{pg(pgerrcode.UniqueViolation), false, false},
		{pg(pgerrcode.DeadlockDetected), false, false},
		{pg(pgerrcode.SerializationFailure), false, false},
		{pg(pgerrcode.AdminShutdown), false, true},
		{pg(pgerrcode.CrashShutdown), false, true},
		{pg(pgerrcode.CannotConnectNow), false, true},
		{pg(pgerrcode.ConnectionFailure), false, true},
		{fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Err: errors.New("connection refused")}), false, true},
		{fmt.Errorf("event: %w", permanentErr{permanent: true}), true, false},
		{fmt.Errorf("event: %w", permanentErr{permanent: false}), false, false},
		{errors.New("handler failed"), false, false},
	} {
		if got := retry.IsPermanent(tt.err); got != tt.permanent {
			t.Errorf("IsPermanent(%v) = %v", tt.err, got)
		}
		if got := retry.IsTransient(tt.err); got != tt.transient {
			t.Errorf("IsTransient(%v) = %v", tt.err, got)
		}
	}
}

// log records what a Loop does, in order.
type log struct {
	mu    sync.Mutex
	lines []string
}

func (l *log) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *log) Retry(_ context.Context, c retry.Consumer, e *event.Event, attempt int, delay time.Duration, err error) {
	l.add("retry %s %d #%d %s %v", c, e.Position, attempt, delay, err)
}

func (l *log) Halted(_ context.Context, c retry.Consumer, e *event.Event, err error) {
	l.add("halted %s %d %v", c, e.Position, err)
}

func (l *log) sleep(_ context.Context, d time.Duration) error {
	l.add("sleep %s", d)
	return nil
}

func (l *log) check(t *testing.T, want ...string) {
	t.Helper()
	if !slices.Equal(l.lines, want) {
		t.Fatalf("the loop did\n%q\nwant\n%q", l.lines, want)
	}
}

func newLoop(l *log, maxRetries int) *retry.Loop {
	return &retry.Loop{
		Consumer:  retry.Consumer{Kind: retry.Operator, Name: "op"},
		Policy:    retry.Policy{Min: time.Millisecond, MaxRetries: maxRetries},
		Reporter:  l,
		SleepFunc: l.sleep,
		HaltFunc:  func(_ context.Context, cause error) { l.add("record halt %v", cause) },
	}
}

// results returns a try that returns errs one by one, then nil.
func results(l *log, errs ...error) func(context.Context) error {
	return func(context.Context) error {
		l.add("try")
		if len(errs) == 0 {
			return nil
		}
		err := errs[0]
		errs = errs[1:]
		return err
	}
}

func TestLoopRetriesThenHalts(t *testing.T) {
	t.Parallel()
	var l log
	boom := errors.New("boom")
	e := &event.Event{Position: 9}
	err := newLoop(&l, 2).Run(context.Background(), e, boom, results(&l, boom, boom, boom))
	if !errors.Is(err, retry.ErrHalted) || !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want ErrHalted wrapping the cause", err)
	}
	l.check(t,
		"retry operator op 9 #1 1ms boom", "sleep 1ms", "try",
		"retry operator op 9 #2 2ms boom", "sleep 2ms", "try",
		"record halt boom", "halted operator op 9 boom")
}

func TestLoopSucceeds(t *testing.T) {
	t.Parallel()
	var l log
	boom := errors.New("boom")
	if err := newLoop(&l, 5).Run(context.Background(), &event.Event{Position: 1}, boom, results(&l, boom)); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	l.check(t, "retry operator op 1 #1 1ms boom", "sleep 1ms", "try", "retry operator op 1 #2 2ms boom", "sleep 2ms", "try")
}

func TestLoopPermanentHaltsAtOnce(t *testing.T) {
	t.Parallel()
	var l log
	bad := &pgconn.PgError{Code: pgerrcode.UndefinedTable}
	err := newLoop(&l, 5).Run(context.Background(), &event.Event{Position: 3}, bad, results(&l))
	if !errors.Is(err, retry.ErrHalted) {
		t.Fatalf("Run = %v, want ErrHalted", err)
	}
	l.check(t, "record halt "+bad.Error(), "halted operator op 3 "+bad.Error())
}

func TestLoopTransientSpendsNoRetries(t *testing.T) {
	t.Parallel()
	var l log
	away := &pgconn.PgError{Code: pgerrcode.AdminShutdown}
	boom := errors.New("boom")
	// One retry: three outages in a row, then a failure (the retry), then success.
	err := newLoop(&l, 1).Run(context.Background(), &event.Event{Position: 4}, away, results(&l, away, away, boom))
	if err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	l.check(t, "sleep 1ms", "try", "sleep 2ms", "try", "sleep 4ms", "try",
		"retry operator op 4 #1 1ms boom", "sleep 1ms", "try")
}

func TestLoopTransientFunc(t *testing.T) {
	t.Parallel()
	var l log
	away := &pgconn.PgError{Code: pgerrcode.AdminShutdown}
	loop := newLoop(&l, -1)
	loop.TransientFunc = func(error) bool { return false }
	if err := loop.Run(context.Background(), &event.Event{Position: 5}, away, results(&l)); !errors.Is(err, retry.ErrHalted) {
		t.Fatalf("Run = %v, want ErrHalted: with no transient failures and no retries the first failure halts", err)
	}
}

func TestLoopPark(t *testing.T) {
	t.Parallel()
	var l log
	boom := errors.New("boom")
	loop := newLoop(&l, -1)
	parked := false
	loop.ParkFunc = func(_ context.Context, err error) bool {
		if parked {
			return false
		}
		parked = true
		l.add("park %v", err)
		return true
	}
	err := loop.Run(context.Background(), &event.Event{Position: 6}, boom, results(&l, boom))
	if !errors.Is(err, retry.ErrHalted) {
		t.Fatalf("Run = %v, want ErrHalted", err)
	}
	l.check(t, "park boom", "try", "record halt boom", "halted operator op 6 boom")
}

func TestLoopStop(t *testing.T) {
	t.Parallel()
	var l log
	taken := errors.New("taken over")
	err := newLoop(&l, 5).Run(context.Background(), &event.Event{}, errors.New("boom"), results(&l, retry.Stop(taken)))
	if err != taken {
		t.Fatalf("Run = %v, want the error given to Stop", err)
	}
}

func TestLoopContextEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var l log
	loop := newLoop(&l, 5)
	err := loop.Run(ctx, &event.Event{}, errors.New("boom"), func(context.Context) error {
		cancel()
		return errors.New("boom")
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	// The real Sleep returns at once when ctx has ended.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if err := retry.Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep = %v, want context.Canceled", err)
	}
}

func TestLogReporter(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	r := retry.LogReporter{Logger: slog.New(slog.NewTextHandler(&b, nil))}
	r.Halted(context.Background(), retry.Consumer{Kind: retry.Projector, Name: "mailer"}, &event.Event{Position: 8}, errors.New("boom"))
	got := b.String()
	for _, want := range []string{"projector halted", "component=projector", "projector=mailer", "position=8", "error=boom", "Runner.Restart"} {
		if !strings.Contains(got, want) {
			t.Errorf("log %q lacks %q", got, want)
		}
	}
	if got := (retry.Consumer{Kind: retry.Index, Name: "by_user"}).String(); got != "index by_user" {
		t.Errorf("Consumer.String() = %q", got)
	}
}
