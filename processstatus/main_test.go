package processstatus_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind (a tracker's Run, a
// middleware wait).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
