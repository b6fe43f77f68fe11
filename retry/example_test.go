package retry_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/retry"
)

// printReporter prints what a Loop reports.
type printReporter struct{}

func (printReporter) Retry(_ context.Context, c retry.Consumer, e *event.Event, attempt int, delay time.Duration, err error) {
	fmt.Printf("%s: event %d failed (%v); retry %d in %s\n", c, e.Position, err, attempt, delay)
}

func (printReporter) Halted(_ context.Context, c retry.Consumer, e *event.Event, err error) {
	fmt.Printf("%s: halted at event %d: %v\n", c, e.Position, err)
}

// A projector's handler fails twice on an event, then succeeds: the loop waits 100ms,
// then 200ms, reporting each retry.
func ExampleLoop() {
	loop := retry.Loop{
		Consumer: retry.Consumer{Kind: retry.Projector, Name: "mailer"},
		Policy:   retry.Policy{Min: 100 * time.Millisecond, MaxRetries: 3},
		Reporter: printReporter{},
		// Do not wait in the example.
		SleepFunc: func(context.Context, time.Duration) error { return nil },
	}
	ev := &event.Event{Position: 42}
	fails := 1 // the handler fails once more after the first failure
	err := loop.Run(context.Background(), ev, errors.New("smtp: busy"), func(context.Context) error {
		if fails > 0 {
			fails--
			return errors.New("smtp: busy")
		}
		return nil
	})
	fmt.Println("done:", err)
	// Output:
	// projector mailer: event 42 failed (smtp: busy); retry 1 in 100ms
	// projector mailer: event 42 failed (smtp: busy); retry 2 in 200ms
	// done: <nil>
}

// When the retries run out, the consumer halts: HaltFunc records it, then the reporter
// sees it.
func ExampleLoop_halt() {
	loop := retry.Loop{
		Consumer:  retry.Consumer{Kind: retry.Operator, Name: "post_counts"},
		Policy:    retry.Policy{MaxRetries: -1}, // no retries: the first failure halts
		Reporter:  printReporter{},
		HaltFunc:  func(_ context.Context, cause error) { fmt.Println("recorded:", cause) },
		SleepFunc: func(context.Context, time.Duration) error { return nil },
	}
	err := loop.Run(context.Background(), &event.Event{Position: 7}, errors.New("deadlock"), func(context.Context) error {
		return nil // never called
	})
	fmt.Println(errors.Is(err, retry.ErrHalted))
	// Output:
	// recorded: deadlock
	// operator post_counts: halted at event 7: deadlock
	// true
}

// The default policy waits 500ms before the first retry, doubles the wait after each,
// caps it at 10s, and halts after 5 retries.
func ExamplePolicy_Delay() {
	p := retry.Policy{}.WithDefaults()
	for attempt := 1; attempt <= p.MaxRetries; attempt++ {
		fmt.Print(p.Delay(attempt), " ")
	}
	fmt.Println()
	// Output:
	// 500ms 1s 2s 4s 8s
}
