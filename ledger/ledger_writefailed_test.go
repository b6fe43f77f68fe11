package ledger_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/walflow/walflow/ledger"
)

func TestWriteFailed(t *testing.T) {
	cause := errors.New("write /d/1.seg: no space left on device")
	err := fmt.Errorf("pgwal: sync the ledger: %w", ledger.WriteFailed(fmt.Errorf("ledger: sync /d: %w", cause)))
	if !errors.Is(err, ledger.ErrWriteFailed) || !errors.Is(err, cause) {
		t.Fatalf("errors.Is(%v, ErrWriteFailed) or the cause is false", err)
	}
	if want := "pgwal: sync the ledger: ledger: sync /d: write /d/1.seg: no space left on device"; err.Error() != want {
		t.Fatalf("text %q, want %q", err, want)
	}
	if errors.Is(cause, ledger.ErrWriteFailed) {
		t.Fatal("an unmarked error matches ErrWriteFailed")
	}
}
