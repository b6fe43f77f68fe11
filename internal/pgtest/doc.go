// Package pgtest runs throwaway PostgreSQL clusters for tests, benchmarks and
// the `walflow demo` command.
//
// A cluster is created with [Start]: it locates the PostgreSQL server
// binaries, runs initdb into a fresh temporary directory, configures the
// server for logical replication (wal_level=logical, plenty of WAL senders and
// replication slots) and for speed (fsync, full_page_writes and
// synchronous_commit off), and starts it on a free TCP port on 127.0.0.1 with
// trust authentication for the superuser "postgres". [Cluster.Stop] shuts the
// server down and deletes the directory.
//
// # Locating the binaries
//
// The directory holding initdb, pg_ctl and postgres is looked up in this order:
//
//  1. the WALFLOW_PG_BINDIR environment variable (which must then be valid);
//  2. PATH (symbolic links are followed, so /usr/local/bin links into
//     /usr/lib/postgresql/15/bin work);
//  3. the output of `pg_config --bindir`;
//  4. /usr/lib/postgresql/*/bin, highest version first.
//
// If nothing is found, Start returns an error wrapping [ErrBinariesNotFound]
// that gives the exact command installing the server on Debian and Ubuntu
// ([InstallCommand]) and says how to set WALFLOW_PG_BINDIR instead.
//
// # Running as root
//
// PostgreSQL refuses to run as root. When the current process is root, every
// server program (initdb, pg_ctl, postgres) is run as the "postgres" system
// user and the temporary directory is handed over to that user.
//
// # Durability
//
// Because synchronous_commit is off, a transaction committed less than a
// fraction of a second before [Cluster.Restart] or [Cluster.StopServer] with
// mode "immediate" may be lost, exactly as after a real crash. Such
// transactions have not been streamed to logical replication clients either,
// since WAL senders only send flushed WAL. Tests that need a commit to
// survive a crash should run `SET synchronous_commit = on` first.
//
// # Tests
//
// A test package normally shares one cluster between all its tests:
//
//	func TestMain(m *testing.M) { pgtest.Main(m, nil) }
//
//	func TestSomething(t *testing.T) {
//		dsn := pgtest.NewDatabase(t) // fresh database, dropped if the test passes
//		...
//	}
//
// [Main] also checks that no goroutines leak. [Shared] gives access to the
// cluster itself, for instance to restart it in the middle of a test.
//
// If a test binary dies without stopping its cluster (a panic, a timeout, a
// signal), the next [Start] in the same temporary directory notices that the
// owning process is gone, stops the orphaned server and removes its files.
//
// PostgreSQL 13 or newer is required.
package pgtest
