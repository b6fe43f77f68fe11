package cli

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/walflow/walflow/internal/syncbuf"
)

// TestDemoHTTPFlagErrors: a bad --http or --port is a usage error, found before any cluster
// starts.
func TestDemoHTTPFlagErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"--port", "0"}, `walflow: demo: --port "0" is not a TCP port; give a number from 1 to 65535`},
		{[]string{"--port", "70000"}, `walflow: demo: --port "70000" is not a TCP port`},
		{[]string{"--port", "-1"}, `walflow: demo: --port "-1" is not a TCP port`},
		{[]string{"--port", "http"}, `walflow: demo: --port "http" is not a TCP port`},
		{[]string{"--port", ""}, `walflow: demo: --port "" is not a TCP port`},
		{[]string{"--http", "8080"}, `walflow: demo: --http "8080" is not an address: address 8080: missing port in address; give HOST:PORT`},
		{[]string{"--http", "127.0.0.1:99999"}, `walflow: demo: --http "127.0.0.1:99999" has no valid port "99999"`},
		{[]string{"--http", "127.0.0.1:web"}, `walflow: demo: --http "127.0.0.1:web" has no valid port "web"`},
		{[]string{"--http", "127.0.0.1:8080", "--port", "8081"}, "walflow: demo: --http and --port both give the web page's address; give one"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t.Context(), noEnv, append([]string{"demo", "--duration", "1s"}, tt.args...)...)
			if r.code != ExitUsage || !strings.Contains(r.stderr, tt.stderr) || r.stdout != "" {
				t.Errorf("demo %s: exit %d, want %d and %q\nstdout:\n%s\nstderr:\n%s", tt.args, r.code, ExitUsage, tt.stderr, r.stdout, r.stderr)
			}
		})
	}
}

// TestDemoPortInUse: a port another program listens on fails the demo at once, naming it.
func TestDemoPortInUse(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	for _, args := range [][]string{{"--port", port}, {"--http", addr}} {
		r := runCLI(t.Context(), noEnv, append([]string{"demo", "--duration", "1s"}, args...)...)
		want := "walflow: demo: " + addr + " is in use by another program; give another with --port N or --http HOST:PORT"
		if r.code != ExitFailure || !strings.Contains(r.stderr, want) || r.stdout != "" {
			t.Errorf("demo %s on a busy port: exit %d, want %d and %q\nstdout:\n%s\nstderr:\n%s", args, r.code, ExitFailure, want, r.stdout, r.stderr)
		}
	}
}

// TestDemoListensWhereTold: with --port or --http the demo serves its web page and HTTP
// endpoints on that address.
func TestDemoListensWhereTold(t *testing.T) {
	t.Parallel()
	for _, flagName := range []string{"--port", "--http"} {
		t.Run(flagName, func(t *testing.T) {
			t.Parallel()
			addr, err := freeAddr()
			if err != nil {
				t.Fatal(err)
			}
			value := addr
			if flagName == "--port" {
				_, value, _ = net.SplitHostPort(addr)
			}
			ctx, stop := context.WithCancel(t.Context())
			defer stop()
			// The output is read while the demo runs: it prints its banner once the engine
			// streams, which may be after the page first answers.
			var stdout, stderr syncbuf.Buffer
			done := make(chan result, 1)
			go func() {
				code := run(ctx, &env{stdout: &stdout, stderr: &stderr, getenv: noEnv}, []string{"demo", "--write-every", "0", flagName, value})
				done <- result{code: code, stdout: stdout.String(), stderr: stderr.String()}
			}()

			// The page and the endpoints answer on addr once the demo has started.
			client := &http.Client{Timeout: 5 * time.Second}
			deadline := time.Now().Add(2 * time.Minute)
			var got []string
			for _, path := range []string{"/", "/healthz"} {
				for {
					resp, err := client.Get("http://" + addr + path)
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == http.StatusOK {
							got = append(got, path)
							break
						}
					}
					select {
					case r := <-done:
						t.Fatalf("demo %s %s ended before serving %s: exit %d\nstdout:\n%s\nstderr:\n%s", flagName, value, path, r.code, r.stdout, r.stderr)
					case <-time.After(100 * time.Millisecond):
					}
					if time.Now().After(deadline) {
						t.Fatalf("demo %s %s: GET %s did not answer 200 within 2 minutes (last error %v)", flagName, value, path, err)
					}
				}
			}
			banner := "open        http://" + addr + "/ "
			for !strings.Contains(stdout.String(), banner) && time.Now().Before(deadline) {
				select {
				case r := <-done:
					t.Fatalf("demo %s %s ended before its banner: exit %d\nstdout:\n%s\nstderr:\n%s", flagName, value, r.code, r.stdout, r.stderr)
				case <-time.After(100 * time.Millisecond):
				}
			}
			stop()
			r := <-done
			if r.code != ExitOK || !strings.Contains(r.stdout, banner) {
				t.Errorf("demo %s %s served %v, then exit %d; want 0 and the address in the banner\nstdout:\n%s\nstderr:\n%s", flagName, value, got, r.code, r.stdout, r.stderr)
			}
		})
	}
}
