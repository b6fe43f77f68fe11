package index_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
	indexmem "github.com/walflow/walflow/index/memory"
	ledgermem "github.com/walflow/walflow/ledger/memory"
)

func TestValidateName(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"user_id", true},
		{"a", true},
		{"t2", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"User", false},
		{"2users", false},
		{"_users", false},
		{"user-id", false},
		{"user id", false},
		{"users/7", false},
	} {
		err := index.ValidateName(c.name)
		if (err == nil) != c.ok {
			t.Errorf("ValidateName(%q) = %v; want ok %v", c.name, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "lowercase identifier") {
			t.Errorf("ValidateName(%q) = %q; want the error to name the fix", c.name, err)
		}
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	led, store := ledgermem.New(nil), indexmem.New()
	defer led.Close()
	ok := index.Field("user_id", "user_id")
	for _, c := range []struct {
		what string
		cfg  index.Config
		want string
	}{
		{"no ledger", index.Config{Store: store, Indexers: []index.Indexer{ok}}, "Config.Ledger is nil"},
		{"no store", index.Config{Ledger: led, Indexers: []index.Indexer{ok}}, "Config.Store is nil"},
		{"no indexers", index.Config{Ledger: led, Store: store}, "Config.Indexers is empty"},
		{"bad name", index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{index.Type("Types")}}, `indexer name "Types" is invalid`},
		{"no func", index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{{Name: "x"}}}, `"x" has no Func`},
		{"duplicate", index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{ok, ok}}, `two indexers are named "user_id"`},
		{"negative batch", index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{ok}, Batch: -1}, "Config.Batch is -1"},
	} {
		_, err := index.New(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: New = %v; want an error containing %q", c.what, err, c.want)
		}
	}
	if _, err := index.New(index.Config{Ledger: led, Store: store, Indexers: []index.Indexer{ok}}); err != nil {
		t.Fatalf("New with a valid config: %v", err)
	}
}

func TestField(t *testing.T) {
	t.Parallel()
	ix := index.Field("user_id", "user_id")
	toast := event.Record{{Name: "id", Value: event.Text(23, "1")}, {Name: "user_id", Value: event.Unchanged(25)}}
	changed := update("posts", row("id", "1", "user_id", "7"), row("id", "1", "user_id", "8"))
	changed.Changes = event.Changes{{Column: "user_id", OldValue: event.Text(25, "7"), NewValue: event.Text(25, "8")}}
	keyOnly := update("posts", nil, row("id", "1", "user_id", "8"))
	keyOnly.Changes = event.Changes{{Column: "user_id", OldValue: event.Text(25, "7"), NewValue: event.Text(25, "8")}}
	for _, c := range []struct {
		what string
		e    *event.Event
		want []string
	}{
		{"insert", insert("posts", row("id", "1", "user_id", "7")), []string{"7"}},
		{"insert of NULL", insert("posts", row("id", "1", "user_id", "NULL")), nil},
		{"insert without the column", insert("tags", row("id", "1")), nil},
		{"empty text", insert("posts", row("id", "1", "user_id", "")), []string{""}},
		{"delete", del("posts", row("id", "1", "user_id", "7")), []string{"7"}},
		{"delete, key-only old record", del("posts", row("id", "1")), nil},
		{"update, same value", update("posts", row("id", "1", "user_id", "7"), row("id", "1", "user_id", "7")), []string{"7"}},
		{"update, value changed (full old record)", changed, []string{"8", "7"}},
		{"update, value changed (from Changes)", keyOnly, []string{"8", "7"}},
		{"update, no old record", update("posts", nil, row("id", "1", "user_id", "7")), []string{"7"}},
		{"update, unchanged TOAST filled from the old record", update("posts", row("id", "1", "user_id", "7"), toast), []string{"7"}},
		{"update, unchanged TOAST unknown", update("posts", nil, toast), nil},
		{"truncate", &event.Event{Name: "posts", Type: event.Truncate}, nil},
	} {
		got := ix.Func(c.e, nil)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: Field values = %q; want %q", c.what, got, c.want)
		}
	}
	// Values are appended to dst.
	if got := ix.Func(insert("posts", row("user_id", "7")), []string{"x"}); !slices.Equal(got, []string{"x", "7"}) {
		t.Errorf("Field with a non-empty dst = %q; want [x 7]", got)
	}
	if ix.Version != "field:user_id" || index.Field("user_id", "author_id").Version == ix.Version {
		t.Errorf("Field versions: %q; want one per column", ix.Version)
	}
}

func TestTypeAndTable(t *testing.T) {
	t.Parallel()
	typ, table := index.Type("types"), index.Table("tables")
	for _, c := range []struct {
		e           *event.Event
		typ, tableV string
	}{
		{insert("posts", nil), "insert", "posts"},
		{update("comments", nil, nil), "update", "comments"},
		{del("posts", nil), "delete", "posts"},
		{&event.Event{Name: "users", Type: event.Truncate}, "truncate", "users"},
	} {
		if got := typ.Func(c.e, nil); !slices.Equal(got, []string{c.typ}) {
			t.Errorf("Type of a %s = %q", c.typ, got)
		}
		if got := table.Func(c.e, nil); !slices.Equal(got, []string{c.tableV}) {
			t.Errorf("Table of an event of %s = %q", c.tableV, got)
		}
	}
}
