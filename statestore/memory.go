package statestore

import (
	"context"
	"fmt"
	"sync"
)

// Memory is a [Storage] in the process's memory: for tests, examples, and runs that start
// from scratch after every restart. Create it with [NewMemory]; the zero value is not usable.
// It is safe for concurrent use.
type Memory struct {
	mu   sync.RWMutex
	runs map[string]*memoryRun
}

// memoryRun holds one run's savepoints, oldest first. The savepoints are copies nobody
// else references, and are never changed once added, so a reader may hand out copies of
// them after releasing the lock.
type memoryRun struct {
	savepoints []Savepoint
}

var (
	_ Storage = (*Memory)(nil)
	_ Lister  = (*Memory)(nil)
)

// NewMemory returns an empty memory storage.
func NewMemory() *Memory {
	return &Memory{runs: map[string]*memoryRun{}}
}

// check validates runID and ctx, the first step of every method.
func check(ctx context.Context, op, runID string) error {
	if err := ValidateRunID(runID); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("statestore: memory: %s of run %q: %w", op, runID, err)
	}
	return nil
}

// InitRun initializes the run; see [Storage.InitRun].
func (m *Memory) InitRun(ctx context.Context, runID string) error {
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

// IsInitialized reports whether the run is initialized; see [Storage.IsInitialized].
func (m *Memory) IsInitialized(ctx context.Context, runID string) (bool, error) {
	if err := check(ctx, "check", runID); err != nil {
		return false, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, ok := m.runs[runID]
	return ok, nil
}

// SaveSavepoint saves a copy of sp; see [Storage.SaveSavepoint].
func (m *Memory) SaveSavepoint(ctx context.Context, runID string, sp Savepoint) error {
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
		return fmt.Errorf("statestore: memory: %s of run %q: %w", op, runID, ErrNotInitialized)
	}
	if n := len(r.savepoints); n > 0 && sp.Timestamp < r.savepoints[n-1].Timestamp {
		latest := r.savepoints[n-1].Timestamp
		return fmt.Errorf("statestore: memory: %s of run %q at %d: the latest savepoint is at %d; use a timestamp of %d or later: %w",
			op, runID, sp.Timestamp, latest, latest, ErrOutOfOrder)
	}
	r.savepoints = append(r.savepoints, c)
	return nil
}

// latest returns the run's latest savepoint, shared: the caller must not change it.
func (m *Memory) latest(ctx context.Context, op, runID string) (Savepoint, error) {
	if err := check(ctx, op, runID); err != nil {
		return Savepoint{}, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.runs[runID]
	if !ok {
		return Savepoint{}, fmt.Errorf("statestore: memory: %s of run %q: %w", op, runID, ErrNotInitialized)
	}
	if len(r.savepoints) == 0 {
		return Savepoint{}, fmt.Errorf("statestore: memory: %s of run %q: %w", op, runID, ErrNoSavepoint)
	}
	return r.savepoints[len(r.savepoints)-1], nil
}

// LatestSavepoint returns a copy of the latest savepoint; see [Storage.LatestSavepoint].
func (m *Memory) LatestSavepoint(ctx context.Context, runID string) (Savepoint, error) {
	sp, err := m.latest(ctx, "read the latest savepoint", runID)
	if err != nil {
		return Savepoint{}, err
	}
	return cloneSavepoint(sp), nil
}

// LatestTimestamp returns the latest savepoint's timestamp; see [Storage.LatestTimestamp].
func (m *Memory) LatestTimestamp(ctx context.Context, runID string) (int64, error) {
	sp, err := m.latest(ctx, "read the latest savepoint timestamp", runID)
	if err != nil {
		return 0, err
	}
	return sp.Timestamp, nil
}

// ListSavepoints lists the run's savepoints, oldest first; see [Lister].
func (m *Memory) ListSavepoints(ctx context.Context, runID string) ([]SavepointInfo, error) {
	const op = "list savepoints"
	if err := check(ctx, op, runID); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	r, ok := m.runs[runID]
	if !ok {
		return nil, fmt.Errorf("statestore: memory: %s of run %q: %w", op, runID, ErrNotInitialized)
	}
	infos := make([]SavepointInfo, len(r.savepoints))
	for i, sp := range r.savepoints {
		infos[i] = SavepointInfo{Timestamp: sp.Timestamp, Position: sp.Position, Entities: len(sp.Entities)}
	}
	return infos, nil
}

// DeleteOldSavepoints keeps the keep most recent savepoints; see
// [Storage.DeleteOldSavepoints].
func (m *Memory) DeleteOldSavepoints(ctx context.Context, runID string, keep int) error {
	const op = "delete old savepoints"
	if err := check(ctx, op, runID); err != nil {
		return err
	}
	if keep < 0 {
		return fmt.Errorf("statestore: memory: %s of run %q: keep is %d; use 0 to delete every savepoint, or more to keep that many", op, runID, keep)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.runs[runID]
	if !ok {
		return fmt.Errorf("statestore: memory: %s of run %q: %w", op, runID, ErrNotInitialized)
	}
	if n := len(r.savepoints); n > keep {
		// A new slice, so that the deleted savepoints are freed.
		r.savepoints = append([]Savepoint(nil), r.savepoints[n-keep:]...)
	}
	return nil
}

// DeleteRun deletes the run; see [Storage.DeleteRun].
func (m *Memory) DeleteRun(ctx context.Context, runID string) error {
	if err := check(ctx, "delete", runID); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.runs, runID)
	return nil
}

// cloneSavepoint returns a deep copy of sp, with every entity state in one allocation.
func cloneSavepoint(sp Savepoint) Savepoint {
	c := Savepoint{Timestamp: sp.Timestamp, Position: sp.Position}
	if len(sp.Entities) == 0 {
		return c
	}
	size := 0
	for _, e := range sp.Entities {
		size += len(e.State)
	}
	buf := make([]byte, 0, size)
	c.Entities = make([]Entity, len(sp.Entities))
	for i, e := range sp.Entities {
		start := len(buf)
		buf = append(buf, e.State...)
		c.Entities[i] = Entity{ID: e.ID, State: buf[start:len(buf):len(buf)]}
	}
	return c
}
