package walflow_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/operator"
	"github.com/walflow/walflow/realtime"
)

// TestClusterOperatorsSurviveTerminatedConnections: PostgreSQL ends every client connection
// of the database, again and again for four seconds (as a restart or a pooler's cut would):
// the lock holder loses its lock and its operators' connections, mid-start included. The
// node keeps running, takes the lock again, and the derived table ends equal to its
// recomputation. A start failure of the operators used to end the node.
func TestClusterOperatorsSurviveTerminatedConnections(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema+countsSchema)
	cfg := oneNodeConfig(t, dsn, startNATS(t, 1))
	cfg.Operators = []operator.Operator{countsOperator}
	eng, err := walflow.Open(ctx, cfg)
	node := runClusterNode(t, "node-1", eng, err)
	alive := func(what string, cond func() bool) {
		t.Helper()
		poll(t, what, func() bool {
			select {
			case <-node.ran:
				t.Fatalf("the node stopped while waiting for %s: %v", what, node.stop())
			default:
			}
			return cond()
		})
	}
	alive("the node to run the operator", func() bool {
		c := eng.Status(ctx).Cluster
		return c != nil && len(c.Operators) == 1 && c.Operators[0].Node == "node-1"
	})
	if _, err := conn.Exec(ctx, `INSERT INTO posts VALUES (1, 'a'), (2, 'b')`); err != nil {
		t.Fatal(err)
	}

	killer, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer killer.Close(ctx)
	spared := []uint32{killer.PgConn().PID(), conn.PgConn().PID()}
	terminated, comments := 0, 0
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); {
		var n int
		if err := killer.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> ALL($1)`, spared).Scan(&n); err != nil {
			t.Fatal(err)
		}
		terminated += n
		comments++
		if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES ($1, $2, 'x')`, comments, 1+comments%2); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("terminated %d connections", terminated)
	if terminated == 0 {
		t.Fatal("no connection was terminated: the test tested nothing")
	}
	if _, err := conn.Exec(ctx, `INSERT INTO comments VALUES (-1, 1, 'last')`); err != nil {
		t.Fatal(err)
	}
	want := func() string {
		var s string
		if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(format('%s:%s', p.id, (SELECT count(*) FROM comments c WHERE c.post_id = p.id)), ' ' ORDER BY p.id), '') FROM posts p`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}()
	var got string
	alive("the derived table to equal its recomputation "+want, func() bool {
		got = ""
		_ = conn.QueryRow(ctx, `SELECT coalesce(string_agg(format('%s:%s', id, n), ' ' ORDER BY id), '') FROM counts`).Scan(&got)
		return got == want
	})
	if err := node.stop(); err != nil {
		t.Fatalf("the node stopped with %v; want nil", err)
	}
}

// TestClusterGatewayWaitsForResume: a cluster node's gateway treats its ledger as shared,
// so a resume position after its head is waited for (it may come from a node further
// along) and then refused with 503 and Retry-After, which clients retry; a single node
// refuses it at once with 400 (realtime.TestResumeAheadUnshared).
func TestClusterGatewayWaitsForResume(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dsn, _ := pgtest.NewDatabaseWith(t, blogSchema)
	eng, err := walflow.Open(ctx, oneNodeConfig(t, dsn, startNATS(t, 1)))
	runClusterNode(t, "node-1", eng, err)
	gw, err := eng.Gateway(realtime.GatewayConfig{Authorizer: realtime.AllowAll{}, ResumeWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	defer gw.Shutdown(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/?channel=posts", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Last-Event-ID", "1000")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "did not reach it within 300ms") {
		t.Fatalf("resume after the head on a cluster node: %d %q (Retry-After %q); want 503 after the wait", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
}
