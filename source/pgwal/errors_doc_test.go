package pgwal

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestResyncHintNamesPage checks that the page and section the resync hint sends the reader
// to exist, so that moving the documentation cannot leave the hint pointing nowhere.
func TestResyncHintNamesPage(t *testing.T) {
	t.Parallel()
	m := regexp.MustCompile(`\(([\w/.-]+\.md), ([^)]+)\)$`).FindStringSubmatch(resyncHint)
	if m == nil {
		t.Fatalf("resyncHint does not end with (PAGE.md, Section): %q", resyncHint)
	}
	page, err := os.ReadFile(filepath.Join("..", "..", m[1]))
	if err != nil {
		t.Fatalf("resyncHint names %s: %v", m[1], err)
	}
	if !strings.Contains("\n"+string(page), "\n## "+m[2]+"\n") {
		t.Errorf("resyncHint names section %q of %s, which has no heading ## %s", m[2], m[1], m[2])
	}
}
