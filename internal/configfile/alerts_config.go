package configfile

import (
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/alert"
	"github.com/walflow/walflow/internal/suggest"
)

// alertsConfig is the alerts section: the lag budgets (walflow.Config.Alerts). Values are
// kept as the file's text, to name the key of a bad one.
type alertsConfig struct {
	SlotRetainedWAL string `yaml:"slot_retained_wal"`
	LagEvents       string `yaml:"lag_events"`
	LagSeconds      string `yaml:"lag_seconds"`
	// Consumers are keyed by operator or index name.
	Consumers map[string]*consumerAlertsConfig `yaml:"consumers"`
}

type consumerAlertsConfig struct {
	LagEvents  string `yaml:"lag_events"`
	LagSeconds string `yaml:"lag_seconds"`
}

var alertsSpec = mapSpec("the keys of alerts",
	"slot_retained_wal", scalar("a size like 2GB or 512MB"),
	"lag_events", scalar("a number of events like 50000"),
	"lag_seconds", scalar("a number of seconds like 300, or a duration like 5m"),
	"consumers", &spec{kind: kindMap, want: "a mapping of operator or index names to their budgets, like comment_counts: {lag_events: 1000}",
		any: mapSpec("the keys of a consumer's budgets",
			"lag_events", scalar("a number of events like 50000, or off"),
			"lag_seconds", scalar("a number of seconds like 300, a duration like 5m, or off"),
		),
	},
)

// alerts validates the alerts section into e.Alerts. Consumers must name an operator or an
// index of the file.
func (l *loader) alerts(fc *fileConfig, e *walflow.Config) error {
	ac := fc.Alerts
	if ac == nil {
		return nil
	}
	b := &e.Alerts
	var err error
	if b.SlotRetainedWAL, err = l.size("alerts.slot_retained_wal", ac.SlotRetainedWAL); err != nil {
		return err
	}
	if b.Lag.Events, err = l.lagEvents("alerts.lag_events", ac.LagEvents, false); err != nil {
		return err
	}
	if b.Lag.Age, err = l.lagSeconds("alerts.lag_seconds", ac.LagSeconds, false); err != nil {
		return err
	}
	names := slices.Concat(l.order["operators"], l.order["indexes"])
	for _, name := range l.order["alerts.consumers"] {
		path := joinPath("alerts.consumers", name)
		if !slices.Contains(names, name) {
			msg := "names no operator or index of this file"
			if sug := suggest.Closest(name, names); sug != "" {
				msg += " (did you mean " + sug + "?)"
			}
			if len(names) == 0 {
				return l.errKey(path, "%s, which has none; define it under operators or indexes, or remove it", msg)
			}
			return l.errKey(path, "%s; use one of %s", msg, strings.Join(names, ", "))
		}
		cc := ac.Consumers[name]
		if cc == nil {
			return l.errPath(path, "empty; set lag_events, lag_seconds or both, like {lag_events: 1000}")
		}
		var o alert.Lag
		if o.Events, err = l.lagEvents(path+".lag_events", cc.LagEvents, true); err != nil {
			return err
		}
		if o.Age, err = l.lagSeconds(path+".lag_seconds", cc.LagSeconds, true); err != nil {
			return err
		}
		if b.Overrides == nil {
			b.Overrides = map[string]alert.Lag{}
		}
		b.Overrides[name] = o
	}
	return nil
}

// sizeRE is a size: a number, then an optional unit.
var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)

// sizeUnits are the units of sizes, binary as in PostgreSQL's settings (1GB = 1024 MB).
var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"kb": 1 << 10, "kib": 1 << 10,
	"mb": 1 << 20, "mib": 1 << 20,
	"gb": 1 << 30, "gib": 1 << 30,
	"tb": 1 << 40, "tib": 1 << 40,
}

// size parses a size like 2GB, 512MB, 1.5GiB or 1073741824 (bytes); empty or off gives 0
// (no budget).
func (l *loader) size(path, s string) (int64, error) {
	if s == "" || s == "off" {
		return 0, nil
	}
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	var unit float64
	var ok bool
	if m != nil {
		unit, ok = sizeUnits[strings.ToLower(m[2])]
	}
	if !ok {
		return 0, l.errPath(path, "%q is not a size; write it like 2GB, 512MB or 1.5GB (units B, kB, MB, GB, TB, each 1024 of the one before, as in PostgreSQL), or off", s)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	v := n * unit
	if err != nil || v < 1 || v > math.MaxInt64/2 {
		return 0, l.errPath(path, "%q is out of range; write a size of at least 1 byte, like 2GB, or off", s)
	}
	return int64(v), nil
}

// lagEvents parses a positive number of events; empty gives 0 (the default), and off
// gives 0, or -1 (turned off) in a consumer's override.
func (l *loader) lagEvents(path, s string, override bool) (int64, error) {
	switch s {
	case "":
		return 0, nil
	case "off":
		if override {
			return -1, nil
		}
		return 0, nil
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 10, 64)
	if err != nil || n <= 0 {
		return 0, l.errPath(path, "%q is not a positive number of events; write it like 50000, or off", s)
	}
	return n, nil
}

// lagSeconds parses a positive number of seconds or a duration of at least a second; empty
// gives 0 (the default), and off gives 0, or -1 (turned off) in a consumer's override.
func (l *loader) lagSeconds(path, s string, override bool) (time.Duration, error) {
	switch s {
	case "":
		return 0, nil
	case "off":
		if override {
			return -1, nil
		}
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 || n > math.MaxInt64/int64(time.Second) {
			return 0, l.errPath(path, "%q is not a positive number of seconds; write it like 300 or 5m, or off", s)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		return 0, l.errPath(path, "%q is not a number of seconds or a duration of at least 1s; write it like 300, 90s or 5m, or off", s)
	}
	return d, nil
}
