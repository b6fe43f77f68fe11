package channel

import (
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/internal/syncbuf"
)

const int4 = 23

func txt(s string) event.Value { return event.Text(int4, s) }

// rec builds a record from name, value pairs.
func rec(kv ...any) event.Record {
	r := event.Record{}
	for i := 0; i < len(kv); i += 2 {
		r = append(r, event.Field{Name: kv[i].(string), Value: kv[i+1].(event.Value)})
	}
	return r
}

func testRouter(t *testing.T) *Router {
	t.Helper()
	post, err := ParseScope("posts/{post_id}")
	if err != nil {
		t.Fatal(err)
	}
	orgPost, err := ParseScope("organizations/{org_id}/posts/{post_id}")
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRouter([]Table{
		{Name: "comments", Scopes: []Scope{post, orgPost}},
		{Name: "posts", IDColumn: "uuid", Scopes: []Scope{{{"org_id", "organizations"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestChannels(t *testing.T) {
	t.Parallel()
	r := testRouter(t)
	tests := []struct {
		name string
		e    event.Event
		want []string
	}{
		{
			name: "insert",
			e:    event.Event{Name: "comments", Type: event.Insert, NewRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"))},
			want: []string{"comments", "comments/7", "posts/42/comments", "organizations/1/posts/42/comments"},
		},
		{
			name: "insert without org",
			e:    event.Event{Name: "comments", Type: event.Insert, NewRecord: rec("id", txt("7"), "post_id", txt("42"))},
			want: []string{"comments", "comments/7", "posts/42/comments"},
		},
		{
			name: "update without scope move",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"), "body", txt("new")),
				OldRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"), "body", txt("old"))},
			want: []string{"comments", "comments/7", "posts/42/comments", "organizations/1/posts/42/comments"},
		},
		{
			name: "update without old record",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"))},
			want: []string{"comments", "comments/7", "posts/42/comments", "organizations/1/posts/42/comments"},
		},
		{
			name: "update moving scope",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", txt("7"), "post_id", txt("43"), "org_id", txt("1")),
				OldRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"))},
			want: []string{"comments", "comments/7", "posts/43/comments", "posts/42/comments",
				"organizations/1/posts/43/comments", "organizations/1/posts/42/comments"},
		},
		{
			name: "update moving organization only",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("2")),
				OldRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"))},
			want: []string{"comments", "comments/7", "posts/42/comments",
				"organizations/2/posts/42/comments", "organizations/1/posts/42/comments"},
		},
		{
			name: "id change with key-only old record",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", txt("8"), "post_id", txt("42")),
				OldRecord: rec("id", txt("7"))},
			want: []string{"comments", "comments/8", "comments/7", "posts/42/comments"},
		},
		{
			name: "unchanged toast id",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", event.Unchanged(25), "post_id", txt("42"))},
			want: []string{"comments", "posts/42/comments"},
		},
		{
			name: "delete",
			e: event.Event{Name: "comments", Type: event.Delete,
				OldRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"))},
			want: []string{"comments", "comments/7", "posts/42/comments", "organizations/1/posts/42/comments"},
		},
		{
			name: "delete with key-only old record",
			e:    event.Event{Name: "comments", Type: event.Delete, OldRecord: rec("id", txt("7"))},
			want: []string{"comments", "comments/7"},
		},
		{
			name: "truncate",
			e:    event.Event{Name: "comments", Type: event.Truncate},
			want: []string{"comments"},
		},
		{
			name: "truncate ignores stray records",
			e:    event.Event{Name: "comments", Type: event.Truncate, NewRecord: rec("id", txt("7"))},
			want: []string{"comments"},
		},
		{
			name: "NULL scope value",
			e: event.Event{Name: "comments", Type: event.Insert,
				NewRecord: rec("id", txt("7"), "post_id", event.Null(int4), "org_id", txt("1"))},
			want: []string{"comments", "comments/7"},
		},
		{
			name: "NULL id",
			e:    event.Event{Name: "comments", Type: event.Insert, NewRecord: rec("id", event.Null(int4), "post_id", txt("42"))},
			want: []string{"comments", "posts/42/comments"},
		},
		{
			name: "scope set from NULL",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", txt("7"), "post_id", txt("42")),
				OldRecord: rec("id", txt("7"), "post_id", event.Null(int4))},
			want: []string{"comments", "comments/7", "posts/42/comments"},
		},
		{
			name: "escaped values",
			e: event.Event{Name: "comments", Type: event.Insert,
				NewRecord: rec("id", txt("a/b c"), "post_id", txt("4/2"))},
			want: []string{"comments", "comments/a%2Fb%20c", "posts/4%2F2/comments"},
		},
		{
			name: "unusable id values",
			e: event.Event{Name: "comments", Type: event.Update,
				NewRecord: rec("id", txt(".."), "post_id", txt("")),
				OldRecord: rec("id", txt("a\nb"), "post_id", txt("  "))},
			want: []string{"comments"},
		},
		{
			name: "configured id column",
			e: event.Event{Name: "posts", Type: event.Insert,
				NewRecord: rec("id", txt("1"), "uuid", txt("0b5e"), "org_id", txt("9"))},
			want: []string{"posts", "posts/0b5e", "organizations/9/posts"},
		},
		{
			name: "unconfigured table",
			e:    event.Event{Name: "users", Type: event.Insert, NewRecord: rec("id", txt("3"), "post_id", txt("42"))},
			want: []string{"users", "users/3"},
		},
		{
			name: "unconfigured table without id",
			e:    event.Event{Name: "logs", Type: event.Insert, NewRecord: rec("msg", txt("x"))},
			want: []string{"logs"},
		},
		{
			name: "table name needing escapes",
			e:    event.Event{Name: "we/ird", Type: event.Insert, NewRecord: rec("id", txt("1"))},
			want: []string{"we%2Fird", "we%2Fird/1"},
		},
		{
			name: "no name",
			e:    event.Event{Type: event.Insert, NewRecord: rec("id", txt("1"))},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := r.Channels(&tt.e, nil)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("Channels = %q\nwant       %q", got, tt.want)
			}
			// Appending keeps dst and dedups only within the appended part.
			pre := []string{"comments", "x"}
			got2 := r.Channels(&tt.e, slices.Clone(pre))
			if !slices.Equal(got2, append(pre, tt.want...)) {
				t.Errorf("Channels(dst) = %q", got2)
			}
			for _, s := range got {
				if s == "" || strings.ContainsRune(s, 0) {
					t.Errorf("channel %q is not a valid ledger key", s)
				}
				if validTableName(tt.e.Name) {
					c, err := Parse(s)
					if err != nil {
						t.Errorf("Parse(%q): %v", s, err)
					} else if c.String() != s {
						t.Errorf("channel %q is not canonical: %q", s, c.String())
					} else if err := r.Check(c); err != nil {
						t.Errorf("Check(%q): %v", s, err)
					}
				}
			}
		})
	}
}

func validTableName(s string) bool { return nameProblem(s) == "" }

func TestChannelsNilRouterAndEvent(t *testing.T) {
	t.Parallel()
	var r *Router
	e := event.Event{Name: "comments", Type: event.Insert, NewRecord: rec("id", txt("7"))}
	if got := r.Channels(&e, nil); !slices.Equal(got, []string{"comments", "comments/7"}) {
		t.Errorf("nil router Channels = %q", got)
	}
	if got := r.Channels(nil, []string{"a"}); !slices.Equal(got, []string{"a"}) {
		t.Errorf("nil event Channels = %q", got)
	}
	if got := r.Table("comments"); got.IDColumn != "id" || got.TimestampColumn != "updated_at" || got.Name != "comments" {
		t.Errorf("nil router Table = %+v", got)
	}
}

func TestChannelsConcurrent(t *testing.T) {
	t.Parallel()
	r := testRouter(t)
	e := event.Event{Name: "comments", Type: event.Update,
		NewRecord: rec("id", txt("7"), "post_id", txt("43"), "org_id", txt("1")),
		OldRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"))}
	want := r.Channels(&e, nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if got := r.Channels(&e, nil); !slices.Equal(got, want) {
					t.Errorf("Channels = %q, want %q", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestNewRouter(t *testing.T) {
	t.Parallel()
	if _, err := NewRouter(nil); err != nil {
		t.Fatalf("NewRouter(nil): %v", err)
	}
	_, err := NewRouter([]Table{{Name: "comments"}, {Name: "posts"}, {Name: "comments", IDColumn: "uuid"}})
	if err == nil || !strings.Contains(err.Error(), `table "comments": is configured twice (entry 3)`) {
		t.Errorf("duplicate table: %v", err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %v does not match ErrInvalid", err)
	}
	if _, err := NewRouter([]Table{{Name: "bad name"}}); err == nil {
		t.Error("NewRouter accepted an invalid table")
	}

	// The router keeps its own copy of the scopes.
	scopes := []Scope{{{"post_id", "posts"}}}
	r, err := NewRouter([]Table{{Name: "comments", Scopes: scopes}})
	if err != nil {
		t.Fatal(err)
	}
	scopes[0][0] = ScopeField{"x", "y"}
	got := r.Table("comments")
	if got.Scopes[0].String() != "posts/{post_id}" || got.IDColumn != "id" || got.TimestampColumn != "updated_at" {
		t.Errorf("Table = %+v", got)
	}
	if got := r.Table("users"); got.Name != "users" || got.IDColumn != "id" || got.Scopes != nil {
		t.Errorf("unconfigured Table = %+v", got)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	r := testRouter(t)
	tests := []struct {
		c   Channel
		err string
	}{
		{c: MustParse("comments")},
		{c: MustParse("comments/7")},
		{c: MustParse("users")},
		{c: MustParse("users/3")},
		{c: MustParse("posts/42/comments")},
		{c: MustParse("organizations/1/posts/42/comments")},
		{c: MustParse("organizations/1/posts")},
		{c: MustParse("users/1/comments"), err: `table "comments" has no scope users/{…}; its scopes are posts/{post_id}, organizations/{org_id}/posts/{post_id}, so use a channel like posts/1/comments or organizations/1/posts/1/comments`},
		{c: MustParse("posts/1/organizations/1/comments"), err: "has no scope posts/{…}/organizations/{…}"},
		{c: MustParse("posts/1/users"), err: `table "users" has no scopes, so it has no scoped channels; subscribe to users or users/{id}, or configure a scope posts/{…}`},
		{c: Channel{}, err: "is empty"},
		{c: Channel{Table: "comments", ID: "1", Scopes: []ScopeValue{{"posts", "1"}}}, err: "both an id and scopes"},
		{c: Channel{Table: "comments", ID: ".."}, err: "relative path element"},
		{c: Channel{Table: "comments", Scopes: []ScopeValue{{"posts", ""}}}, err: "parent 1 id"},
		{c: Channel{Table: "comments", Scopes: []ScopeValue{{"po sts", "1"}}}, err: "parent 1 table"},
		{c: Channel{Table: "comments", Scopes: make([]ScopeValue, 9)}, err: "at most 8"},
	}
	for _, tt := range tests {
		err := r.Check(tt.c)
		if tt.err == "" {
			if err != nil {
				t.Errorf("Check(%q): %v", tt.c, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "channel: ") {
			t.Errorf("Check(%q) = %v, want an error containing %q", tt.c, err, tt.err)
		} else if !errors.Is(err, ErrInvalid) {
			t.Errorf("error %v does not match ErrInvalid", err)
		}
	}
}

func BenchmarkChannels(b *testing.B) {
	post := Scope{{"post_id", "posts"}}
	orgPost := Scope{{"org_id", "organizations"}, {"post_id", "posts"}}
	r, err := NewRouter([]Table{{Name: "comments", Scopes: []Scope{post, orgPost}}})
	if err != nil {
		b.Fatal(err)
	}
	e := event.Event{Name: "comments", Type: event.Update,
		NewRecord: rec("id", txt("7"), "post_id", txt("43"), "org_id", txt("1"), "body", txt("hello")),
		OldRecord: rec("id", txt("7"), "post_id", txt("42"), "org_id", txt("1"), "body", txt("hello"))}
	var dst []string
	b.ReportAllocs()
	for b.Loop() {
		dst = r.Channels(&e, dst[:0])
	}
}

// TestScopeColumnLost checks that a router with a logger warns once per change of a
// table's columns when events stop carrying a scope column (here post_id renamed to
// parent_id), naming the table, the scope and the column, and not once per event.
func TestScopeColumnLost(t *testing.T) {
	t.Parallel()
	var logs syncbuf.Buffer
	r := testRouter(t).WithLogger(slog.New(slog.NewJSONHandler(&logs, nil)))
	cols := func(names ...string) []event.Column {
		var out []event.Column
		for _, n := range names {
			out = append(out, event.Column{Name: n, Type: "integer", OID: int4})
		}
		return out
	}
	insert := func(cols []event.Column, pos event.Position, kv ...any) *event.Event {
		return &event.Event{Position: pos, Name: "comments", Type: event.Insert, Source: event.Source{Table: "comments", Columns: cols}, NewRecord: rec(kv...)}
	}
	warnings := func() []map[string]any {
		var out []map[string]any
		for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			if l == "" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("log line %q: %v", l, err)
			}
			out = append(out, m)
		}
		return out
	}
	before := cols("id", "post_id", "org_id")
	for i := range 3 {
		r.Channels(insert(before, event.Position(i+1), "id", txt("1"), "post_id", txt("42"), "org_id", txt("1")), nil)
	}
	if w := warnings(); len(w) != 0 {
		t.Fatalf("warnings while every scope column is there: %v", w)
	}

	// post_id renamed: both scopes name it. Events of one relation share their columns;
	// events read back from the ledger each have a copy: neither warns again.
	after := cols("id", "parent_id", "org_id")
	for i := range 3 {
		got := r.Channels(insert(after, event.Position(i+4), "id", txt("1"), "parent_id", txt("42"), "org_id", txt("1")), nil)
		if want := []string{"comments", "comments/1"}; !slices.Equal(got, want) {
			t.Fatalf("channels %v, want %v", got, want)
		}
		r.Channels(insert(slices.Clone(after), event.Position(i+4), "id", txt("1"), "parent_id", txt("42")), nil)
	}
	// A reader still routing events written before the rename does not warn either.
	r.Channels(insert(slices.Clone(before), 1, "id", txt("1"), "post_id", txt("42")), nil)
	w := warnings()
	if len(w) != 2 {
		t.Fatalf("%d warnings after the rename, want one per scope naming post_id: %v", len(w), w)
	}
	for i, scope := range []string{"posts/{post_id}", "organizations/{org_id}/posts/{post_id}"} {
		if w[i]["level"] != "WARN" || w[i]["table"] != "comments" || w[i]["scope"] != scope || w[i]["column"] != "post_id" || w[i]["position"] != float64(4) {
			t.Errorf("warning %d = %v, want table comments, scope %s, column post_id, position 4", i, w[i], scope)
		}
	}

	// Another change of the columns that still lacks post_id warns again, once.
	again := cols("id", "parent_id", "org_id", "body")
	r.Channels(insert(again, 10, "id", txt("1")), nil)
	r.Channels(insert(again, 11, "id", txt("1")), nil)
	if n := len(warnings()); n != 4 {
		t.Fatalf("%d warnings after a second change of the columns, want 4", n)
	}
	// Unconfigured tables, events without a column list and routers without a logger
	// are not checked.
	r.Channels(&event.Event{Name: "users", Type: event.Insert, Source: event.Source{Columns: cols("x")}}, nil)
	r.Channels(&event.Event{Name: "comments", Type: event.Insert, NewRecord: rec("id", txt("1"))}, nil)
	testRouter(t).Channels(insert(cols("id"), 12, "id", txt("1")), nil)
	if n := len(warnings()); n != 4 {
		t.Fatalf("%d warnings, want still 4", n)
	}
}

func TestHasTable(t *testing.T) {
	tables := []Table{{Name: "comments"}, {Name: "app.users"}}
	for name, want := range map[string]bool{
		"comments": true, "public.comments": true, "users": true, "app.users": true, "other.users": true,
		"posts": false, "": false,
	} {
		if got := HasTable(tables, name); got != want {
			t.Errorf("HasTable(%q) = %v, want %v", name, got, want)
		}
	}
	if HasTable(nil, "comments") {
		t.Error("HasTable(nil) = true")
	}
}
