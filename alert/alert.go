// Package alert evaluates lag budgets: how much WAL the replication slot may retain, and how
// far each consumer of the ledger (operator, projector, index) may fall behind, in events and
// in time. [Evaluate] is pure: given a [Snapshot] and [Budgets] it returns one [Check] per
// budget that applies, active when crossed. [Monitor] keeps the last evaluation, logs each
// crossing once (WARN) and each recovery once (INFO), and exports walflow_alert_active.
package alert

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Alert names, the alert label of walflow_alert_active and Check.Alert.
const (
	// SlotRetainedWAL: the slot retains more WAL on the server than Budgets.SlotRetainedWAL.
	SlotRetainedWAL = "slot_retained_wal"
	// LagEvents: a consumer is more events behind the ledger head than its Lag.Events.
	LagEvents = "lag_events"
	// LagSeconds: the oldest event a consumer has not processed committed longer ago than
	// its Lag.Age.
	LagSeconds = "lag_seconds"
)

// Consumer kinds, Check.Kind. The slot's checks have kind "slot".
const (
	KindSlot      = "slot"
	KindOperator  = "operator"
	KindProjector = "projector"
	KindIndex     = "index"
)

// Budgets are the limits that raise alerts. The zero value sets none: every alert is off.
type Budgets struct {
	// SlotRetainedWAL is the most WAL, in bytes, the replication slot may keep on the
	// server (pg_current_wal_lsn() - restart_lsn, as walflow status shows it). The server
	// deletes none of it while the slot needs it, so a stalled slot fills the disk: set it
	// well below the free space (and below max_slot_wal_keep_size, past which PostgreSQL
	// invalidates the slot). Default 0: no budget.
	SlotRetainedWAL int64
	// Lag is the budget of every operator, projector and index. Default: none.
	Lag Lag
	// Overrides replace Lag, field by field, for the consumers of that name (an operator,
	// projector or index name; a name shared by several applies to each). A zero field
	// keeps Lag's; a negative one turns that budget off for the name. Default none.
	Overrides map[string]Lag
}

// Lag is a consumer's budget. A zero field sets no budget (in Overrides: keeps the
// default's); a negative one turns it off.
type Lag struct {
	// Events is how many ledger positions the consumer's checkpoint may trail the head by.
	Events int64
	// Age is how long ago the oldest event the consumer has not processed may have
	// committed: the commit time of the event right after its checkpoint, against the
	// clock of the walflow process. It is 0 while the consumer is caught up, however long
	// ago the last change was. Measured with whole-second precision.
	Age time.Duration
}

// For returns the budget of the consumer named name: Lag, with the name's override applied.
// Negative fields are returned as 0 (off).
func (b Budgets) For(name string) Lag {
	l := b.Lag
	if o, ok := b.Overrides[name]; ok {
		if o.Events != 0 {
			l.Events = o.Events
		}
		if o.Age != 0 {
			l.Age = o.Age
		}
	}
	l.Events, l.Age = max(l.Events, 0), max(l.Age, 0)
	return l
}

// IsZero reports whether no budget is set, so there is nothing to evaluate.
func (b Budgets) IsZero() bool {
	if b.SlotRetainedWAL > 0 || b.Lag.Events > 0 || b.Lag.Age > 0 {
		return false
	}
	for _, o := range b.Overrides {
		if o.Events > 0 || o.Age > 0 {
			return false
		}
	}
	return true
}

// Validate names the first bad field of b (as a field of walflow.Config) and the fix.
func (b Budgets) Validate() error {
	if b.SlotRetainedWAL < 0 {
		return fmt.Errorf("walflow: Alerts.SlotRetainedWAL is %d; set a positive number of bytes like 2<<30, or 0 for no budget", b.SlotRetainedWAL)
	}
	if b.Lag.Events < 0 || b.Lag.Age < 0 {
		return errors.New("walflow: Alerts.Lag has a negative field; set positive values, or 0 for no budget (negative values turn a default off only in Alerts.Overrides)")
	}
	if b.Lag.Age > 0 && b.Lag.Age < time.Second {
		return fmt.Errorf("walflow: Alerts.Lag.Age is %s; ages are measured in whole seconds, so set at least 1s", b.Lag.Age)
	}
	for name, o := range b.Overrides {
		if name == "" {
			return errors.New("walflow: Alerts.Overrides has an empty name; key it by the operator's, projector's or index's name")
		}
		if o.Age > 0 && o.Age < time.Second {
			return fmt.Errorf("walflow: Alerts.Overrides[%q].Age is %s; ages are measured in whole seconds, so set at least 1s (or a negative value to turn it off)", name, o.Age)
		}
	}
	return nil
}

