package pgtest

import (
	"context"
	"errors"
	"strconv"
)

// DatabaseForExample creates a fresh database on the package cluster started by [Main] and
// returns its DSN, for Example functions, which get no testing.TB. The database lasts until
// the cluster stops.
func DatabaseForExample(ctx context.Context) (string, error) {
	sharedMu.Lock()
	c := sharedCluster
	sharedMu.Unlock()
	if c == nil {
		return "", errors.New("pgtest.DatabaseForExample: no shared PostgreSQL cluster; add `func TestMain(m *testing.M) { pgtest.Main(m, nil) }` to the test package")
	}
	name := "example_" + strconv.FormatUint(dbCounter.Add(1), 10)
	if err := c.CreateDatabase(ctx, name); err != nil {
		return "", err
	}
	return c.DSN(name), nil
}
