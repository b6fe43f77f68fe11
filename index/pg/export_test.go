package pg

// AfterStateRead makes s call f between State's query and its bookkeeping.
func AfterStateRead(s *Store, f func()) { s.afterStateRead = f }
