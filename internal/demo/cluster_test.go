package demo

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/walflow/walflow/internal/syncbuf"
)

// TestRunCluster runs walflow demo --cluster with the walflow binary for a while: a node
// leads, the demo kills it, another takes over.
func TestRunCluster(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "walflow")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/walflow/walflow/cmd/walflow").CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/walflow: %v\n%s", err, out)
	}
	var stdout, stderr syncbuf.Buffer
	err := RunCluster(ctx, ClusterOptions{Stdout: &stdout, Stderr: &stderr, Getenv: noEnv, Exe: bin,
		Duration: 75 * time.Second, WriteEvery: 100 * time.Millisecond, KillEvery: 15 * time.Second})
	if err != nil {
		t.Fatalf("RunCluster: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	for _, re := range []string{
		`node-\d leads \(pid \d+\)\n`,
		`kill -9 \d+: node-\d, the leader, is killed`,
		`node-\d leads \(pid \d+\): took over [\d.]+s after node-\d was killed`,
		`node-\d started again`,
		`node-1 (LEADER|standby) @\d+ \| node-2 (LEADER|standby) @\d+ \| node-3 (LEADER|standby) @\d+`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout.String()) {
			t.Errorf("no %s in the output:\n%s\nstderr:\n%s", re, stdout.String(), stderr.String())
		}
	}
}
