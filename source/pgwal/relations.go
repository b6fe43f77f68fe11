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
}

// typeInfo is what the catalog says about a column type.
type typeInfo struct {
	name string // format_type(oid, typmod)
	oid  uint32 // OID to decode values as
}

type typeKey struct {
	oid    uint32
	typmod int32
}

// typeResolver turns column type OIDs into names and decode OIDs, asking the catalog once
// per type. Domains decode as their base type, enums and unknown types as text, arrays of
// those as the matching array type or text[].
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
	dec, err := tr.decodeOID(ctx, q, oid, 0)
	if err != nil {
		return typeInfo{}, err
	}
	ti := typeInfo{name: name, oid: dec}
	tr.cache[k] = ti
	return ti, nil
}

func (tr *typeResolver) decodeOID(ctx context.Context, q querier, oid uint32, depth int) (uint32, error) {
	if _, ok := tr.known.TypeForOID(oid); ok {
		return oid, nil
	}
	if depth > 10 {
		return pgtype.TextOID, nil
	}
	var (
		typtype, category string
		base, elem        uint32
	)
	err := q.QueryRow(ctx, "SELECT typtype::text, typcategory::text, typbasetype, typelem FROM pg_catalog.pg_type WHERE oid = $1", oid).
		Scan(&typtype, &category, &base, &elem)
	if err == pgx.ErrNoRows {
		// The type was dropped since the change was written: its text form is all we have.
		return pgtype.TextOID, nil
	}
	if err != nil {
		return 0, fmt.Errorf("look up type %d in pg_type: %w", oid, err)
	}
	switch {
	case typtype == "d":
		return tr.decodeOID(ctx, q, base, depth+1)
	case category == "A" && elem != 0:
		e, err := tr.decodeOID(ctx, q, elem, depth+1)
		if err != nil {
			return 0, err
		}
		if a, ok := event.ArrayOID(e); ok {
			return a, nil
		}
		return pgtype.TextArrayOID, nil
	}
	return pgtype.TextOID, nil
}

// resolveRelation builds the event columns of a Relation message.
func (tr *typeResolver) resolveRelation(ctx context.Context, q querier, m relationMsg) (*relation, error) {
	cols := make([]event.Column, len(m.Columns))
	for i, c := range m.Columns {
		ti, err := tr.resolve(ctx, q, c.OID, c.TypMod)
		if err != nil {
			return nil, fmt.Errorf("pgwal: resolve column %q of %s.%s: %w", c.Name, m.Namespace, m.Name, err)
		}
		cols[i] = event.Column{Name: c.Name, Type: ti.name, OID: ti.oid, Key: c.Key}
	}
	return &relation{msg: m, columns: cols}, nil
}

// eventColumn is a column whose type was not resolved: decoded as its own OID.
func eventColumn(c relationColumn) event.Column {
	return event.Column{Name: c.Name, Type: "oid:" + strconv.FormatUint(uint64(c.OID), 10), OID: c.OID, Key: c.Key}
}
