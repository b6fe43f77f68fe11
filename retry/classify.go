package retry

import (
	"errors"
	"net"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

// IsTransient reports whether err means the database could not be reached, rather than
// that the event's effect failed: a network error, a PostgreSQL connection exception
// (class 08), a server shutting down or not accepting connections yet (57P01, 57P02,
// 57P03), or a failure pgconn says is safe to retry because nothing was sent. A [Loop]
// waits such a failure out without spending the event's retries.
func IsTransient(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pgerrcode.IsConnectionException(pe.Code) || pe.Code == pgerrcode.AdminShutdown ||
			pe.Code == pgerrcode.CrashShutdown || pe.Code == pgerrcode.CannotConnectNow
	}
	return pgconn.SafeToRetry(err)
}

// IsPermanent reports whether err cannot heal by retrying the same event, so that its
// consumer halts at once instead of after its retries: an error in err's chain with a
// method Permanent() bool that returns true (an operator event that lacks its id column),
// or a PostgreSQL error of class 42 (syntax error or access rule violation: a query that
// does not parse, a missing table, column or privilege) or class 22 (data exception: a
// value the statement cannot take). Each needs a person to change the configuration, the
// schema or the data; restarting the consumer then retries the event.
func IsPermanent(err error) bool {
	var pm interface{ Permanent() bool }
	if errors.As(err, &pm) && pm.Permanent() {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pgerrcode.IsSyntaxErrororAccessRuleViolation(pe.Code) || pgerrcode.IsDataException(pe.Code)
	}
	return false
}
