// Package clustershare holds what the nodes of a walflow cluster and the walflow commands
// that work on a cluster's data agree on: the names and the SQL of the PostgreSQL session
// locks that make one node at a time run the operators or compute the custom indexes, and
// the share of the shared index store that holds one instance's indexes.
package clustershare

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
)

// OperatorsLock is the name of the session lock of the operators of the instance of slot.
func OperatorsLock(slot string) string { return "walflow.operators/" + slot }

// IndexesLock is the name of the session lock of the custom indexes of the instance of
// slot: its holder computes them into the shared store.
func IndexesLock(slot string) string { return "walflow.indexes/" + slot }

// IndexPrefix is what the names of the instance of slot's indexes are prefixed with in the
// shared index store (index/pg), which the instances of several slots may share.
func IndexPrefix(slot string) string { return slot + "/" }

// LockIdleTimeout is the idle_session_timeout (PostgreSQL 14 and newer) of a connection
// that holds a lock: its holder pings it every second, so when the network between them
// is cut PostgreSQL ends the session, freeing the lock, after this long rather than when
// TCP notices (hours, by default).
const LockIdleTimeout = 10 * time.Second

// LockPingEvery is how often KeepLock pings a lock's connection: well within
// LockIdleTimeout, so a live holder's session is never idle long enough to end.
const LockPingEvery = time.Second

// idleTimeout is the idle_session_timeout TryLock sets, LockIdleTimeout unless a test
// shortened it with SetLockIdleTimeout.
var idleTimeout atomic.Int64

func init() { idleTimeout.Store(int64(LockIdleTimeout)) }

// SetLockIdleTimeout makes TryLock set d, instead of LockIdleTimeout, as the
// idle_session_timeout of the connections it locks on, until restore is called. Tests
// use it to see that holders keep their locks past the timeout; d must exceed
// LockPingEvery.
func SetLockIdleTimeout(d time.Duration) (restore func()) {
	old := idleTimeout.Swap(int64(d))
	return func() { idleTimeout.Store(old) }
}

// lockSessionSQL sets the lock connection's idle_session_timeout where the server knows it
// (PostgreSQL 14 and newer), and does nothing on older ones.
const lockSessionSQL = `SELECT set_config(name, $1, false) FROM pg_catalog.pg_settings WHERE name = 'idle_session_timeout'`

// tryLockSQL tries a session lock named $1.
const tryLockSQL = `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`

// TryLock sets conn's idle_session_timeout to LockIdleTimeout and tries the session lock
// named key on it, without waiting: ok reports whether conn holds it now. The lock is
// held until conn closes (or pg_advisory_unlock), or, on PostgreSQL 14 and newer, until
// conn idles for LockIdleTimeout: a holder runs KeepLock on conn while it holds the lock.
func TryLock(ctx context.Context, conn *pgx.Conn, key string) (ok bool, err error) {
	if _, err := conn.Exec(ctx, lockSessionSQL, fmt.Sprintf("%dms", time.Duration(idleTimeout.Load()).Milliseconds())); err != nil {
		return false, fmt.Errorf("set idle_session_timeout on the lock's connection: %w", err)
	}
	if err := conn.QueryRow(ctx, tryLockSQL, key).Scan(&ok); err != nil {
		return false, fmt.Errorf("try the lock %s: %w", key, err)
	}
	return ok, nil
}

// KeepLock pings conn, which holds a session lock (see TryLock), every LockPingEvery so
// that its session never idles out, until ctx ends (it returns nil) or a ping fails: it
// then returns the error, and the lock may be gone, since PostgreSQL frees it when the
// session ends. Nothing else may use conn meanwhile.
func KeepLock(ctx context.Context, conn *pgx.Conn) error {
	t := time.NewTicker(LockPingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := conn.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ping the connection that holds the lock: %w", err)
		}
	}
}

// heldSQL reports whether any session holds the session lock named $1 (a bigint advisory
// lock: its key's high and low 32 bits in classid and objid, objsubid 1).
const heldSQL = `SELECT EXISTS (SELECT FROM pg_catalog.pg_locks l, (SELECT hashtextextended($1, 0) AS k) h
	WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
	AND l.classid::bigint = (h.k >> 32) & 4294967295 AND l.objid::bigint = h.k & 4294967295)`

// Held reports whether a session holds the lock named key, without trying it.
func Held(ctx context.Context, conn *pgx.Conn, key string) (bool, error) {
	var held bool
	if err := conn.QueryRow(ctx, heldSQL, key).Scan(&held); err != nil {
		return false, fmt.Errorf("look up the lock %s: %w", key, err)
	}
	return held, nil
}

// Prefixed is the share of a shared index store that holds the indexers whose names start
// with Prefix: it adds the prefix to the names it is given.
type Prefixed struct {
	Store  index.SharedStore
	Prefix string
}

var _ index.FenceChecker = Prefixed{}

// State returns the indexer's state.
func (p Prefixed) State(ctx context.Context, indexer string) (index.State, bool, error) {
	return p.Store.State(ctx, p.Prefix+indexer)
}

// Write applies the batches atomically.
func (p Prefixed) Write(ctx context.Context, batches ...index.Batch) error {
	bs := make([]index.Batch, len(batches))
	for i, b := range batches {
		b.Indexer = p.Prefix + b.Indexer
		bs[i] = b
	}
	return p.Store.Write(ctx, bs...)
}

// Positions returns up to limit positions after after under the indexer's value.
func (p Prefixed) Positions(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Position, error) {
	return p.Store.Positions(ctx, p.Prefix+indexer, value, after, limit)
}

// Entries calls fn with every entry of the indexer.
func (p Prefixed) Entries(ctx context.Context, indexer string, fn func(index.Entry) error) error {
	return p.Store.Entries(ctx, p.Prefix+indexer, fn)
}

// EntriesSince calls fn with the entries of the indexer in (after, through].
func (p Prefixed) EntriesSince(ctx context.Context, indexer string, after, through event.Position, fn func(index.Entry) error) error {
	return p.Store.EntriesSince(ctx, p.Prefix+indexer, after, through, fn)
}

// CheckFence checks the indexer's fence when Store is an index.FenceChecker, and returns
// nil otherwise.
func (p Prefixed) CheckFence(ctx context.Context, indexer string) error {
	if fc, ok := p.Store.(index.FenceChecker); ok {
		return fc.CheckFence(ctx, p.Prefix+indexer)
	}
	return nil
}

// Reset deletes the indexer's entries and state.
func (p Prefixed) Reset(ctx context.Context, indexer string) error {
	return p.Store.Reset(ctx, p.Prefix+indexer)
}
