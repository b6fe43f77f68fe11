// Package keymerge merges the position lists of a ledger's index keys, for the backends
// that keep those lists in memory.
package keymerge

import (
	"sort"

	"github.com/walflow/walflow/event"
)

// Positions returns up to limit positions in (after, head] found in any of lists, ascending
// and each once. Every list must be ascending. It does not change the lists.
func Positions(lists [][]event.Position, after, head event.Position, limit int) []event.Position {
	cur := make([][]event.Position, 0, len(lists))
	for _, ps := range lists {
		i := sort.Search(len(ps), func(i int) bool { return ps[i] > after })
		if i < len(ps) && ps[i] <= head {
			cur = append(cur, ps[i:])
		}
	}
	var out []event.Position
	for len(out) < limit && len(cur) > 0 {
		next := cur[0][0]
		for _, ps := range cur[1:] {
			next = min(next, ps[0])
		}
		if next > head {
			break
		}
		out = append(out, next)
		kept := cur[:0]
		for _, ps := range cur {
			if ps[0] == next {
				ps = ps[1:]
			}
			if len(ps) > 0 {
				kept = append(kept, ps)
			}
		}
		cur = kept
	}
	return out
}
