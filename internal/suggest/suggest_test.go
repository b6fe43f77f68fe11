package suggest

import (
	"fmt"
	"testing"
)

func TestClosest(t *testing.T) {
	t.Parallel()
	names := []string{"status", "restart", "skip", "backfill"}
	for _, tt := range []struct{ in, want string }{
		{"status", "status"},
		{"statsu", "status"},
		{"STATUS", "status"},
		{"restrat", "restart"},
		{"backfil", "backfill"},
		{"sk", "skip"},
		{"compact", ""},
		{"", ""},
	} {
		if got := Closest(tt.in, names); got != tt.want {
			t.Errorf("Closest(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := Closest("x", nil); got != "" {
		t.Errorf("Closest with no candidates = %q, want \"\"", got)
	}
}

func TestEditDistance(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"a", "", 1}, {"", "ab", 2}, {"kitten", "sitting", 3}, {"ledger", "ledger", 0}, {"ab", "ba", 2},
	} {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func ExampleClosest() {
	fmt.Println(Closest("opertor", []string{"operator", "projector", "index"}))
	// Output: operator
}