// Consumer is one consumer's progress, measured for a [Snapshot].
type Consumer struct {
	// Kind is KindOperator, KindProjector or KindIndex.
	Kind string
	// Name is the consumer's name.
	Name string
	// Lag is how many ledger positions its checkpoint trails the head by.
	Lag uint64
	// Oldest is the commit time of the oldest event it has not processed (the one right
	// after its checkpoint); zero when it is caught up or when nobody measured it.
	Oldest time.Time
}

// Snapshot is the measured state budgets are evaluated against.
type Snapshot struct {
	// Slot is the slot's name.
	Slot string
	// SlotMeasured reports whether SlotRetainedWAL was measured (the slot exists and could
	// be read); without it the slot's budget is not evaluated.
	SlotMeasured bool
	// SlotRetainedWAL is the WAL the slot retains, in bytes.
	SlotRetainedWAL int64
	// Consumers are the operators, projectors and indexes.
	Consumers []Consumer
	// Now is the time ages are measured against.
	Now time.Time
}

// Check is one budget evaluated against a snapshot.
type Check struct {
	// Alert is SlotRetainedWAL, LagEvents or LagSeconds.
	Alert string `json:"alert"`
	// Kind is KindSlot, KindOperator, KindProjector or KindIndex.
	Kind string `json:"kind"`
	// Name is the slot's or the consumer's name.
	Name string `json:"name"`
	// Value is the measured value and Budget the limit, in Unit: bytes, events or seconds.
	Value  int64  `json:"value"`
	Budget int64  `json:"budget"`
	Unit   string `json:"unit"`
	// Active reports whether Value is over Budget.
	Active bool `json:"active"`
	// Reason says what is over budget, for people: "operator comment_counts is 50000
	// events behind the ledger head (budget 1000)".
	Reason string `json:"reason"`
}

// key identifies a check across evaluations.
func (c Check) key() string { return c.Alert + "\x00" + c.Kind + "\x00" + c.Name }

// Evaluate checks s against b: one Check per budget that applies, the slot's first, then
// the consumers' in s's order (events before seconds). A value equal to its budget is
// within it.
func Evaluate(s Snapshot, b Budgets) []Check {
	var out []Check
	if b.SlotRetainedWAL > 0 && s.SlotMeasured {
		c := Check{Alert: SlotRetainedWAL, Kind: KindSlot, Name: s.Slot, Value: s.SlotRetainedWAL, Budget: b.SlotRetainedWAL, Unit: "bytes"}
		c.Active = c.Value > c.Budget
		c.Reason = fmt.Sprintf("slot %s retains %d bytes of WAL on the server (budget %d)", c.Name, c.Value, c.Budget)
		out = append(out, c)
	}
	for _, con := range s.Consumers {
		l := b.For(con.Name)
		if l.Events > 0 {
			c := Check{Alert: LagEvents, Kind: con.Kind, Name: con.Name, Value: int64(min(con.Lag, 1<<63-1)), Budget: l.Events, Unit: "events"}
			c.Active = c.Value > c.Budget
			c.Reason = fmt.Sprintf("%s %s is %d events behind the ledger head (budget %d)", c.Kind, c.Name, c.Value, c.Budget)
			out = append(out, c)
		}
		if l.Age > 0 {
			var age time.Duration
			if !con.Oldest.IsZero() && con.Lag > 0 {
				age = max(s.Now.Sub(con.Oldest), 0)
			}
			c := Check{Alert: LagSeconds, Kind: con.Kind, Name: con.Name, Value: int64(age / time.Second), Budget: int64(l.Age / time.Second), Unit: "seconds"}
			c.Active = c.Value > c.Budget
			c.Reason = fmt.Sprintf("%s %s has not processed an event that committed %d seconds ago (budget %d)", c.Kind, c.Name, c.Value, c.Budget)
			out = append(out, c)
		}
	}
	return out
}

// Active returns the checks that are over budget, in order.
func Active(checks []Check) []Check {
	var out []Check
	for _, c := range checks {
		if c.Active {
			out = append(out, c)
		}
	}
	return slices.Clip(out)
}
