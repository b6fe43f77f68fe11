package channel_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/walflow/walflow/channel"
)

// TestErrorTyped: validation errors carry the table and the problem apart, so a caller
// reporting them at its own key needs no text surgery.
func TestErrorTyped(t *testing.T) {
	t.Parallel()
	sc, err := channel.ParseScope("posts/{post_id}")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		err     error
		table   string
		problem string // prefix
	}{
		{channel.Table{Name: "comments", IDColumn: "a b"}.Validate(), "comments", `id column "a b" `},
		{channel.Table{Name: "comments", Scopes: []channel.Scope{sc, sc}}.Validate(), "comments", "scopes 1 "},
		{func() error { _, err := channel.ParseScope("posts/post_id"); return err }(), "", "invalid scope "},
		{func() error { _, err := channel.NewRouter([]channel.Table{{Name: "a"}, {Name: "a"}}); return err }(), "a", "is configured twice"},
	} {
		var ce *channel.Error
		if !errors.As(tt.err, &ce) || ce.Table != tt.table || !strings.HasPrefix(ce.Problem, tt.problem) || !errors.Is(tt.err, channel.ErrInvalid) {
			t.Errorf("%v: got %#v, want a channel.Error of table %q with a problem starting %q", tt.err, ce, tt.table, tt.problem)
		}
	}
}
