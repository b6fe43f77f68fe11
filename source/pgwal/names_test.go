package pgwal_test

import (
	"strings"
	"testing"

	"github.com/walflow/walflow/source/pgwal"
)

func TestValidNames(t *testing.T) {
	t.Parallel()
	for name, want := range map[string][2]bool{ // ValidSlot, ValidPublication
		"walflow_app": {true, true}, "walflow": {true, true}, "Walflow": {false, true}, "9lives": {true, false},
		"pub$1": {false, true}, "": {false, false}, "a-b": {false, false},
		strings.Repeat("a", 63): {true, true}, strings.Repeat("a", 64): {false, false},
	} {
		if got := [2]bool{pgwal.ValidSlot(name), pgwal.ValidPublication(name)}; got != want {
			t.Errorf("ValidSlot, ValidPublication(%q) = %v, want %v", name, got, want)
		}
	}
}
