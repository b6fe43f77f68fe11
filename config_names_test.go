package walflow_test

import (
	"testing"

	"github.com/walflow/walflow"
)

func TestValidProcessStatus(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{"postgres": true, "memory": true, "none": true, "": false, "pg": false, "Memory": false} {
		if got := walflow.ValidProcessStatus(s); got != want {
			t.Errorf("ValidProcessStatus(%q) = %v, want %v", s, got, want)
		}
	}
}
