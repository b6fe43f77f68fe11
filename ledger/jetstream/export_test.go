package jetstream

import "time"

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
