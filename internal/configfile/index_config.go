package configfile

import (
	"github.com/walflow/walflow"
	"github.com/walflow/walflow/index"
)

// indexConfig is one entry of indexes: exactly one of its keys says what the index holds.
// Its key is the index's name.
type indexConfig struct {
	Field string `yaml:"field"`
	Type  bool   `yaml:"type"`
	Table bool   `yaml:"table"`
}

var indexesSpec = &spec{kind: kindMap, want: "a mapping of index names to what they index, like by_user: {field: user_id}",
	any: mapSpec("the keys of an index",
		"field", scalar("a column name like user_id"),
		"type", &spec{kind: kindBool, want: "true"},
		"table", &spec{kind: kindBool, want: "true"},
	),
}

// indexKinds is how an index entry says what it holds, for errors.
const indexKinds = "set exactly one of field, type or table, like {field: user_id}, {type: true} or {table: true}"

// indexes validates indexes into e.Indexers, in the file's order.
func (l *loader) indexes(fc *fileConfig, e *walflow.Config) error {
	for _, name := range l.order["indexes"] {
		path := joinPath("indexes", name)
		if err := index.ValidateName(name); err != nil {
			return l.errKey(path, "the name %q is not an index name; use a lowercase identifier of at most 63 bytes: a letter, then letters, digits or underscores, like by_user", name)
		}
		ic := fc.Indexes[name]
		if ic == nil {
			return l.errPath(path, "empty; %s", indexKinds)
		}
		n := 0
		if _, ok := l.nodes[path+".field"]; ok {
			n++
		}
		if ic.Type {
			n++
		}
		if ic.Table {
			n++
		}
		_, setType := l.nodes[path+".type"]
		_, setTable := l.nodes[path+".table"]
		switch {
		case setType && !ic.Type:
			return l.errPath(path+".type", "false does not make an index; write type: true, or another of field or table")
		case setTable && !ic.Table:
			return l.errPath(path+".table", "false does not make an index; write table: true, or another of field or type")
		case n != 1:
			return l.errKey(path, "%s", indexKinds)
		}
		var ix index.Indexer
		switch {
		case ic.Type:
			ix = index.Type(name)
		case ic.Table:
			ix = index.Table(name)
		default:
			if ic.Field == "" {
				return l.errPath(path+".field", "empty; write the column whose value keys the index, like field: user_id")
			}
			ix = index.Field(name, ic.Field)
		}
		e.Indexers = append(e.Indexers, ix)
	}
	return nil
}
