// Package memory is a [ledger.Ledger] that keeps everything in memory: for tests and
// throwaway runs. It has the same semantics as ledger/disk — positions from 1 without
// gaps, transactions visible only after Sync, aborted transactions dropped, Truncate freeing
// the events it removes — but nothing survives Close.
//
// Events are stored in their binary form ([event.AppendBinary]), so the ledger never keeps
// a reference to an event it was given, and every read decodes a fresh copy.
package memory
