// Package memory is a [processstatus.Store] in the process's memory.
package memory

import (
	"context"
	"maps"
	"sync"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/processstatus"
)

// Store is a [processstatus.Store] that keeps the status in memory. It survives a tracker restart
// within one process (tests, or a tracker restarted with the same store), not a process
// restart. Create it with [New]; it is safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	entities map[string]int64
	pos      event.Position
}

var _ processstatus.Store = (*Store)(nil)

// New returns an empty memory store.
func New() *Store { return &Store{entities: map[string]int64{}} }

// Save records entity's processed timestamp.
func (s *Store) Save(ctx context.Context, entity string, micros int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entities[entity] = micros
	return nil
}

// SavePosition records the processed position.
func (s *Store) SavePosition(ctx context.Context, pos event.Position) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pos = pos
	return nil
}

// Load returns a copy of what was saved.
func (s *Store) Load(ctx context.Context) (processstatus.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return processstatus.Snapshot{Entities: maps.Clone(s.entities), Position: s.pos}, nil
}

// Reset forgets everything.
func (s *Store) Reset(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.entities)
	s.pos = 0
	return nil
}
