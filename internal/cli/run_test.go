package cli

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/ssetest"
)

// testSecret is an HS256 secret for tests (32 bytes).
const testSecret = "0123456789abcdef0123456789abcdef"

// hs256Token signs claims with secret.
func hs256Token(t *testing.T, secret string, claims map[string]any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(claims)).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRunReadsKeys checks that run reads the realtime keys (status and the operator
// commands do not): a missing key file is a usage error of run.
func TestRunReadsKeys(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "walflow.yaml")
	if err := os.WriteFile(path, []byte("database_url: postgres://app@localhost/app\nrealtime:\n  jwt: {hs256_secret_file: /nonexistent/secret}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t.Context(), noEnv, "run", "--config", path)
	if r.code != ExitUsage || !strings.Contains(r.stderr, "realtime.jwt.hs256_secret_file: read /nonexistent/secret: no such file or directory") {
		t.Errorf("run with a missing secret file: exit %d\n%s", r.code, r.stderr)
	}
}

func TestRunRealtime(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	path, dir, addr := blogRunConfig(t, dsn, pc.Database, "info", `realtime:
  jwt:
    hs256_secret_file: jwt_secret
`)
	if err := os.WriteFile(filepath.Join(dir, "jwt_secret"), []byte(testSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runDone := make(chan result, 1)
	go func() { runDone <- runCLI(runCtx, noEnv, "run", "--config", path) }()

	base := "http://" + addr
	waitFor(t, "/healthz answers 200", runDone, func() bool {
		code, _, err := httpGet(ctx, base+"/healthz")
		return err == nil && code == http.StatusOK
	})
	stream := base + "/realtime/?channel=posts/42/comments"
	if code, body, err := httpGet(ctx, stream); err != nil || code != http.StatusUnauthorized || !strings.Contains(body, "missing token") {
		t.Errorf("no token: %d %q %v, want 401 missing token", code, body, err)
	}
	claims := map[string]any{"channels": []string{"posts/*/comments"}, "exp": time.Now().Add(time.Hour).Unix()}
	if code, body, err := httpGet(ctx, stream+"&access_token="+hs256Token(t, "another-secret-another-secret-xx", claims)); err != nil || code != http.StatusUnauthorized {
		t.Errorf("token signed with another secret: %d %q %v, want 401", code, body, err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, stream, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+hs256Token(t, testSecret, claims))
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token: status %d", resp.StatusCode)
	}
	events := ssetest.Lines(t, resp.Body)
	readUntil := events.Until
	readUntil("event: subscribed")
	if _, err := conn.Exec(ctx, `INSERT INTO posts (id, title) VALUES (42, 'a'); INSERT INTO comments (post_id, body) VALUES (42, 'x')`); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(`"channel":"posts/42/comments"`); !strings.Contains(got, "event: insert") || !strings.Contains(got, `"body":"x"`) {
		t.Errorf("stream:\n%s", got)
	}
	waitFor(t, "/metrics shows the stream", runDone, func() bool {
		code, metrics, err := httpGet(ctx, base+"/metrics")
		return err == nil && code == http.StatusOK && strings.Contains(metrics, "walflow_realtime_connections 1") &&
			strings.Contains(metrics, `walflow_realtime_rejected_total{status="401"} 2`)
	})

	stop()
	if got := readUntil("event: error"); !strings.Contains(got, "event: error") {
		t.Errorf("stream end:\n%s", got)
	}
	r := <-runDone
	events.Drain()
	if r.code != ExitOK {
		t.Fatalf("run exited %d after Ctrl-C\nstderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "realtime_path=/realtime/") || !strings.Contains(r.stderr, `realtime_auth="hs256 from `+filepath.Join(dir, "jwt_secret")) {
		t.Errorf("run did not log the realtime settings:\n%s", r.stderr)
	}
	if strings.Contains(r.stderr, testSecret) || strings.Contains(r.stderr, "level=ERROR") {
		t.Errorf("run logged the secret or errors:\n%s", r.stderr)
	}
}
