package pgwal

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walflow/walflow/ledger"
)

// A ledger stopped by a failed write fails every later write, so Run must return its error
// instead of reconnecting forever.
func TestFatalLedgerWriteFailed(t *testing.T) {
	err := fmt.Errorf("pgwal: sync the ledger: %w", ledger.WriteFailed(errors.New("ledger: sync /d: no space left on device")))
	if !fatal(err) {
		t.Fatalf("fatal(%v) = false, want true", err)
	}
	if fatal(errors.New("pgwal: connect: connection refused")) {
		t.Fatal("a connection error is fatal")
	}
}

// A PostgreSQL error that reconnecting cannot heal (refused login, missing database, missing
// privilege or publication) stops Run; a server going away does not.
func TestFatalPgErrors(t *testing.T) {
	for code, want := range map[string]bool{
		pgerrcode.InvalidPassword:                   true,
		pgerrcode.InvalidAuthorizationSpecification: true,
		pgerrcode.InvalidCatalogName:                true,
		pgerrcode.InsufficientPrivilege:             true,
		pgerrcode.UndefinedObject:                   true,
		pgerrcode.AdminShutdown:                     false,
		pgerrcode.ConnectionFailure:                 false,
		pgerrcode.UndefinedTable:                    false,
	} {
		err := fmt.Errorf("pgwal: connect: %w", &pgconn.PgError{Code: code})
		if got := fatal(err); got != want {
			t.Errorf("fatal(SQLSTATE %s) = %v, want %v", code, got, want)
		}
	}
}
