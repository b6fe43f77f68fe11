package pgwal_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/event"
)

// corpusSchema creates the user-defined types of the corpus: an enum, domains, a composite,
// a range, and two base types whose arrays are not ','-separated (pg_type.typdelim ';' and
// '|'), built on PostgreSQL's own box and text I/O functions.
const corpusSchema = `
	CREATE TYPE mood AS ENUM ('happy', 'semi;colon', 'a,b', 'q"x', 'back\slash', '{br}', 'sp ace', 'NULL');
	CREATE DOMAIN label AS text CHECK (VALUE <> 'forbidden');
	CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
	CREATE DOMAIN dbox AS box;
	CREATE DOMAIN intlist AS integer[];
	CREATE TYPE pair AS (n integer, s text, b box, t text[]);
	CREATE TYPE floatrange AS RANGE (subtype = float8);
	CREATE TYPE semibox;
	CREATE FUNCTION semibox_in(cstring) RETURNS semibox AS 'box_in' LANGUAGE internal IMMUTABLE STRICT;
	CREATE FUNCTION semibox_out(semibox) RETURNS cstring AS 'box_out' LANGUAGE internal IMMUTABLE STRICT;
	CREATE TYPE semibox (INPUT = semibox_in, OUTPUT = semibox_out, INTERNALLENGTH = 32, ALIGNMENT = double, DELIMITER = ';');
	CREATE DOMAIN dsemibox AS semibox;
	CREATE TYPE pipetext;
	CREATE FUNCTION pipetext_in(cstring) RETURNS pipetext AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
	CREATE FUNCTION pipetext_out(pipetext) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
	CREATE TYPE pipetext (INPUT = pipetext_in, OUTPUT = pipetext_out, INTERNALLENGTH = VARIABLE, DELIMITER = '|');
	-- Extended statistics give values of the types that have no input function.
	CREATE TABLE stats_src (a int, b int);
	INSERT INTO stats_src SELECT i % 10, i % 5 FROM generate_series(1, 1000) i;
	CREATE STATISTICS stats_ab (ndistinct, dependencies, mcv) ON a, b FROM stats_src;
	ANALYZE stats_src;`

// lit quotes s as an SQL string literal.
func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// tricky are strings holding every character with a meaning in array syntax.
var tricky = []string{"semi;colon", "a,b", `q"x`, `back\slash`, "{br}", "sp ace", "", "NULL", " lead", "pipe|bar", "héllo"}

func lits(ss ...string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = lit(s)
	}
	return out
}

