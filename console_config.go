package walflow

import (
	"fmt"
	"strings"

	"github.com/walflow/walflow/alert"
	"github.com/walflow/walflow/internal/redact"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/realtime"
)

// ConsoleConfig is an engine's configuration as the console shows it (GET
// /console/api/config): the settings a person reads to understand a running walflow, with
// every secret left out by construction. The database password is replaced by xxxxx, and
// the admin token and the realtime gateway's JWT secret and keys are reported only as set
// or not; no field can hold them.
type ConsoleConfig struct {
	// DatabaseURL is Config.DatabaseURL with its password replaced by xxxxx.
	DatabaseURL   string `json:"database_url"`
	Slot          string `json:"slot"`
	TemporarySlot bool   `json:"temporary_slot"`
	SlotFailover  bool   `json:"slot_failover"`
	Publication   string `json:"publication"`
	// Ledger is disk, pebble or memory.
	Ledger    string `json:"ledger"`
	LedgerDir string `json:"ledger_dir,omitempty"`
	// Retention is Config.Retention, or "forever".
	Retention       string               `json:"retention"`
	HTTPAddr        string               `json:"http_addr"`
	StatusInterval  string               `json:"status_interval"`
	ConsoleInterval string               `json:"console_interval"`
	SyncDelay       string               `json:"sync_delay"`
	ProcessStatus   string               `json:"process_status"`
	Tables          []ConsoleTable       `json:"tables"`
	Operators       []ConsoleOperator    `json:"operators"`
	Projectors      []string             `json:"projectors"`
	Indexes         []string             `json:"indexes"`
	Realtime        *ConsoleRealtimeConf `json:"realtime,omitempty"`
	Alerts          ConsoleAlerts        `json:"alerts"`
	// AdminTokenSet reports whether Config.AdminToken is set: whether the console's
	// actions can be used.
	AdminTokenSet bool `json:"admin_token_set"`
}

// ConsoleTable is a followed table in a [ConsoleConfig].
type ConsoleTable struct {
	Name            string   `json:"name"`
	IDColumn        string   `json:"id_column"`
	Scopes          []string `json:"scopes,omitempty"`
	TimestampColumn string   `json:"timestamp_column"`
}

// ConsoleOperator is an operator in a [ConsoleConfig].
type ConsoleOperator struct {
	Name string `json:"name"`
	// Kind is sql (operator.SQL) or func (a Go operator.Func).
	Kind     string   `json:"kind"`
	Entities []string `json:"entities"`
	Targets  []string `json:"targets,omitempty"`
	// OnFailure is halt or park.
	OnFailure string `json:"on_failure"`
	// Query is an SQL operator's query.
	Query string `json:"query,omitempty"`
}

// ConsoleRealtimeConf is the realtime gateway in a [ConsoleConfig].
type ConsoleRealtimeConf struct {
	Path string `json:"path"`
	// Authorizer is jwt, allow_all, or the Go type of your own Authorizer.
	Authorizer string `json:"authorizer"`
	// JWT describes a JWT authorizer, without its secret or keys.
	JWT            *realtime.JWTSummary `json:"jwt,omitempty"`
	MaxConnections int                  `json:"max_connections"`
	AllowedOrigins []string             `json:"allowed_origins,omitempty"`
}

// ConsoleAlerts are Config.Alerts in a [ConsoleConfig]; durations as Go writes them.
type ConsoleAlerts struct {
	SlotRetainedWALBytes int64                      `json:"slot_retained_wal_bytes,omitempty"`
	LagEvents            int64                      `json:"lag_events,omitempty"`
	LagAge               string                     `json:"lag_age,omitempty"`
	Overrides            map[string]ConsoleLagAlert `json:"overrides,omitempty"`
}

// ConsoleLagAlert is one consumer's override of the lag budgets.
type ConsoleLagAlert struct {
	Events int64  `json:"events,omitempty"`
	Age    string `json:"age,omitempty"`
}

