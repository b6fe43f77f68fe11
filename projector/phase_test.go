package projector_test

import (
	"encoding/json"
	"testing"

	"github.com/walflow/walflow/projector"
)

// TestPhaseJSON: a phase decodes from the name it encodes to, and an unknown name is
// refused.
func TestPhaseJSON(t *testing.T) {
	t.Parallel()
	for _, p := range []projector.Phase{projector.Stopped, projector.Rehydrating, projector.Live, projector.Halted, projector.Standby} {
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var got projector.Phase = 99
		if err := json.Unmarshal(b, &got); err != nil || got != p {
			t.Errorf("%s decodes to %v, %v", b, got, err)
		}
	}
	var p projector.Phase
	if err := json.Unmarshal([]byte(`"sleeping"`), &p); err == nil {
		t.Errorf("an unknown phase decodes to %v", p)
	}
}
