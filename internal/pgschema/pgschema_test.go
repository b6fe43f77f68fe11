package pgschema

import "testing"

func TestValidIdent(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"walflow": true, "_x": true, "a1_b2": true, "": false, "1a": false, "Walflow": false,
		"a-b": false, "a.b": false, `a"b`: false, "é": false,
		"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabc":  true,  // 63 bytes
		"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcd": false, // 64
	} {
		if got := ValidIdent(s); got != want {
			t.Errorf("ValidIdent(%q) = %v, want %v", s, got, want)
		}
	}
}
