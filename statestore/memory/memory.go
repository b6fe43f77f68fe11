// Package memory is a [statestore.Storage] in the process's memory: for tests, examples,
// and runs that start from scratch after every restart.
package memory

import (
	"context"
	"fmt"
	"sync"

	"github.com/walflow/walflow/statestore"
)

// Store keeps savepoints in memory. Create it with [New]; the zero value is not usable.
// It is safe for concurrent use.
type Store struct {
	mu   sync.RWMutex
	runs map[string]*memoryRun
}

// memoryRun holds one run's savepoints, oldest first. The savepoints are copies nobody
// else references, and are never changed once added, so a reader may hand out copies of
// them after releasing the lock.
type memoryRun struct {
	savepoints []statestore.Savepoint
}

var (
	_ statestore.Storage = (*Store)(nil)
	_ statestore.Lister  = (*Store)(nil)
)

// New returns an empty memory storage.
func New() *Store {
	return &Store{runs: map[string]*memoryRun{}}
}

// check validates runID and ctx, the first step of every method.
func check(ctx context.Context, op, runID string) error {
	if err := statestore.ValidateRunID(runID); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("statestore/memory: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// InitRun initializes the run; see [statestore.Storage.InitRun].
func (m *Store) InitRun(ctx context.Context, runID string) error {
	if err := check(ctx, "init", runID); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.runs[runID]; !ok {
		m.runs[runID] = &memoryRun{}
	}
	return nil
}

// IsInitialized reports whether the run is initialized; see [statestore.Storage.IsInitialized].
func (m *Store) IsInitialized(ctx context.Context, runID string) (bool, error) {
	if err := check(ctx, "check", runID); err != nil {
		return false, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, ok := m.runs[runID]
	return ok, nil
}

// SaveSavepoint saves a copy of sp; see [statestore.Storage.SaveSavepoint].
func (m *Store) SaveSavepoint(ctx context.Context, runID string, sp statestore.Savepoint) error {
	const op = "save a savepoint"
	if err := check(ctx, op, runID); err != nil {
		return err
	}
	if err := sp.Validate(); err != nil {
		return err
	}
	c := cloneSavepoint(sp) // outside the lock: a large state takes a while to copy
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.runs[runID]
	if !ok {
		return fmt.Errorf("statestore/memory: %s of run %q: %w", op, runID, statestore.ErrNotInitialized)
	}
	if n := len(r.savepoints); n > 0 && sp.Timestamp < r.savepoints[n-1].Timestamp {
		latest := r.savepoints[n-1].Timestamp
		return fmt.Errorf("statestore/memory: %s of run %q at %d: the latest savepoint is at %d; use a timestamp of %d or later: %w",
			op, runID, sp.Timestamp, latest, latest, statestore.ErrOutOfOrder)
	}
	r.savepoints = append(r.savepoints, c)
	return nil
}

// latest returns the run's latest savepoint, shared: the caller must not change it.
func (m *Store) latest(ctx context.Context, op, runID string) (statestore.Savepoint, error) {
	if err := check(ctx, op, runID); err != nil {
		return statestore.Savepoint{}, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.runs[runID]
	if !ok {
		return statestore.Savepoint{}, fmt.Errorf("statestore/memory: %s of run %q: %w", op, runID, statestore.ErrNotInitialized)
	}
	if len(r.savepoints) == 0 {
		return statestore.Savepoint{}, fmt.Errorf("statestore/memory: %s of run %q: %w", op, runID, statestore.ErrNoSavepoint)
	}
	return r.savepoints[len(r.savepoints)-1], nil
}

// LatestSavepoint returns a copy of the latest savepoint; see [statestore.Storage.LatestSavepoint].
func (m *Store) LatestSavepoint(ctx context.Context, runID string) (statestore.Savepoint, error) {
	sp, err := m.latest(ctx, "read the latest savepoint", runID)
	if err != nil {
		return statestore.Savepoint{}, err
	}
	return cloneSavepoint(sp), nil
}

// LatestTimestamp returns the latest savepoint's timestamp; see [statestore.Storage.LatestTimestamp].
func (m *Store) LatestTimestamp(ctx context.Context, runID string) (int64, error) {
	sp, err := m.latest(ctx, "read the latest savepoint timestamp", runID)
	if err != nil {
		return 0, err
	}
	return sp.Timestamp, nil
}

// ListSavepoints lists the run's savepoints, oldest first; see [statestore.Lister].
func (m *Store) ListSavepoints(ctx context.Context, runID string) ([]statestore.SavepointInfo, error) {
	const op = "list savepoints"
	if err := check(ctx, op, runID); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.runs[runID]
	if !ok {
		return nil, fmt.Errorf("statestore/memory: %s of run %q: %w", op, runID, statestore.ErrNotInitialized)
	}
	infos := make([]statestore.SavepointInfo, len(r.savepoints))
	for i, sp := range r.savepoints {
		infos[i] = statestore.SavepointInfo{Timestamp: sp.Timestamp, Position: sp.Position, Entities: len(sp.Entities)}
	}
	return infos, nil
}

// DeleteOldSavepoints keeps the keep most recent savepoints; see
// [statestore.Storage.DeleteOldSavepoints].
func (m *Store) DeleteOldSavepoints(ctx context.Context, runID string, keep int) error {
	const op = "delete old savepoints"
	if err := check(ctx, op, runID); err != nil {
		return err
	}
	if keep < 0 {
		return fmt.Errorf("statestore/memory: %s of run %q: keep is %d; use 0 to delete every savepoint, or more to keep that many", op, runID, keep)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.runs[runID]
	if !ok {
		return fmt.Errorf("statestore/memory: %s of run %q: %w", op, runID, statestore.ErrNotInitialized)
	}
	if n := len(r.savepoints); n > keep {
		// A new slice, so that the deleted savepoints are freed.
		r.savepoints = append([]statestore.Savepoint(nil), r.savepoints[n-keep:]...)
	}
	return nil
}

// DeleteRun deletes the run; see [statestore.Storage.DeleteRun].
func (m *Store) DeleteRun(ctx context.Context, runID string) error {
	if err := check(ctx, "delete", runID); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.runs, runID)
	return nil
}

// cloneSavepoint returns a deep copy of sp, with every entity state in one allocation.
func cloneSavepoint(sp statestore.Savepoint) statestore.Savepoint {
	c := statestore.Savepoint{Timestamp: sp.Timestamp, Position: sp.Position}
	if len(sp.Entities) == 0 {
		return c
	}
	size := 0
	for _, e := range sp.Entities {
		size += len(e.State)
	}
	buf := make([]byte, 0, size)
	c.Entities = make([]statestore.Entity, len(sp.Entities))
	for i, e := range sp.Entities {
		start := len(buf)
		buf = append(buf, e.State...)
		c.Entities[i] = statestore.Entity{ID: e.ID, State: buf[start:len(buf):len(buf)]}
	}
	return c
}
