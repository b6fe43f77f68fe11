package configfile

import (
	"strings"
	"testing"

	"github.com/walflow/walflow/event"
)

func TestParseIndexes(t *testing.T) {
	t.Parallel()
	const file = `database_url: postgres://app@localhost/app
indexes:
  by_user: {field: user_id}
  by_type: {type: true}
  by_table:
    table: true
`
	c, err := parseConfig("walflow.yaml", []byte(file), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	ixs := c.Engine.Indexers
	if len(ixs) != 3 || ixs[0].Name != "by_user" || ixs[1].Name != "by_type" || ixs[2].Name != "by_table" {
		t.Fatalf("Indexers = %+v, want by_user, by_type, by_table in file order", ixs)
	}
	// Each is the built-in indexer its key names.
	ev := &event.Event{Name: "comments", Type: event.Insert, NewRecord: event.Record{{Name: "user_id", Value: event.Text(23, "7")}}}
	for i, want := range []string{"7", "insert", "comments"} {
		if got := ixs[i].Func(ev, nil); len(got) != 1 || got[0] != want {
			t.Errorf("%s gives %q, want [%s]", ixs[i].Name, got, want)
		}
	}
	if ixs[0].Version != "field:user_id" || ixs[1].Version != "type" || ixs[2].Version != "table" {
		t.Errorf("versions = %q, %q, %q", ixs[0].Version, ixs[1].Version, ixs[2].Version)
	}
	c, err = parseConfig("walflow.yaml", []byte("database_url: postgres://app@localhost/app\n"), noEnv)
	if err != nil || len(c.Engine.Indexers) != 0 {
		t.Errorf("without indexes: %v, %+v", err, c)
	}
}

func TestParseIndexesErrors(t *testing.T) {
	t.Parallel()
	const db = "database_url: postgres://app@localhost/app\nindexes:\n"
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"two kinds", db + "  by_user: {field: user_id, table: true}\n", "walflow.yaml:3: indexes.by_user: set exactly one of field, type or table"},
		{"no kind", db + "  by_user: {}\n", "walflow.yaml:3: indexes.by_user: set exactly one of field, type or table"},
		{"null", db + "  by_user:\n", "walflow.yaml:3: indexes.by_user: empty; set exactly one of field, type or table"},
		{"empty field", db + "  by_user: {field: \"\"}\n", "walflow.yaml:3: indexes.by_user.field: empty; write the column"},
		{"null field", db + "  by_user:\n    field:\n", "walflow.yaml:4: indexes.by_user.field: empty; write the column"},
		{"type false", db + "  by_type: {type: false}\n", "walflow.yaml:3: indexes.by_type.type: false does not make an index"},
		{"table not bool", db + "  by_table: {table: yes please}\n", `indexes.by_table.table: want true, found "yes please"`},
		{"bad name", db + "  ByUser: {field: user_id}\n", `walflow.yaml:3: indexes.ByUser: the name "ByUser" is not an index name; use a lowercase identifier`},
		{"quoted bad name", db + "  \"by-user\": {field: user_id}\n", `indexes["by-user"]: the name "by-user" is not an index name`},
		{"unknown key", db + "  by_user: {feild: user_id}\n", "walflow.yaml:3: indexes.by_user.feild: unknown key (did you mean field?); the keys of an index are field, type, table"},
		{"field a list", db + "  by_user: {field: [a]}\n", "indexes.by_user.field: want a column name like user_id, found a list"},
		{"a list", "database_url: postgres://app@localhost/app\nindexes: [by_user]\n", "walflow.yaml:2: indexes: want a mapping of index names to what they index"},
		{"duplicate", db + "  by_user: {type: true}\n  by_user: {table: true}\n", "walflow.yaml:4: indexes.by_user: set twice (first on line 3)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseConfig("walflow.yaml", []byte(tt.yaml), noEnv)
			if err == nil {
				t.Fatalf("parseConfig succeeded (%+v), want an error with %q", c, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error\n\t%v\ndoes not contain\n\t%s", err, tt.want)
			}
		})
	}
}
