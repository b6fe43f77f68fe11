package pgwal

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Defaults for [Config].
const (
	SlotDefault           = "walflow"
	PublicationDefault    = "walflow"
	StatusIntervalDefault = 10 * time.Second
	SyncDelayDefault      = 5 * time.Millisecond
	SyncBytesDefault      = 4 << 20
	ReconnectMinDefault   = 100 * time.Millisecond
	ReconnectMaxDefault   = 10 * time.Second
	SlotBusyWaitDefault   = 5 * time.Second
)

// InternalSchema is the schema where walflow keeps its own tables in the followed database.
// Changes to it never become events.
const InternalSchema = "walflow"

// Config configures a [Source].
type Config struct {
	// ConnString is the PostgreSQL connection string (URL or key=value). The role needs the
	// REPLICATION attribute (or superuser). Required.
	ConnString string
	// Slot is the logical replication slot's name: lower-case letters, digits and
	// underscores, at most 63. Default "walflow".
	Slot string
	// TemporarySlot makes the slot temporary: dropped when the connection ends. Use it
	// only for throwaway runs; a restart then loses the changes made while it was down, and
	// the source refuses to resume a non-empty ledger. Default false (durable).
	TemporarySlot bool
	// SlotFailover creates the slot with failover = true, so that PostgreSQL 17's slot
	// synchronization keeps a copy on a physical standby (with sync_replication_slots on)
	// and walflow resumes from it after a promotion. It needs PostgreSQL 17 or newer: on an
	// older server Run fails at start with ErrFailoverUnsupported. It applies when the slot
	// is created; an existing slot keeps its setting (change it with ALTER_REPLICATION_SLOT
	// name (FAILOVER true) on a replication connection). It cannot be combined with
	// TemporarySlot. Default false.
	SlotFailover bool
	// Publication is the publication's name. Default "walflow".
	Publication string
	// Tables lists the tables to publish, as "table" (schema public) or "schema.table".
	// Missing tables are added to an existing publication, with a warning: PostgreSQL
	// sends their changes from then on, so rows they held before produce no events. When
	// empty, the publication must exist already, or is created FOR ALL TABLES (which
	// needs a superuser).
	Tables []string
	// StatusInterval is how often a standby status update is sent. It must stay well below
	// the server's wal_sender_timeout. Default 10s.
	StatusInterval time.Duration
	// SyncDelay is how long committed transactions may wait to be grouped into one durable
	// sync of the sink. Default 5ms.
	SyncDelay time.Duration
	// SyncBytes syncs the sink once this many bytes of changes are pending. Default 4 MiB.
	SyncBytes int
	// ReconnectMin and ReconnectMax bound the backoff between reconnection attempts
	// (doubling). Defaults 100ms and 10s.
	ReconnectMin, ReconnectMax time.Duration
	// SlotBusyWait is how long Run keeps retrying at start-up while the slot is in use,
	// before it returns ErrSlotInUse: after a crash the server takes a moment to notice the
	// old connection is gone. Default 5s.
	SlotBusyWait time.Duration
	// Standby, when set, makes the source one of several contenders for the slot that
	// share one sink: it streams only while it holds the slot, and otherwise waits for it
	// (see [Standby]). SlotBusyWait does not apply. Default nil: the source expects the slot
	// to itself.
	Standby *Standby
	// Logger receives the source's logs. Default: warnings and errors as text on stderr.
	Logger *slog.Logger
}

var (
	slotNameRE  = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	identRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)
	errNoConfig = errors.New("pgwal: ConnString is empty; set it to a PostgreSQL URL such as postgres://user@localhost:5432/app")
)

// ValidSlot reports whether name is a replication slot name Config takes: 1 to 63
// lower-case letters, digits and underscores.
func ValidSlot(name string) bool { return slotNameRE.MatchString(name) }

// ValidPublication reports whether name is a publication name Config takes: a letter or
// underscore, then letters, digits, underscores or $, at most 63 bytes.
func ValidPublication(name string) bool { return identRE.MatchString(name) }

// withDefaults returns a copy with every zero field set to its default.
func (c Config) withDefaults() Config {
	c.Slot = cmp.Or(c.Slot, SlotDefault)
	c.Publication = cmp.Or(c.Publication, PublicationDefault)
	c.StatusInterval = cmp.Or(c.StatusInterval, StatusIntervalDefault)
	c.SyncDelay = cmp.Or(c.SyncDelay, SyncDelayDefault)
	c.SyncBytes = cmp.Or(c.SyncBytes, SyncBytesDefault)
	c.ReconnectMin = cmp.Or(c.ReconnectMin, ReconnectMinDefault)
	c.ReconnectMax = cmp.Or(c.ReconnectMax, ReconnectMaxDefault)
	c.SlotBusyWait = cmp.Or(c.SlotBusyWait, SlotBusyWaitDefault)
	c.Standby = c.Standby.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return c
}

// validate names the first bad field and how to fix it.
func (c Config) validate() error {
	if c.ConnString == "" {
		return errNoConfig
	}
	if _, err := pgconn.ParseConfig(c.ConnString); err != nil {
		return fmt.Errorf("pgwal: ConnString does not parse: %w", err)
	}
	if !ValidSlot(c.Slot) {
		return fmt.Errorf("pgwal: Slot %q is not a valid replication slot name: use 1 to 63 lower-case letters, digits or underscores, like walflow_app", c.Slot)
	}
	if c.SlotFailover && c.TemporarySlot {
		return errors.New("pgwal: SlotFailover and TemporarySlot are both set, but PostgreSQL does not fail over temporary slots; turn one of them off")
	}
	if !ValidPublication(c.Publication) {
		return fmt.Errorf("pgwal: Publication %q is not a valid name: use a letter or underscore followed by letters, digits or underscores, like walflow", c.Publication)
	}
	for _, t := range c.Tables {
		if _, _, err := splitTable(t); err != nil {
			return err
		}
	}
	if c.Standby != nil && c.TemporarySlot {
		return errors.New("pgwal: Standby and TemporarySlot are both set, but a temporary slot is dropped with its leader's connection, so no standby could resume it; turn TemporarySlot off")
	}
	if err := c.Standby.validate(); err != nil {
		return err
	}
	if c.StatusInterval < 0 || c.SyncDelay < 0 || c.SyncBytes < 0 || c.ReconnectMin < 0 || c.ReconnectMax < c.ReconnectMin {
		return fmt.Errorf("pgwal: durations must be positive and ReconnectMax (%s) at least ReconnectMin (%s)", c.ReconnectMax, c.ReconnectMin)
	}
	return nil
}

// splitTable splits "schema.table" (or "table", schema public) and validates both parts.
func splitTable(t string) (schema, table string, err error) {
	schema, table, ok := strings.Cut(t, ".")
	if !ok {
		schema, table = "public", t
	}
	if !identRE.MatchString(schema) || !identRE.MatchString(table) {
		return "", "", fmt.Errorf("pgwal: table %q is not a valid name: use table or schema.table with letters, digits and underscores, like public.comments", t)
	}
	return schema, table, nil
}
