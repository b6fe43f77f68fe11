package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/walflow/walflow/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
