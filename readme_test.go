package walflow_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
)

// followComments is the README's example, compiled here so it cannot rot; TestReadme checks
// that README.md shows exactly this code, from the func line to the closing brace.
func followComments(ctx context.Context) error {
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: os.Getenv("DATABASE_URL"), // a role with REPLICATION; wal_level=logical
		Tables: []channel.Table{
			{Name: "posts"},
			{Name: "comments", Scopes: []channel.Scope{channel.MustParseScope("posts/{post_id}")}},
		},
	})
	if err != nil {
		return err
	}
	defer eng.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// Live events from now on; SubscribeOpts.After replays from any ledger position.
	sub, err := eng.Subscribe(ctx, nil, "posts/42/comments")
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { err := eng.Run(ctx); cancel(err); done <- err }()
	for e := range sub.Events() {
		b, _ := json.Marshal(&e)
		fmt.Printf("%s\n", b)
	}
	return <-done
}

// TestReadme checks that README.md's Go example is followComments, which this file
// compiles. It does not run it: that needs a server (see the engine tests).
func TestReadme(t *testing.T) {
	t.Parallel()
	_ = followComments
	src, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(src), "func followComments(")
	end := strings.Index(string(src[start:]), "\n}\n")
	if start < 0 || end < 0 {
		t.Fatal("readme_test.go: followComments not found")
	}
	code := string(src[start : start+end+3])
	if !strings.Contains(string(readme), "```go\n"+code+"```\n") {
		t.Errorf("README.md does not show followComments as readme_test.go has it; paste this into its go block:\n%s", code)
	}
}
