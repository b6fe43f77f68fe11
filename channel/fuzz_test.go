package channel

import (
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics and that every channel it accepts survives a
// round trip through its canonical form.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"comments",
		"comments/7",
		"posts/42/comments",
		"organizations/1/posts/42/comments",
		"public.comments/a%2Fb",
		"posts/42/../43/comments",
		"posts%2F42/comments",
		"comments/%2e%2E",
		"comments/%",
		"comments/%zz",
		"comments/%00",
		"comments/%FF",
		"comments/a+b%20c",
		"*",
		"posts/*/comments",
		"/",
		"//",
		"comments/",
		"posts//comments",
		"posts/42/comments/7",
		"a/1/b/2/c/3/d/4/e/5/f/6/g/7/h/8/i",
		"a/1/b/2/c/3/d/4/e/5/f/6/g/7/h/8/i/9/j",
		"comments/" + strings.Repeat("x", 4000),
		strings.Repeat("t", 63),
		strings.Repeat("a/", 500),
		"comments/héllo wörld",
		"comments/日本語",
		"comments/\u3000",
		"comments/\u0085",
		"comments/😀/x",
		"café/1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			if c.Table != "" || c.ID != "" || c.Scopes != nil {
				t.Fatalf("Parse(%q) returned %#v with error %v", s, c, err)
			}
			return
		}
		if c.Table == "" {
			t.Fatalf("Parse(%q) accepted a channel without a table: %#v", s, c)
		}
		if c.ID != "" && len(c.Scopes) > 0 {
			t.Fatalf("Parse(%q) = %#v has both an id and scopes", s, c)
		}
		if err := c.validate(); err != nil {
			t.Fatalf("Parse(%q) = %#v, which does not validate: %v", s, c, err)
		}
		str := c.String()
		again, err := Parse(str)
		if err != nil {
			t.Fatalf("Parse(%q) = %#v; Parse(String() = %q): %v", s, c, str, err)
		}
		if !again.Equal(c) {
			t.Fatalf("Parse(%q) = %#v; Parse(%q) = %#v", s, c, str, again)
		}
		if again.String() != str {
			t.Fatalf("canonical form is not stable: %q then %q", str, again.String())
		}
		if again.Kind() != c.Kind() {
			t.Fatalf("kind changed: %v then %v", c.Kind(), again.Kind())
		}
		if strings.ContainsRune(str, 0) {
			t.Fatalf("canonical form %q holds a NUL byte", str)
		}
		want := 1 + 2*len(c.Scopes)
		if c.ID != "" {
			want++
		}
		if n := strings.Count(str, "/") + 1; n != want {
			t.Fatalf("canonical form %q has %d segments for %#v", str, n, c)
		}
	})
}
