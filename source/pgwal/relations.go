package pgwal

import (
	"context"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walflow/walflow/event"
)

// relation is a table as the stream describes it, with its columns resolved for decoding.
type relation struct {
	msg     relationMsg
	columns []event.Column // shared by every event of this relation version
	// delims holds, per column, the delimiter of an array column whose element type's
	// differs from event.ArrayDelim of its decode OID (an array of a user-defined type), and
	// 0 for every other column. Nil when no column needs one.
	delims []byte
}

// typeInfo is what the catalog says about a column type.
type typeInfo struct {
	name  string // format_type(oid, typmod)
	oid   uint32 // OID to decode values as
	delim byte   // array element delimiter when it differs from event.ArrayDelim(oid); else 0
}

type typeKey struct {
	oid    uint32
	typmod int32
}

// firstNormalOID is PostgreSQL's FirstNormalObjectId: types below it are built in and never
// change; types from it on are created by users and extensions.
const firstNormalOID = 16384

// typeResolver turns column type OIDs into names, decode OIDs and array delimiters, asking
// the catalog once per built-in type and once per Relation message for a user-defined one.
// Domains decode as their base type, enums and unknown types as text, arrays of those as
// the matching array type or text[], split on their element type's pg_type.typdelim.
type typeResolver struct {
	known *pgtype.Map
	cache map[typeKey]typeInfo
}

func newTypeResolver() *typeResolver {
	return &typeResolver{known: pgtype.NewMap(), cache: map[typeKey]typeInfo{}}
}

// querier is the part of pgx.Conn the resolver needs.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (tr *typeResolver) resolve(ctx context.Context, q querier, oid uint32, typmod int32) (typeInfo, error) {
	k := typeKey{oid, typmod}
	if ti, ok := tr.cache[k]; ok {
		return ti, nil
	}
	var name string
	if err := q.QueryRow(ctx, "SELECT pg_catalog.format_type($1, NULLIF($2, -1))", oid, typmod).Scan(&name); err != nil {
		return typeInfo{}, fmt.Errorf("look up the name of type %d: %w", oid, err)
	}
	dec, delim, err := tr.decodeType(ctx, q, oid, 0)
	if err != nil {
		return typeInfo{}, err
	}
	ti := typeInfo{name: name, oid: dec}
	if delim != event.ArrayDelim(dec) {
		ti.delim = delim
	}
	tr.cache[k] = ti
	return ti, nil
}

// decodeType returns the OID to decode a type's values as and the delimiter between its
// elements: pg_type.typdelim of the element type for an array, event.ArrayDelim of the
// decode OID otherwise.
func (tr *typeResolver) decodeType(ctx context.Context, q querier, oid uint32, depth int) (uint32, byte, error) {
	if _, ok := tr.known.TypeForOID(oid); ok {
		return oid, event.ArrayDelim(oid), nil
	}
	if depth > 10 {
		return pgtype.TextOID, ',', nil
	}
	var (
		typtype, delim string
		array          bool
		base, elem     uint32
	)
	// An array is a type written by array_out; int2vector and oidvector have an element type
	// too, but write their elements space-separated without braces, so they stay text.
	err := q.QueryRow(ctx, `SELECT t.typtype::text, t.typoutput = 'pg_catalog.array_out'::regproc, t.typbasetype, t.typelem,
			coalesce(e.typdelim, ',')::text
		FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem WHERE t.oid = $1`, oid).
		Scan(&typtype, &array, &base, &elem, &delim)
	if err == pgx.ErrNoRows {
		// The type was dropped since the change was written: its text form is all we have.
		return pgtype.TextOID, ',', nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("look up type %d in pg_type: %w", oid, err)
	}
	switch {
	case typtype == "d":
		return tr.decodeType(ctx, q, base, depth+1)
	case array && elem != 0:
		e, _, err := tr.decodeType(ctx, q, elem, depth+1)
		if err != nil {
			return 0, 0, err
		}
		d := byte(',')
		if len(delim) == 1 {
			d = delim[0]
		}
		if a, ok := event.ArrayOID(e); ok {
			return a, d, nil
		}
		return pgtype.TextArrayOID, d, nil
	}
	return pgtype.TextOID, ',', nil
}

// resolveRelation builds the event columns of a Relation message. The user-defined types of
// its columns are looked up again, so a Relation message sent after a schema change brings
// their current names.
func (tr *typeResolver) resolveRelation(ctx context.Context, q querier, m relationMsg) (*relation, error) {
	cols := make([]event.Column, len(m.Columns))
	var delims []byte
	for i, c := range m.Columns {
		if c.OID >= firstNormalOID {
			delete(tr.cache, typeKey{c.OID, c.TypMod})
		}
		ti, err := tr.resolve(ctx, q, c.OID, c.TypMod)
		if err != nil {
			return nil, fmt.Errorf("pgwal: resolve column %q of %s.%s: %w", c.Name, m.Namespace, m.Name, err)
		}
		cols[i] = event.Column{Name: c.Name, Type: ti.name, OID: ti.oid, Key: c.Key}
		if ti.delim != 0 {
			if delims == nil {
				delims = make([]byte, len(m.Columns))
			}
			delims[i] = ti.delim
		}
	}
	return &relation{msg: m, columns: cols, delims: delims}, nil
}

// eventColumn is a column whose type was not resolved: decoded as its own OID.
func eventColumn(c relationColumn) event.Column {
	return event.Column{Name: c.Name, Type: "oid:" + strconv.FormatUint(uint64(c.OID), 10), OID: c.OID, Key: c.Key}
}
