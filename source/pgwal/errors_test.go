package pgwal

import (
	"errors"
	"fmt"
	"testing"

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
