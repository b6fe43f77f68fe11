package jetstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/walflow/walflow/event"
)

// SetFlushEvents sets how many messages the follower applies between two writes of a
// channel index directory; call it before opening ledgers.
func SetFlushEvents(n int) { flushEvents = n }

// Applied returns how many stream messages l's follower applied since Open.
func Applied(l *Ledger) int64 {
	l.idx.mu.RLock()
	defer l.idx.mu.RUnlock()
	return l.idx.applied
}

// StoredBelow returns how many channel index entries l's directory holds at or before
// position p.
func StoredBelow(l *Ledger, p event.Position) int {
	s := l.idx.store
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{storeKeyEntry}, UpperBound: []byte{storeKeyEntry + 1}})
	if err != nil {
		panic(err)
	}
	defer it.Close()
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if i := bytes.IndexByte(k, 0); i >= 0 && event.Position(binary.BigEndian.Uint64(k[i+1:])) <= p {
			n++
		}
	}
	return n
}

// CrashAfter makes l's CommitTx publish only the first n events of a transaction (all
// acknowledged), then fail, as a writer that dies midway would; 0 turns it off.
func CrashAfter(l *Ledger, n int) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.crashAfter = n
}

// SetFetchWait sets how long a read's first fetch waits for a message, and returns a
// function that restores it. Tests that call it must not run in parallel.
func SetFetchWait(d time.Duration) (restore func()) {
	old := fetchWait
	fetchWait = d
	return func() { fetchWait = old }
}

// RewriteCheckpointID replaces the message id of the checkpoint of the channel index in
// dir, which no ledger has open, as if the stream had held another message there, and
// returns the id it replaced.
func RewriteCheckpointID(dir, id string) (old string, err error) {
	s, err := openStore(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		return "", err
	}
	m, ok, err := s.meta()
	if err == nil && !ok {
		err = errors.New("no checkpoint")
	}
	if err == nil {
		old, m.LastID = m.LastID, id
		err = s.commit(m, true)
	}
	return old, errors.Join(err, s.close())
}
