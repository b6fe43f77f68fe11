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
