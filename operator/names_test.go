package operator_test

import (
	"testing"

	"github.com/walflow/walflow/operator"
)

func TestValidNames(t *testing.T) {
	t.Parallel()
	for name, want := range map[string][2]bool{ // ValidTable, ValidColumn
		"comments": {true, true}, "public.comments": {true, false}, "_x$1": {true, true},
		"": {false, false}, "1x": {false, false}, "a.b.c": {false, false}, "a-b": {false, false}, "a.": {false, false},
	} {
		if got := [2]bool{operator.ValidTable(name), operator.ValidColumn(name)}; got != want {
			t.Errorf("ValidTable, ValidColumn(%q) = %v, want %v", name, got, want)
		}
	}
}
