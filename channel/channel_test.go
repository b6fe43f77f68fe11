package channel

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Channel
		kind Kind
		str  string // canonical form; in when empty
	}{
		{in: "comments", want: Channel{Table: "comments"}, kind: Unscoped},
		{in: "public.comments", want: Channel{Table: "public.comments"}, kind: Unscoped},
		{in: "_t$1", want: Channel{Table: "_t$1"}, kind: Unscoped},
		{in: "Comments", want: Channel{Table: "Comments"}, kind: Unscoped},
		{in: "comments/7", want: Channel{Table: "comments", ID: "7"}, kind: Direct},
		{in: "comments/a%2Fb", want: Channel{Table: "comments", ID: "a/b"}, kind: Direct},
		{in: "comments/%2E%2E.", want: Channel{Table: "comments", ID: "..."}, kind: Direct, str: "comments/..."},
		{in: "comments/a%20b", want: Channel{Table: "comments", ID: "a b"}, kind: Direct},
		{in: "comments/a+b", want: Channel{Table: "comments", ID: "a+b"}, kind: Direct},
		{in: "comments/100%25", want: Channel{Table: "comments", ID: "100%"}, kind: Direct},
		{in: "comments/héllo", want: Channel{Table: "comments", ID: "héllo"}, kind: Direct, str: "comments/h%C3%A9llo"},
		{in: "comments/%7e", want: Channel{Table: "comments", ID: "~"}, kind: Direct, str: "comments/~"},
		{in: "comments/ 7", want: Channel{Table: "comments", ID: " 7"}, kind: Direct, str: "comments/%207"},
		{in: "comments/*", want: Channel{Table: "comments", ID: "*"}, kind: Direct, str: "comments/%2A"},
		{in: "post%73/42/comments", want: Channel{Table: "comments", Scopes: []ScopeValue{{"posts", "42"}}}, kind: Scoped, str: "posts/42/comments"},
		{in: "posts/42/comments", want: Channel{Table: "comments", Scopes: []ScopeValue{{"posts", "42"}}}, kind: Scoped},
		{
			in:   "organizations/1/posts/42/comments",
			want: Channel{Table: "comments", Scopes: []ScopeValue{{"organizations", "1"}, {"posts", "42"}}},
			kind: Scoped,
		},
		{
			in:   "a/1/b/2/c/3/d/4/e/5/f/6/g/7/h/8/i",
			want: Channel{Table: "i", Scopes: []ScopeValue{{"a", "1"}, {"b", "2"}, {"c", "3"}, {"d", "4"}, {"e", "5"}, {"f", "6"}, {"g", "7"}, {"h", "8"}}},
			kind: Scoped,
		},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if !got.Equal(tt.want) {
				t.Fatalf("Parse(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			if got.Kind() != tt.kind {
				t.Errorf("Kind = %v, want %v", got.Kind(), tt.kind)
			}
			str := tt.str
			if str == "" {
				str = tt.in
			}
			if got.String() != str {
				t.Errorf("String = %q, want %q", got.String(), str)
			}
			again, err := Parse(got.String())
			if err != nil || !again.Equal(got) {
				t.Errorf("Parse(String()) = %#v, %v; want %#v", again, err, got)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want string // substring of the error
	}{
		{"", "is empty"},
		{"/", "starts with a slash"},
		{"/comments", "starts with a slash"},
		{"comments/", "ends with a slash"},
		{"posts//comments", "two slashes"},
		{"posts/42/comments/7", "to follow one row use comments/7"},
		{"a/1/b/2/c/3", "6 segments"},
		{"a/1/b/2/c/3/d/4/e/5/f/6/g/7/h/8/i/9/j", "at most 8 parents"},
		{strings.Repeat("/", 1<<20), "at most 8 parents"},
		{"comments/%zz", "invalid percent escape"},
		{"comments/%", "invalid percent escape"},
		{"comments/%2", "invalid percent escape"},
		{"comments/..", "relative path element"},
		{"comments/.", "relative path element"},
		{"comments/%2e%2E", "relative path element"},
		{"posts/42/../43/comments", `table segment 3 ".."`},
		{"posts%2F42/comments", `table segment 1 "posts%2F42" (decoded "posts/42")`},
		{"*", "wildcard"},
		{"posts/*/comments", ""}, // * is a valid id; see TestParse; here it must parse
		{"posts/42/*", "wildcard"},
		{"comments/%00", "control character U+0000"},
		{"comments/a\nb", "control character U+000A"},
		{"comments/%C2%85", "control character U+0085"},
		{"comments/%20", "only whitespace"},
		{"comments/%E3%80%80", "only whitespace"},
		{"comments/%FF", "not valid UTF-8"},
		{"1comments", "not starting with a digit"},
		{"com-ments", "not a table name"},
		{"a.b.c", "qualified table is schema.table"},
		{".comments", "schema name"},
		{"comments.", "qualified table is schema.table"},
		{strings.Repeat("t", 64), "63-byte limit"},
		{"café", "not a table name"},
		{" comments", "not a table name"},
	}
	for _, tt := range tests {
		t.Run(tt.in[:min(len(tt.in), 40)], func(t *testing.T) {
			t.Parallel()
			c, err := Parse(tt.in)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse(%q): %v", tt.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse(%q) = %#v, want an error containing %q", tt.in, c, tt.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("Parse(%q) error %q does not contain %q", tt.in, msg, tt.want)
			}
			if !strings.HasPrefix(msg, "channel: ") {
				t.Errorf("error %q lacks the channel: prefix", msg)
			}
			if !strings.Contains(msg, "comments/7") {
				t.Errorf("error %q shows no example", msg)
			}
			if len(msg) > 1000 {
				t.Errorf("error is %d bytes long", len(msg))
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not match ErrInvalid", msg)
			}
		})
	}
}

