package pebble

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/walflow/walflow/ledger"
)

// holdChildEnv names the directory the child process of TestOpenInUse holds open.
const holdChildEnv = "WALFLOW_PEBBLE_LEDGER_HOLD_CHILD"

// holdChild opens the ledger in dir, prints "open", and keeps it open until stdin ends.
func holdChild(dir string) {
	l, err := Open(context.Background(), dir, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("open")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	l.Close()
	os.Exit(0)
}

// TestOpenInUse opens a ledger directory that another process holds, then one that this
// process holds, and checks that the error names the directory and the holding process.
func TestOpenInUse(t *testing.T) {
	if dir := os.Getenv(holdChildEnv); dir != "" {
		holdChild(dir)
		return
	}
	ctx := context.Background()
	t.Run("another process", func(t *testing.T) {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestOpenInUse$")
		cmd.Env = append(os.Environ(), holdChildEnv+"="+dir)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			stdin.Close() // the child closes its ledger and exits
			if err := cmd.Wait(); err != nil {
				t.Errorf("the child: %v", err)
			}
		}()
		line, err := bufio.NewReader(out).ReadString('\n')
		if line != "open\n" {
			t.Fatalf("the child said %q (%v), not open", line, err)
		}

		_, err = Open(ctx, dir, nil)
		var iu *ledger.InUseError
		if !errors.As(err, &iu) {
			t.Fatalf("Open of a directory another process holds = %v, not an InUseError", err)
		}
		if iu.Dir != dir || iu.PID != cmd.Process.Pid || !strings.HasPrefix(iu.Command, os.Args[0]+" -test.run=") {
			t.Errorf("InUseError{Dir: %q, PID: %d, Command: %q}, want the directory %q and the child %d (%s -test.run=...)", iu.Dir, iu.PID, iu.Command, dir, cmd.Process.Pid, os.Args[0])
		}
		want := fmt.Sprintf("ledger: the directory %s is in use by process %d (%s); a ledger directory serves one walflow at a time: stop that process first, or give this one another directory", dir, cmd.Process.Pid, iu.Command)
		if err.Error() != want {
			t.Errorf("Open of a directory another process holds:\n got %s\nwant %s", err, want)
		}
	})
	t.Run("this process", func(t *testing.T) {
		dir := t.TempDir()
		l := mustOpen(t, dir, nil)
		defer l.Close()
		_, err := Open(ctx, dir, nil)
		var iu *ledger.InUseError
		if !errors.As(err, &iu) || iu.Dir != dir || iu.PID != os.Getpid() || iu.Command == "" {
			t.Fatalf("Open of a directory this process holds = %v (%#v), want an InUseError naming %s and pid %d", err, iu, dir, os.Getpid())
		}
	})
	t.Run("not a lock failure", func(t *testing.T) {
		file := t.TempDir() + "/file"
		if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(ctx, file, nil)
		var iu *ledger.InUseError
		if err == nil || errors.As(err, &iu) {
			t.Fatalf("Open of a file = %v, want an error that is not an InUseError", err)
		}
	})
}
