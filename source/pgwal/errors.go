package pgwal

import (
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/ledger"
)

// Conditions a caller may branch on. Each error returned for them wraps one of these and
// says what happened and how to fix it. All of them stop Run: retrying cannot help.
var (
	// ErrWALLevel: the server's wal_level is not logical.
	ErrWALLevel = errors.New("pgwal: wal_level is not logical")
	// ErrNoReplication: the role lacks the REPLICATION attribute.
	ErrNoReplication = errors.New("pgwal: role lacks REPLICATION")
	// ErrNoPrimaryKey: a published table has no primary key.
	ErrNoPrimaryKey = errors.New("pgwal: table has no primary key")
	// ErrNoTable: a configured table does not exist.
	ErrNoTable = errors.New("pgwal: table does not exist")
	// ErrSlotInUse: another process is streaming from the slot.
	ErrSlotInUse = errors.New("pgwal: replication slot is in use")
	// ErrSlotInvalidated: the slot lost WAL it still needed (max_slot_wal_keep_size).
	ErrSlotInvalidated = errors.New("pgwal: replication slot was invalidated")
	// ErrSlotMissing: the ledger holds events but the slot it followed is gone.
	ErrSlotMissing = errors.New("pgwal: replication slot is missing")
	// ErrSlotRecreated: the slot's confirmed position is past anything walflow acknowledged,
	// so it was dropped and recreated or consumed by another client.
	ErrSlotRecreated = errors.New("pgwal: replication slot was recreated or consumed elsewhere")
	// ErrOriginChanged: the database is not the one the ledger follows (restored from a
	// backup, a promoted standby, another cluster) or the slot or database name changed.
	ErrOriginChanged = errors.New("pgwal: database or slot differs from the one the ledger follows")
	// ErrSlotConfig: the slot exists with another plugin or in another database.
	ErrSlotConfig = errors.New("pgwal: replication slot is set up differently")
	// ErrFailoverUnsupported: Config.SlotFailover is set, but the server is older than
	// PostgreSQL 17.
	ErrFailoverUnsupported = errors.New("pgwal: replication slot failover needs PostgreSQL 17 or newer")
)

// resyncHint is how to start again when the ledger cannot continue from the slot: the
// whole procedure, since a partial one leaves consumers counting the old ledger's positions.
const resyncHint = "to resync: stop walflow; move the ledger directory aside, with its index store (DIR.index) if any (keep it while consumers still need its history); " +
	"start walflow again, which starts a new ledger at position 1 and follows the slot from then on (creating it if missing); " +
	"then, while it runs, rebuild what counted the old ledger's positions, since changes made in between are in neither ledger: " +
	"walflow operator reset NAME for each operator (each one halts until then; walflow operator status lists them) " +
	"and walflow projector reset NAME for each projector (docs/operations.md, Resync)"

// fatal reports whether err stops Run instead of causing a reconnect.
func fatal(err error) bool {
	for _, e := range []error{ErrWALLevel, ErrNoReplication, ErrNoPrimaryKey, ErrNoTable, ErrSlotInvalidated,
		ErrSlotMissing, ErrSlotRecreated, ErrOriginChanged, ErrSlotConfig, ErrFailoverUnsupported, ErrProtocol,
		ledger.ErrWriteFailed} {
		if errors.Is(err, e) {
			return true
		}
	}
	var de *DecodeError
	if errors.As(err, &de) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pgerrcode.IsInvalidAuthorizationSpecification(pe.Code),
			pe.Code == pgerrcode.InvalidCatalogName, // the database does not exist
			pe.Code == pgerrcode.InsufficientPrivilege,
			pe.Code == pgerrcode.UndefinedObject: // e.g. the publication
			return true
		}
	}
	return false
}