func TestMustParsePanics(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Error("MustParse of an invalid channel did not panic")
		}
	}()
	MustParse("posts//comments")
}

func TestKindString(t *testing.T) {
	t.Parallel()
	for k, want := range map[Kind]string{Unscoped: "unscoped", Direct: "direct", Scoped: "scoped", 0: "kind(0)", 9: "kind(9)"} {
		if k.String() != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, k.String(), want)
		}
	}
}

func TestStringEscapesStructure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		c    Channel
		want string
	}{
		{Channel{Table: "comments", ID: "a/b"}, "comments/a%2Fb"},
		{Channel{Table: "comments", ID: "7?x#y"}, "comments/7%3Fx%23y"},
		{Channel{Table: "comments", ID: "a\x00b"}, "comments/a%00b"},
		{Channel{Table: "comments", Scopes: []ScopeValue{{"posts", "4/2"}}}, "posts/4%2F2/comments"},
		{Channel{Table: "we/ird"}, "we%2Fird"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.c, got, tt.want)
		}
	}
}

func TestTextMarshaling(t *testing.T) {
	t.Parallel()
	var c Channel
	if err := c.UnmarshalText([]byte("posts/4%2F2/comments")); err != nil {
		t.Fatal(err)
	}
	b, err := c.MarshalText()
	if err != nil || string(b) != "posts/4%2F2/comments" {
		t.Errorf("MarshalText = %q, %v", b, err)
	}
	if err := c.UnmarshalText([]byte("posts/4/2/comments")); err == nil {
		t.Error("UnmarshalText accepted an even channel")
	}
	if _, err := (Channel{Table: "comments", ID: "1", Scopes: []ScopeValue{{"posts", "1"}}}).MarshalText(); err == nil {
		t.Error("MarshalText accepted a channel with both id and scopes")
	}

	var s Scope
	if err := s.UnmarshalText([]byte("posts/{post_id}")); err != nil {
		t.Fatal(err)
	}
	b, err = s.MarshalText()
	if err != nil || string(b) != "posts/{post_id}" {
		t.Errorf("Scope.MarshalText = %q, %v", b, err)
	}
	if _, err := (Scope{}).MarshalText(); err == nil {
		t.Error("MarshalText accepted an empty scope")
	}
}