// corpusSamples gives SQL expressions of sample values for each type, by pg_type.typname.
// Every built-in base, range and multirange type must have an entry: the test fails on one
// that has none. An empty list is for the types of which no value can exist outside an
// index (their input functions refuse every text), whose columns hold only NULL.
var corpusSamples = map[string][]string{
	"bool":                         lits("t", "f"),
	"bytea":                        lits(`\xdeadbeef`, `\x`, `\x2c3b7b7d22`),
	"char":                         lits(",", ";", `"`, "a"),
	"name":                         lits(tricky...),
	"int8":                         lits("-9223372036854775808", "9223372036854775807", "0"),
	"int2":                         lits("-32768", "32767"),
	"int2vector":                   lits("1 2 3", "", "7"),
	"int4":                         lits("-2147483648", "2147483647"),
	"regproc":                      lits("now", "array_out"),
	"text":                         lits(tricky...),
	"oid":                          lits("4294967295", "0"),
	"tid":                          lits("(0,1)", "(4294967295,65535)"),
	"xid":                          lits("4294967295", "3"),
	"cid":                          lits("4294967295", "0"),
	"oidvector":                    lits("1 2 4294967295", ""),
	"json":                         lits(`{"a;b": [1, "c,d"], "e": null}`, `"semi;colon"`, `[]`, `1e+300`, `"{\"x\"}"`),
	"xml":                          lits(`<a b="c;d">e,f</a>`, `x &amp; y`),
	"pg_node_tree":                 {"(SELECT ev_action FROM pg_catalog.pg_rewrite ORDER BY oid LIMIT 1)"},
	"pg_ndistinct":                 {"(SELECT stxdndistinct FROM pg_catalog.pg_statistic_ext_data LIMIT 1)"},
	"pg_dependencies":              {"(SELECT stxddependencies FROM pg_catalog.pg_statistic_ext_data LIMIT 1)"},
	"pg_mcv_list":                  {"(SELECT stxdmcv FROM pg_catalog.pg_statistic_ext_data LIMIT 1)"},
	"pg_snapshot":                  lits("10:20:10,14,15", "1:1:"),
	"txid_snapshot":                lits("10:20:10,14,15", "1:1:"),
	"xid8":                         lits("18446744073709551615", "0"),
	"point":                        lits("(1,2)", "(-1.5,1e+300)", "(NaN,Infinity)"),
	"lseg":                         lits("[(1,2),(3,4)]", "[(0,0),(0,0)]"),
	"path":                         lits("[(1,2),(3,4),(5,6)]", "((0,0),(1,1))"),
	"box":                          lits("(1,1),(0,0)", "(2,2),(1,1)", "(-1,-1),(-1,-1)"),
	"polygon":                      lits("((0,0),(1,1),(1,0))", "((5,5))"),
	"line":                         lits("{1,2,3}", "{0,-1,0.5}"),
	"float4":                       lits("3.4028235e+38", "-1.5", "NaN", "Infinity", "-Infinity", "1e-45", "-0"),
	"float8":                       lits("1.7976931348623157e+308", "5e-324", "NaN", "-Infinity", "0.1", "-0"),
	"circle":                       lits("<(1,2),3>", "<(0,0),0>"),
	"money":                        lits("12.34", "-92233720368547758.08", "0"),
	"macaddr":                      lits("08:00:2b:01:02:03", "ff:ff:ff:ff:ff:ff"),
	"inet":                         lits("192.168.1.5/24", "::1", "10.0.0.1"),
	"cidr":                         lits("192.168.1.0/24", "2001:db8::/32"),
	"macaddr8":                     lits("08:00:2b:01:02:03:04:05", "00:00:00:00:00:00:00:00"),
	"aclitem":                      lits("=r/postgres", "postgres=arwdDxt/postgres"),
	"bpchar":                       lits(tricky...),
	"varchar":                      lits(tricky...),
	"date":                         lits("2024-02-29", "infinity", "-infinity", "0001-01-01 BC", "5874897-12-31"),
	"time":                         lits("13:14:15.123456", "00:00:00", "24:00:00"),
	"timestamp":                    lits("2024-07-23 12:00:00.5", "infinity", "-infinity", "0001-01-01 00:00:00 BC", "294276-12-31 23:59:59.999999"),
	"timestamptz":                  lits("2024-07-23 12:00:00.123456+02", "infinity", "-infinity", "1999-12-31 23:59:59.999999-12", "0044-03-15 12:00:00+00 BC"),
	"interval":                     lits("1 year 2 mons 3 days 04:05:06.789", "-178000000 years", "00:00:00", "P1Y2M3DT4H5M6S"),
	"timetz":                       lits("13:14:15.5+05:30", "00:00:00-15:59", "24:00:00+00"),
	"bit":                          lits("1", "0"),
	"varbit":                       lits("101", "", "1111111111111111111111111111111111111111111111111111111111111111111"),
	"numeric":                      lits("123456789012345678901234567890.123456789012345678901234567890", "NaN", "Infinity", "-Infinity", "-0.000", "1.50", "1e-20"),
	"refcursor":                    lits(tricky...),
	"regprocedure":                 lits("now()", "array_out(anyarray)"),
	"regoper":                      lits("||/", "|/"),
	"regoperator":                  lits("+(integer,integer)", "-(NONE,integer)"),
	"regclass":                     lits("pg_class", "pg_catalog.pg_type"),
	"regcollation":                 lits(`"C"`, `"default"`),
	"regtype":                      lits("integer", "text[]", `"char"`),
	"regrole":                      lits("postgres", "pg_read_all_data"),
	"regnamespace":                 lits("pg_catalog", "public"),
	"uuid":                         lits("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"),
	"pg_lsn":                       lits("16/B374D848", "0/0", "FFFFFFFF/FFFFFFFF"),
	"tsvector":                     lits(`'semi;colon':1 'a,b':2A 'q"x' '{br}' 'sp ace'`, ``, `'\\'`),
	"gtsvector":                    {},
	"tsquery":                      lits(`'a;b' & ( 'c,d' | !'e' ) <-> 'f'`, `'x'`),
	"regconfig":                    lits("english", "simple"),
	"regdictionary":                lits("simple", "english_stem"),
	"jsonb":                        lits(`{"a;b": [1, "c,d"], "e": null, "f": 1.50}`, `"semi;colon"`, `[]`, `{}`, `null`, `-0.0`),
	"jsonpath":                     lits(`$.a[*] ? (@ > 1)`, `strict $."semi;colon"`),
	"int4range":                    lits("[1,5)", "empty", "(,3)", "[-2147483648,)"),
	"numrange":                     lits("[1.5,2.5]", "empty", "(,)"),
	"tsrange":                      lits(`["2024-01-01 00:00:00","2024-02-01 12:00:00.5")`, "empty", "(,infinity]"),
	"tstzrange":                    lits(`["2024-01-01 00:00:00+00","2024-02-01 00:00:00+00")`, "empty"),
	"daterange":                    lits("[2024-01-01,2024-02-01)", "empty", "(,)"),
	"int8range":                    lits("[1,9223372036854775807)", "empty"),
	"int4multirange":               lits("{[1,3),[5,7)}", "{}", "{(,)}"),
	"nummultirange":                lits("{[1.5,2.5],(3,4)}", "{}"),
	"tsmultirange":                 lits(`{["2024-01-01 00:00:00","2024-02-01 00:00:00")}`, "{}"),
	"tstzmultirange":               lits(`{["2024-01-01 00:00:00+00","2024-02-01 00:00:00+00"),[infinity,)}`, "{}"),
	"datemultirange":               lits("{[2024-01-01,2024-02-01),[2024-03-01,)}", "{}"),
	"int8multirange":               lits("{[1,2),[4,5)}", "{}"),
	"pg_brin_bloom_summary":        {},
	"pg_brin_minmax_multi_summary": {},
	"cardinal_number":              lits("0", "2147483647"),
	"character_data":               lits(tricky...),
	"sql_identifier":               lits(tricky...),
	"time_stamp":                   lits("2024-07-23 12:00:00.12+02", "infinity"),
	"yes_or_no":                    lits("YES", "NO"),

	// User-defined types (corpusSchema).
	"mood":       lits("happy", "semi;colon", "a,b", `q"x`, `back\slash`, "{br}", "sp ace", "NULL"),
	"label":      lits(tricky...),
	"posint":     lits("1", "2147483647"),
	"dbox":       lits("(1,1),(0,0)", "(3,3),(2,2)"),
	"intlist":    lits("{1,2,3}", "{}", "{{1,NULL},{3,4}}"),
	"pair":       lits(`(1,"semi;colon","(1,1),(0,0)","{a,""b,c"",NULL}")`, `(,,,)`, `(-5,"",,{})`, `(2,"q""x\\y",,"{""{br}""}")`),
	"floatrange": lits("[1.5,2.5)", "empty", "(,NaN]"),
	"semibox":    lits("(1,1),(0,0)", "(2,2),(1,1)"),
	"dsemibox":   lits("(3,3),(0,0)", "(4,4),(1,1)"),
	"pipetext":   lits(tricky...),
}

