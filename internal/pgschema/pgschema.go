// Package pgschema holds what walflow's PostgreSQL stores share to create their tables:
// the check of a configured schema name, and a migration that concurrent stores run in
// turn.
package pgschema

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ValidIdent reports whether s is a lower-case PostgreSQL identifier that needs no
// quoting: letters, digits and _, not starting with a digit, at most 63 bytes.
func ValidIdent(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c == '_':
		case i > 0 && c >= '0' && c <= '9':
		default:
			return false
		}
	}
	return true
}

// CheckSchema returns nil when schema is a plain schema name ([ValidIdent]), and otherwise
// an error that names the setting (field, such as "statestore/pg: Config.Schema"), the
// value and the rule.
func CheckSchema(field, schema string) error {
	if ValidIdent(schema) {
		return nil
	}
	return fmt.Errorf("%s %q is not a plain schema name; use lower-case letters, digits and _, not starting with a digit, at most 63 bytes", field, schema)
}

// Beginner starts transactions: a *pgxpool.Pool or a *pgx.Conn.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// LockKey keys the advisory lock (pg_advisory_xact_lock(hashtext(LockKey))) every walflow
// migration takes. It is one key for all of
// them, not one per table: stores creating different tables in the same schema collide on
// CREATE SCHEMA IF NOT EXISTS (a unique violation in pg_namespace), so they must take
// turns too.
const LockKey = "walflow: create tables"

// Create runs ddl (CREATE ... IF NOT EXISTS statements) in one transaction that first takes
// walflow's migration advisory lock. Concurrent CREATE ... IF NOT EXISTS can still collide
// in the catalogs; with the lock, stores starting together take turns. A creator that does
// not take the lock (the user's own migration), or a session whose catalog cache has not
// yet seen another's commit, can still make an IF NOT EXISTS fail with a unique violation
// or "already exists"; the DDL then runs again, at most collisionRetries times, in a new
// transaction, which sees what the other committed.
func Create(ctx context.Context, db Beginner, ddl string) error {
	for attempt := 0; ; attempt++ {
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext($1))", LockKey); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, ddl)
			return err
		})
		if err == nil || attempt == collisionRetries || !collision(err) {
			return err
		}
	}
}

// collisionRetries bounds Create's retries: each retry follows a concurrent creation that
// has committed, so more than a few mean something else keeps creating and dropping.
const collisionRetries = 3

// collision reports whether err is a catalog collision with a concurrent creator.
func collision(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case pgerrcode.UniqueViolation, pgerrcode.DuplicateSchema, pgerrcode.DuplicateTable, pgerrcode.DuplicateObject:
		return true
	}
	return false
}

// PrivilegeHint is what to add to a failed Create's error: how to fix it when the role
// lacked a privilege, and nothing for any other failure (a connection cut needs no
// grant).
func PrivilegeHint(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.InsufficientPrivilege {
		return " (the role needs CREATE on the database, or create the schema yourself)"
	}
	return ""
}
