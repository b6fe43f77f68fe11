// Package event holds the types every part of walflow shares: an [Event] (one row change
// decoded from PostgreSQL's write-ahead log), its [Value]s, [Record]s and [Changes], and the
// two positions that order events: the PostgreSQL [LSN] and the ledger [Position].
//
// It is a leaf package: it imports nothing else of walflow, so any package may use it.
//
// # Values
//
// PostgreSQL sends every column in its text form. A [Value] keeps that text exactly as
// PostgreSQL wrote it, with the OID of the type to decode it as, so nothing is lost between
// the database and a consumer: numeric keeps all its digits, floats keep NaN and ±Infinity,
// timestamps keep ±infinity. [Value.Any] decodes it into a Go value with pgx's type map, and
// [Value.MarshalJSON] writes the natural JSON form (numbers for integers, floats and numeric,
// booleans, raw JSON for json/jsonb, arrays as JSON arrays, everything else as a string).
//
// # JSON forms
//
// [Value.MarshalJSON] writes each type as follows; the source/pgwal corpus test checks every
// built-in type against PostgreSQL's format('%s', v) and to_jsonb(v).
//
//   - smallint, integer, bigint, oid, xid, cid: a JSON number (to_jsonb writes oid, xid and
//     cid as strings).
//   - real, double precision, numeric: a JSON number with PostgreSQL's digits; NaN,
//     Infinity and -Infinity as strings.
//   - boolean: true or false. json and jsonb: the JSON itself.
//   - timestamp and timestamp with time zone: ISO 8601 with a T, the latter in UTC with a
//     Z; infinite and BC values keep PostgreSQL's text.
//   - arrays: nested JSON arrays (explicit bounds are dropped), NULL elements as null, each
//     element in its element type's form. Elements are split on the element type's
//     delimiter, pg_type.typdelim: ',' for every built-in type but box, whose arrays use
//     ';' ([ArrayDelim]); an array of a user-defined type carries its own ([ArrayText],
//     [Value.Delim]).
//   - everything else: a string of PostgreSQL's text form. This includes enums, ranges,
//     multiranges, geometric types, time with time zone (its offset as PostgreSQL writes
//     it, "+00" where to_jsonb writes "+00:00"), composite types (to_jsonb writes an
//     object; walflow keeps the row's text form, "(1,x)"), int2vector and oidvector
//     (space-separated numbers; to_jsonb writes an array), the elements of an array of a
//     domain over an array type (each inner array's text form), and types pgx does not know.
//   - gtsvector, pg_brin_bloom_summary and pg_brin_minmax_multi_summary have no value
//     outside an index (their input functions refuse every text), so a column of them
//     holds only NULL: null.
//
// An unchanged TOASTed column (pgoutput's 'u' marker) is not NULL: walflow fills it from the
// old row when that is known, and otherwise keeps it as a Value of kind [KindUnchanged].
// In JSON such a column is left out of new_record and named in the event's unchanged_toast
// list, so no consumer can mistake it for NULL.
//
// # Binary form
//
// [AppendBinary] and [DecodeBinary] are the compact, versioned encoding the ledger stores.
// The decoder never panics on input; malformed bytes give an error.
package event