// userTypes are the corpus's user-defined types, in corpusSchema.
var userTypes = []string{"mood", "label", "posint", "dbox", "intlist", "pair", "floatrange", "semibox", "dsemibox", "pipetext"}

// stringForms are the types whose documented JSON form (event package doc) is a string of
// their text form although to_jsonb writes them otherwise: composites (an object in
// to_jsonb), int2vector and oidvector (an array in to_jsonb; their text form is
// space-separated numbers, not array syntax), and domains over an array type, whose arrays
// decode as arrays of the inner arrays' text forms.
var stringForms = map[string]bool{"pair": true, "int2vector": true, "oidvector": true, "intlist": true}

// numberForms are the types whose documented JSON form is a number (their text form) where
// to_jsonb writes a string.
var numberForms = map[string]bool{"oid": true, "xid": true, "cid": true}

type corpusType struct {
	name    string // typname
	sql     string // the type in SQL
	array   bool   // it has an array type
	samples []string
}

// TestValueCorpus writes a value of every built-in base, range and multirange type, of the
// user-defined types of corpusSchema, and of the array of each (one- and two-dimensional,
// with NULL elements, empty, and elements holding , ; " \ { } and spaces) through logical
// replication, and compares each decoded value with what PostgreSQL says it is: its text
// form exactly (format('%s', v)), and its JSON with to_jsonb's (same nesting, same
// elements; see leafMatches for the documented representations).
func TestValueCorpus(t *testing.T) {
	t.Parallel()
	h := newHarness(t, corpusSchema)
	ctx := t.Context()

	var types []corpusType
	// Built-in base, range and multirange types, and the built-in domains of
	// information_schema; not arrays (each is tested as the array of its element type).
	rows, err := h.conn.Query(ctx, `SELECT t.typname::text, quote_ident(n.nspname) || '.' || quote_ident(t.typname), t.typarray <> 0
		FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
		WHERE t.oid < 16384 AND t.typtype IN ('b', 'r', 'm', 'd') AND t.typisdefined
			AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type a WHERE a.typarray = t.oid)
		ORDER BY t.oid`)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for rows.Next() {
		var ct corpusType
		if err := rows.Scan(&ct.name, &ct.sql, &ct.array); err != nil {
			t.Fatal(err)
		}
		s, ok := corpusSamples[ct.name]
		if !ok {
			missing = append(missing, ct.name)
			continue
		}
		ct.samples = s
		types = append(types, ct)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Fatalf("built-in types with no sample in corpusSamples: %v", missing)
	}
	if len(types) < 80 {
		t.Fatalf("only %d built-in types found in pg_type", len(types))
	}
	for _, ct := range types {
		if len(ct.samples) == 0 {
			// The documented reason such a type is tested with NULL only.
			if _, err := h.conn.Exec(ctx, "SELECT ''::"+ct.sql); err == nil {
				t.Errorf("%s accepts input: give it samples in corpusSamples", ct.name)
			}
		}
	}
	for _, name := range userTypes {
		types = append(types, corpusType{name: name, sql: name, array: true, samples: corpusSamples[name]})
	}

	// One column per type and one per array type; rows: 1 holds each sample in a
	// one-dimensional array, 2 a two-dimensional array with NULLs, 3 NULLs, 4 empty arrays.
	var cols, defs []string
	vals := make([][]string, 4)
	for _, ct := range types {
		n := len(ct.samples)
		s := func(i int) string {
			if n == 0 {
				return "NULL::" + ct.sql
			}
			return "(" + ct.samples[i%n] + ")::" + ct.sql
		}
		cols = append(cols, "c_"+ct.name)
		defs = append(defs, "c_"+ct.name+" "+ct.sql)
		vals[0] = append(vals[0], s(0))
		vals[1] = append(vals[1], s(n-1))
		vals[2] = append(vals[2], "NULL")
		vals[3] = append(vals[3], s(1))
		if !ct.array {
			continue
		}
		all := []string{"NULL"}
		for i := range n {
			all = append(all, s(i))
		}
		cols = append(cols, "a_"+ct.name)
		defs = append(defs, "a_"+ct.name+" "+ct.sql+"[]")
		vals[0] = append(vals[0], "ARRAY["+strings.Join(all, ", ")+"]::"+ct.sql+"[]")
		vals[1] = append(vals[1], fmt.Sprintf("ARRAY[[%s, NULL, %s], [%s, %s, NULL]]::%s[]", s(0), s(1), s(1), s(2), ct.sql))
		vals[2] = append(vals[2], "NULL")
		vals[3] = append(vals[3], "'{}'::"+ct.sql+"[]")
	}
	// Arrays with explicit bounds and three dimensions.
	cols = append(cols, "x_text3d", "x_box3d")
	defs = append(defs, "x_text3d text[]", "x_box3d box[]")
	vals[0] = append(vals[0], `'[0:1][1:1][2:3]={{{"semi;colon","a,b"}},{{NULL,""}}}'`, `'[0:0][1:1][-1:0]={{{(1,1),(0,0);NULL}}}'`)
	vals[1] = append(vals[1], `'{{{"{br}"}}}'`, `'{{{"(2,2),(1,1)"}};{{"(3,3),(0,0)"}}}'`)
	vals[2] = append(vals[2], "NULL", "NULL")
	vals[3] = append(vals[3], "'{}'", "'{}'")

	h.exec("CREATE TABLE corpus (id int PRIMARY KEY, " + strings.Join(defs, ", ") + ")")
	h.start(h.config("corpus"))
	h.waitConnected()
	for i, v := range vals {
		if _, err := h.conn.Exec(ctx, fmt.Sprintf("INSERT INTO corpus (id, %s) VALUES (%d, %s)", strings.Join(cols, ", "), i+1, strings.Join(v, ", "))); err != nil {
			t.Fatalf("insert row %d: %v", i+1, err)
		}
	}
	evs := h.waitEvents(len(vals))

	typeOf := map[string]string{"x_text3d": "text", "x_box3d": "box"}
	for _, ct := range types {
		typeOf["c_"+ct.name], typeOf["a_"+ct.name] = ct.name, ct.name
	}
	for _, col := range cols {
		t.Run(col, func(t *testing.T) {
			isArray := !strings.HasPrefix(col, "c_")
			textArray := "NULL::jsonb"
			if isArray {
				textArray = "to_jsonb(" + col + "::text[])"
			}
			rows, err := h.conn.Query(ctx, fmt.Sprintf("SELECT id, num_nulls(%s) = 1, format('%%s', %s), to_jsonb(%s), %s FROM corpus ORDER BY id",
				col, col, col, textArray))
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			for rows.Next() {
				var (
					id                  int
					isNull              bool
					text                string
					pgJSON, pgTextArray []byte
				)
				if err := rows.Scan(&id, &isNull, &text, &pgJSON, &pgTextArray); err != nil {
					t.Fatal(err)
				}
				v, ok := evs[id-1].NewRecord.Get(col)
				if !ok {
					t.Fatalf("row %d: column missing from the event", id)
				}
				if isNull {
					if !v.IsNull() {
						t.Errorf("row %d: got %v, want NULL", id, v)
					}
					continue
				}
				got, _ := v.Text()
				if got != text {
					t.Errorf("row %d: text %q, PostgreSQL's %q", id, got, text)
				}
				if _, err := v.Any(); err != nil {
					t.Errorf("row %d: Any: %v", id, err)
				}
				ours, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				textForm := mustJSON(t, pgTextArray)
				if !isArray {
					textForm = text
				}
				if msg := jsonMatches(typeOf[col], decodeJSON(t, ours), mustJSON(t, pgJSON), textForm); msg != "" {
					t.Errorf("row %d: JSON %s, to_jsonb %s: %s", id, ours, pgJSON, msg)
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func decodeJSON(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("invalid JSON %s: %v", b, err)
	}
	return v
}

func mustJSON(t *testing.T, b []byte) any {
	t.Helper()
	if b == nil {
		return nil
	}
	return decodeJSON(t, b)
}

// jsonMatches compares our JSON form of a value (or of an array, element by element) of
// type typ with to_jsonb's, given PostgreSQL's text form of the same value (or a JSON array
// of its elements' text forms, of the same shape). It returns "" when they match.
func jsonMatches(typ string, ours, pg, text any) string {
	if pa, ok := text.([]any); ok {
		oa, ok := ours.([]any)
		if !ok {
			return fmt.Sprintf("got %v where PostgreSQL has an array", ours)
		}
		if len(oa) != len(pa) {
			return fmt.Sprintf("got %d elements where PostgreSQL has %d", len(oa), len(pa))
		}
		pga, _ := pg.([]any)
		if len(pga) != len(pa) {
			return fmt.Sprintf("to_jsonb has %d elements where the text[] cast has %d", len(pga), len(pa))
		}
		for i := range oa {
			if msg := jsonMatches(typ, oa[i], pga[i], pa[i]); msg != "" {
				return fmt.Sprintf("element %d: %s", i, msg)
			}
		}
		return ""
	}
	if text == nil {
		if ours != nil {
			return fmt.Sprintf("got %v for NULL", ours)
		}
		return ""
	}
	if leafMatches(typ, ours, pg, text.(string)) {
		return ""
	}
	return fmt.Sprintf("%#v does not match to_jsonb's %#v nor text form %q", ours, pg, text)
}

// leafMatches is the documented JSON form of one value (event package doc): to_jsonb's
// value (numbers compared exactly as decimals; timestamps with a time zone as instants,
// since walflow writes UTC as Z), or else a string of PostgreSQL's text form where to_jsonb
// writes a string too (time with time zone, whose offset to_jsonb writes with minutes) or
// the type is in stringForms, or a number of the text form for the types in numberForms.
func leafMatches(typ string, ours, pg any, text string) bool {
	if jsonEqual(ours, pg) {
		return true
	}
	if n, ok := ours.(json.Number); ok {
		return numberForms[typ] && string(n) == text && pg == text
	}
	os, ok := ours.(string)
	if !ok {
		return false
	}
	if ps, ok := pg.(string); ok {
		if a, err := time.Parse(time.RFC3339Nano, os); err == nil {
			if b, err := time.Parse(time.RFC3339Nano, ps); err == nil && a.Equal(b) {
				return true
			}
		}
		return os == text
	}
	return stringForms[typ] && os == text
}

func jsonEqual(a, b any) bool {
	switch a := a.(type) {
	case json.Number:
		b, ok := b.(json.Number)
		if !ok {
			return false
		}
		x, ok1 := new(big.Rat).SetString(string(a))
		y, ok2 := new(big.Rat).SetString(string(b))
		return ok1 && ok2 && x.Cmp(y) == 0
	case []any:
		b, ok := b.([]any)
		return ok && slices.EqualFunc(a, b, jsonEqual)
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			if w, ok := b[k]; !ok || !jsonEqual(v, w) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}

// TestUserTypeRefreshedOnRelation checks that a user-defined type is looked up again when a
// new Relation message describes its table: the column's type name follows a rename.
func TestUserTypeRefreshedOnRelation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `
		CREATE TYPE pipetext;
		CREATE FUNCTION pipetext_in(cstring) RETURNS pipetext AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
		CREATE FUNCTION pipetext_out(pipetext) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
		CREATE TYPE pipetext (INPUT = pipetext_in, OUTPUT = pipetext_out, INTERNALLENGTH = VARIABLE, DELIMITER = '|');
		CREATE TABLE notes (id int PRIMARY KEY, tags pipetext[]);`)
	h.start(h.config("notes"))
	h.waitConnected()
	h.exec(`INSERT INTO notes VALUES (1, '{a,b|c;d}')`)
	h.waitEvents(1)
	h.exec(`ALTER TYPE pipetext RENAME TO bartext`)
	h.exec(`ALTER TABLE notes ADD COLUMN n int`) // makes PostgreSQL send a new Relation message
	h.exec(`INSERT INTO notes VALUES (2, '{e,f|g;h}', 1)`)
	evs := h.waitEvents(2)
	for i, want := range []struct{ typ, json string }{{"pipetext[]", `["a,b","c;d"]`}, {"bartext[]", `["e,f","g;h"]`}} {
		c, _ := evs[i].Source.Column("tags")
		v, _ := evs[i].NewRecord.Get("tags")
		b, _ := json.Marshal(v)
		if c.Type != want.typ || string(b) != want.json {
			t.Errorf("event %d: tags is %s %s, want %s %s", i+1, c.Type, b, want.typ, want.json)
		}
	}
}

// TestBuiltinArrayDelims checks event.ArrayDelim, walflow's static table of built-in array
// delimiters, against pg_type: every built-in array type's element delimiter.
func TestBuiltinArrayDelims(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "")
	rows, err := h.conn.Query(t.Context(), `SELECT a.oid, a.typname::text, e.typdelim::text FROM pg_catalog.pg_type a
		JOIN pg_catalog.pg_type e ON e.oid = a.typelem
		WHERE a.oid < 16384 AND a.typoutput = 'pg_catalog.array_out'::regproc`)
	if err != nil {
		t.Fatal(err)
	}
	n, semi := 0, 0
	for rows.Next() {
		var (
			oid        uint32
			name, want string
		)
		if err := rows.Scan(&oid, &name, &want); err != nil {
			t.Fatal(err)
		}
		n++
		if want != "," {
			semi++
		}
		if got := event.ArrayDelim(oid); string(got) != want {
			t.Errorf("%s (%d): ArrayDelim %q, pg_type.typdelim %q", name, oid, got, want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n < 80 || semi == 0 {
		t.Fatalf("found %d built-in array types, %d with a delimiter other than ','", n, semi)
	}
}
