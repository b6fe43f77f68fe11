// Package poshash hashes sequences of ledger positions, so that two processes can check
// they saw the same events in the same order by comparing one number: the fan-out
// benchmark's clients and its gateway's in-process subscriber.
package poshash

import (
	"encoding/binary"

	"github.com/walflow/walflow/event"
)

// Offset is the hash of the empty sequence.
const Offset uint64 = 14695981039346656037

const prime = 1099511628211

// Add adds a position to a 64-bit FNV-1a hash (hash/fnv's New64a, without its allocation).
func Add(h uint64, p event.Position) uint64 {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(p))
	for _, c := range b {
		h ^= uint64(c)
		h *= prime
	}
	return h
}