// ConsoleConfig returns the engine's configuration without its secrets, as the console
// shows it.
func (e *Engine) ConsoleConfig() ConsoleConfig {
	c := e.cfg
	out := ConsoleConfig{
		DatabaseURL: redact.DSN(c.DatabaseURL), Slot: c.Slot, TemporarySlot: c.TemporarySlot, SlotFailover: c.SlotFailover,
		Publication: c.Publication, Ledger: c.LedgerBackend, LedgerDir: c.LedgerDir, Retention: c.Retention.String(),
		HTTPAddr: c.HTTPAddr, StatusInterval: c.StatusInterval.String(), ConsoleInterval: c.ConsoleInterval.String(),
		SyncDelay: c.SyncDelay.String(), ProcessStatus: c.ProcessStatus, AdminTokenSet: c.AdminToken != "",
		Tables: []ConsoleTable{}, Operators: []ConsoleOperator{}, Projectors: []string{}, Indexes: []string{},
		Alerts: consoleAlerts(c.Alerts),
	}
	if c.MemoryLedger {
		out.Ledger, out.LedgerDir = "memory", ""
	}
	if c.Retention < 0 {
		out.Retention = "forever"
	}
	if c.ProcessStatusStore != nil {
		out.ProcessStatus = fmt.Sprintf("%T", c.ProcessStatusStore)
	}
	for _, t := range c.Tables {
		ct := ConsoleTable{Name: t.Name, IDColumn: t.IDColumn, TimestampColumn: t.TimestampColumn}
		for _, s := range t.Scopes {
			ct.Scopes = append(ct.Scopes, s.String())
		}
		out.Tables = append(out.Tables, ct)
	}
	var infos []operator.Info
	if e.ops != nil {
		infos = e.ops.Operators()
	}
	for i, o := range c.Operators {
		co := ConsoleOperator{}
		switch o := o.(type) {
		case operator.SQL:
			co.Kind, co.Name, co.OnFailure, co.Query = "sql", o.Name, string(o.OnFailure), strings.TrimSpace(o.Query)
		case operator.Func:
			co.Kind, co.Name, co.OnFailure = "func", o.Name, string(o.OnFailure)
		default:
			co.Kind = fmt.Sprintf("%T", o)
		}
		if i < len(infos) {
			co.Name, co.Entities, co.Targets = infos[i].Name, infos[i].Entities, infos[i].Targets
		}
		if co.OnFailure == "" {
			co.OnFailure = string(operator.Halt)
		}
		out.Operators = append(out.Operators, co)
	}
	for _, p := range c.Projectors {
		out.Projectors = append(out.Projectors, p.Name)
	}
	for _, ix := range c.Indexers {
		out.Indexes = append(out.Indexes, ix.Name)
	}
	if rc := c.Realtime; rc != nil {
		r := &ConsoleRealtimeConf{Path: rc.Path, MaxConnections: rc.Gateway.MaxConnections, AllowedOrigins: rc.Gateway.AllowedOrigins}
		switch a := rc.Gateway.Authorizer.(type) {
		case *realtime.JWTAuthorizer:
			s := a.Summary()
			r.Authorizer, r.JWT = "jwt", &s
		case realtime.AllowAll, *realtime.AllowAll:
			r.Authorizer = "allow_all"
		default:
			r.Authorizer = fmt.Sprintf("%T", a)
		}
		if r.MaxConnections == 0 {
			r.MaxConnections = realtime.MaxConnectionsDefault
		}
		out.Realtime = r
	}
	return out
}

func consoleAlerts(b alert.Budgets) ConsoleAlerts {
	dur := func(d interface{ String() string }, zero bool) string {
		if zero {
			return ""
		}
		return d.String()
	}
	out := ConsoleAlerts{SlotRetainedWALBytes: b.SlotRetainedWAL, LagEvents: b.Lag.Events, LagAge: dur(b.Lag.Age, b.Lag.Age == 0)}
	for name, l := range b.Overrides {
		if out.Overrides == nil {
			out.Overrides = map[string]ConsoleLagAlert{}
		}
		out.Overrides[name] = ConsoleLagAlert{Events: l.Events, Age: dur(l.Age, l.Age == 0)}
	}
	return out
}
