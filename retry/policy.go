package retry

import "time"

// Defaults of [Policy]: a first retry after 500ms, each wait doubling up to 10s, and five
// retries before the consumer halts.
const (
	MinDefault        = 500 * time.Millisecond
	MultiplierDefault = 2.0
	MaxDefault        = 10 * time.Second
	MaxRetriesDefault = 5
)

// Policy says how a failing event is retried before its consumer halts. The zero value is
// the default policy.
type Policy struct {
	// Min is the wait before the first retry. Default 500ms.
	Min time.Duration
	// Multiplier grows the wait after each retry; values below 1 mean the default. Default 2.
	Multiplier float64
	// Max caps the wait. Default 10s.
	Max time.Duration
	// MaxRetries is how many retries follow the first failure before the consumer halts.
	// Default 5; a negative value means none: the first failure halts.
	MaxRetries int
}

// WithDefaults returns p with its zero fields set to their defaults. A negative MaxRetries
// stays negative (no retries), so applying WithDefaults twice gives the same policy.
func (p Policy) WithDefaults() Policy {
	if p.Min <= 0 {
		p.Min = MinDefault
	}
	if p.Multiplier < 1 {
		p.Multiplier = MultiplierDefault
	}
	if p.Max <= 0 {
		p.Max = MaxDefault
	}
	if p.MaxRetries == 0 {
		p.MaxRetries = MaxRetriesDefault
	}
	return p
}

// retries is how many retries follow the first failure: MaxRetries, or 0 when it is
// negative.
func (p Policy) retries() int { return max(p.MaxRetries, 0) }

// Delay is the wait before retry number attempt (from 1): Min, multiplied by Multiplier
// for each retry after the first, never more than Max. Call it on a policy with defaults.
func (p Policy) Delay(attempt int) time.Duration {
	d := float64(p.Min)
	for i := 1; i < attempt; i++ {
		d *= p.Multiplier
		if d >= float64(p.Max) {
			return p.Max
		}
	}
	return min(time.Duration(d), p.Max)
}