func TestParseScope(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Scope
		err  string
	}{
		{in: "posts/{post_id}", want: Scope{{Column: "post_id", Table: "posts"}}},
		{in: "organizations/{org_id}/posts/{post_id}", want: Scope{{"org_id", "organizations"}, {"post_id", "posts"}}},
		{in: "public.posts/{post_id}", want: Scope{{"post_id", "public.posts"}}},
		{in: "comments/{parent_id}", want: Scope{{"parent_id", "comments"}}},
		{in: "", err: "empty"},
		{in: "posts", err: "parent/{column} pairs"},
		{in: "posts/{post_id}/comments", err: "parent/{column} pairs"},
		{in: "posts/post_id", err: `segment 2 "post_id" must be a column in braces, like {post_id}`},
		{in: "posts/{post_id", err: "must be a column in braces"},
		{in: "posts/{}", err: "not a column name (empty name)"},
		{in: "posts/{post id}", err: "not a column name"},
		{in: "posts/{a.b}", err: "not a column name"},
		{in: "1posts/{post_id}", err: "not a table name"},
		{in: "/{post_id}", err: "parent table 1"},
		{in: "posts/{post_id}/", err: "parent/{column} pairs"},
		{in: "a/{x}/b/{x}", err: `column "x" appears twice`},
		{in: strings.Repeat("t/{c}/", 8) + "u/{d}", err: "at most 8 fields"},
		{in: strings.Repeat("/", 100000), err: "at most 8 fields"},
	}
	for _, tt := range tests {
		t.Run(tt.in[:min(len(tt.in), 40)], func(t *testing.T) {
			t.Parallel()
			got, err := ParseScope(tt.in)
			if tt.err != "" {
				if err == nil {
					t.Fatalf("ParseScope(%q) = %v, want an error containing %q", tt.in, got, tt.err)
				}
				if !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "channel: ") {
					t.Errorf("ParseScope(%q) error %q does not contain %q", tt.in, err, tt.err)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %q does not match ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseScope(%q): %v", tt.in, err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("ParseScope(%q) = %v, want %v", tt.in, got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("ParseScope(%q) = %v, want %v", tt.in, got, tt.want)
				}
			}
			if got.String() != tt.in {
				t.Errorf("String = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestTableValidate(t *testing.T) {
	t.Parallel()
	post := Scope{{"post_id", "posts"}}
	tests := []struct {
		name string
		t    Table
		err  string
	}{
		{name: "defaults", t: Table{Name: "comments"}},
		{name: "full", t: Table{Name: "comments", IDColumn: "uuid", TimestampColumn: "changed_at", Scopes: []Scope{post, {{"org_id", "organizations"}, {"post_id", "posts"}}}}},
		{name: "no name", t: Table{}, err: `table "": the name is empty`},
		{name: "bad name", t: Table{Name: "com ments"}, err: "use a name like comments"},
		{name: "bad id column", t: Table{Name: "comments", IDColumn: "a-b"}, err: "id column"},
		{name: "bad timestamp column", t: Table{Name: "comments", TimestampColumn: "9"}, err: "timestamp column"},
		{name: "empty scope", t: Table{Name: "comments", Scopes: []Scope{{}}}, err: "scope 1: the scope is empty"},
		{name: "bad scope column", t: Table{Name: "comments", Scopes: []Scope{{{"", "posts"}}}}, err: "scope 1"},
		{name: "duplicate parents", t: Table{Name: "comments", Scopes: []Scope{post, {{"parent_post_id", "posts"}}}}, err: `have the same parents, so a channel like "posts/1/comments"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.t.Validate()
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "channel: ") {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.err)
			}
		})
	}
}

func TestWithDefaults(t *testing.T) {
	t.Parallel()
	got := Table{Name: "comments"}.WithDefaults()
	if got.IDColumn != IDColumnDefault || got.TimestampColumn != TimestampColumnDefault {
		t.Errorf("WithDefaults() = %+v", got)
	}
	got = Table{Name: "comments", IDColumn: "uuid", TimestampColumn: "ts"}.WithDefaults()
	if got.IDColumn != "uuid" || got.TimestampColumn != "ts" {
		t.Errorf("WithDefaults() overrode set columns: %+v", got)
	}
}
