package jetstream

// CrashAfter makes l's CommitTx publish only the first n events of a transaction (all
// acknowledged), then fail, as a writer that dies midway would; 0 turns it off.
func CrashAfter(l *Ledger, n int) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.crashAfter = n
}
