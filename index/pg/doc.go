// Package pg is an [index.Store] that keeps indexes in PostgreSQL, so that every node of a
// walflow cluster reads the same indexes while one node at a time writes each indexer.
//
// # Tables
//
// Two tables and a sequence of a schema (walflow by default) hold the indexes; [Open]
// creates them when missing:
//
//	walflow.index_state      (indexer text PRIMARY KEY, stored boolean, checkpoint bigint, since bigint,
//	                          version text, generation bigint, updated_at timestamptz)
//	walflow.index_entries    (indexer text, value bytea, position bigint,
//	                          PRIMARY KEY (indexer, value, position))
//	                         index_entries_position ON (indexer, position, value)
//	walflow.index_generation (a sequence)
//
// index_state has one row per indexer: its [index.State] when stored is true, and its
// generation, a number taken from index_generation by every write and reset. A reset
// indexer keeps its row with stored false, so that its generation lives on. index_entries
// has one row per entry; a value is kept as its bytes, so any string without a NUL byte
// is stored as it is (UTF-8 or not) and values sort bytewise. The primary key answers
// [Store.Positions] and [Store.Entries], the second index [Store.EntriesSince].
//
// A role that may not create tables can use tables created beforehand by one that may
// ([Open] once with it is enough): the store creates nothing when all three
// exist, and needs SELECT, INSERT, UPDATE and DELETE on the tables and USAGE on the
// sequence.
//
// # Durability
//
// Each [Store.Write] is one PostgreSQL transaction: the entries of its batches and their
// states commit together, with PostgreSQL's durability, or not at all. A Write of one
// batch is one statement, so one round trip; entries are sent as arrays and an entry
// already stored is kept once.
//
// # Fence
//
// Several nodes share the store, and one at a time (the holder of the indexer's lock)
// writes each indexer; but a deposed holder may still be writing when another node has
// taken over. A Store therefore writes an indexer only from the generation it last saw
// for it: the one it read ([Store.State]) or wrote ([Store.Write], [Store.Reset]). Each
// write and reset is conditional on the stored generation still being that one, and takes
// a new one; when another Store has written the indexer in between, it fails with
// [ErrFenced] and changes nothing, and so does every later write until State is read
// again. An indexer this Store has not seen yet is written unconditionally. A Write whose
// outcome is unknown (the connection broke during commit) leaves the Store on the older
// generation: if it committed after all, the next write is fenced, and the runner starts
// over from the stored state. [Store.CheckFence] tells, without writing, whether the next
// write would be fenced: a live [index.Runner] checks it while no event comes, so that a
// reset by another process (walflow index rebuild) stops it even then.
//
// # Safe to delete
//
// Deleting an indexer's rows, or every row of both tables, is safe: the runner finds no
// state and rebuilds the indexer from the ledger. A Store that was writing it meanwhile is
// fenced, since the generation it saw is gone, and reads the state again.
package pg
