package index_test

import (
	"encoding/json"
	"testing"

	"github.com/walflow/walflow/index"
)

// TestPhaseJSON: a phase decodes from the name it encodes to, and an unknown name is
// refused.
func TestPhaseJSON(t *testing.T) {
	t.Parallel()
	for _, p := range []index.Phase{index.Stopped, index.CatchingUp, index.Live} {
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var got index.Phase = 99
		if err := json.Unmarshal(b, &got); err != nil || got != p {
			t.Errorf("%s decodes to %v, %v", b, got, err)
		}
	}
	var p index.Phase
	if err := json.Unmarshal([]byte(`"sleeping"`), &p); err == nil {
		t.Errorf("an unknown phase decodes to %v", p)
	}
}
