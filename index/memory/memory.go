// Package memory is an in-memory [index.Store], for tests and throwaway runs: its indexes
// are rebuilt from the ledger at every start.
package memory

import (
	"cmp"
	"context"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/walflow/walflow/event"
	"github.com/walflow/walflow/index"
)

// Store is an in-memory [index.Store]. The zero value is not usable; create it with [New].
type Store struct {
	mu      sync.RWMutex
	indexes map[string]*data
}

type data struct {
	state  index.State
	values map[string][]event.Position // value → ascending positions
}

var _ index.SharedStore = (*Store)(nil)

// New returns an empty store.
func New() *Store { return &Store{indexes: map[string]*data{}} }

// State returns the indexer's state.
func (s *Store) State(ctx context.Context, indexer string) (index.State, bool, error) {
	if err := ctx.Err(); err != nil {
		return index.State{}, false, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	d, ok := s.indexes[indexer]
	if !ok {
		return index.State{}, false, nil
	}
	return d.state, true, nil
}

// Write applies the batches atomically.
func (s *Store) Write(ctx context.Context, batches ...index.Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range batches {
		d, ok := s.indexes[b.Indexer]
		if !ok {
			d = &data{values: map[string][]event.Position{}}
			s.indexes[b.Indexer] = d
		}
		for _, e := range b.Entries {
			ps := d.values[e.Value]
			if n := len(ps); n == 0 || ps[n-1] < e.Position {
				d.values[e.Value] = append(ps, e.Position)
				continue
			}
			if i, found := slices.BinarySearch(ps, e.Position); !found {
				d.values[e.Value] = slices.Insert(ps, i, e.Position)
			}
		}
		d.state = b.State
	}
	return nil
}

// Positions returns up to limit positions after after under the indexer's value.
func (s *Store) Positions(ctx context.Context, indexer, value string, after event.Position, limit int) ([]event.Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	d, ok := s.indexes[indexer]
	if !ok || limit <= 0 {
		return nil, nil
	}
	ps := d.values[value]
	i := sort.Search(len(ps), func(i int) bool { return ps[i] > after })
	ps = ps[i:]
	if len(ps) > limit {
		ps = ps[:limit]
	}
	return slices.Clone(ps), nil
}

// Entries calls fn with every entry of the indexer, by value then position. fn runs
// without the store's lock held, on a copy taken when Entries was called.
func (s *Store) Entries(ctx context.Context, indexer string, fn func(index.Entry) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var out []index.Entry
	s.mu.RLock()
	if d, ok := s.indexes[indexer]; ok {
		values := make([]string, 0, len(d.values))
		for v := range d.values {
			values = append(values, v)
		}
		slices.Sort(values)
		for _, v := range values {
			for _, p := range d.values[v] {
				out = append(out, index.Entry{Value: v, Position: p})
			}
		}
	}
	s.mu.RUnlock()
	for _, e := range out {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// EntriesSince calls fn with every entry of the indexer whose position is in (after,
// through], by position then value. fn runs without the store's lock held, on a copy taken
// when EntriesSince was called.
func (s *Store) EntriesSince(ctx context.Context, indexer string, after, through event.Position, fn func(index.Entry) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var out []index.Entry
	s.mu.RLock()
	if d, ok := s.indexes[indexer]; ok && through > after {
		for v, ps := range d.values {
			i := sort.Search(len(ps), func(i int) bool { return ps[i] > after })
			for _, p := range ps[i:] {
				if p > through {
					break
				}
				out = append(out, index.Entry{Value: v, Position: p})
			}
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b index.Entry) int {
		if c := cmp.Compare(a.Position, b.Position); c != 0 {
			return c
		}
		return strings.Compare(a.Value, b.Value)
	})
	for _, e := range out {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// Reset deletes the indexer's entries and state.
func (s *Store) Reset(ctx context.Context, indexer string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.indexes, indexer)
	s.mu.Unlock()
	return nil
}
