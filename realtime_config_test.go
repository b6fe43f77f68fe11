package walflow_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/channel"
	"github.com/walflow/walflow/internal/pgtest"
	"github.com/walflow/walflow/internal/ssetest"
	"github.com/walflow/walflow/realtime"
)

func TestRealtimeConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		rc   walflow.RealtimeConfig
		want string
	}{
		{"no authorizer", walflow.RealtimeConfig{}, "walflow: Realtime.Gateway.Authorizer is nil; set it to a realtime.JWTAuthorizer"},
		{"relative path", walflow.RealtimeConfig{Path: "realtime/", Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}}, `walflow: Realtime.Path "realtime/" is not a URL path prefix; write it like /realtime/`},
		{"unclean path", walflow.RealtimeConfig{Path: "/a//b/", Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}}, `Realtime.Path "/a//b/" is not a URL path prefix`},
		{"pattern path", walflow.RealtimeConfig{Path: "/{x}/", Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}}, `Realtime.Path "/{x}/" is not a URL path prefix`},
		{"method in path", walflow.RealtimeConfig{Path: "/GET /x", Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}}, `Realtime.Path "/GET /x/" is not a URL path prefix`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := tt.rc
			eng, err := walflow.Open(t.Context(), walflow.Config{DatabaseURL: "postgres://app@127.0.0.1:1/app", MemoryLedger: true, Realtime: &rc})
			if err == nil {
				_ = eng.Close()
				t.Fatalf("Open succeeded, want an error with %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v\nwant an error with %q", err, tt.want)
			}
		})
	}
}

func TestRealtimeGatewayOptional(t *testing.T) {
	t.Parallel()
	eng, err := walflow.Open(t.Context(), walflow.Config{DatabaseURL: "postgres://app@127.0.0.1:1/app", MemoryLedger: true})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if gw := eng.RealtimeGateway(); gw != nil {
		t.Errorf("RealtimeGateway() = %v without Config.Realtime, want nil", gw)
	}

	// Without HTTPAddr the gateway is served by Handler, at the path without its slash too.
	rc := &walflow.RealtimeConfig{Path: "/live", Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}}
	eng2, err := walflow.Open(t.Context(), walflow.Config{DatabaseURL: "postgres://app@127.0.0.1:1/app", MemoryLedger: true, Realtime: rc})
	if err != nil {
		t.Fatal(err)
	}
	defer eng2.Close()
	if eng2.RealtimeGateway() == nil {
		t.Fatal("RealtimeGateway() = nil with Config.Realtime")
	}
	if rc.Path != "/live" {
		t.Errorf("Open changed the caller's RealtimeConfig.Path to %q", rc.Path)
	}
	// A bad channel is rejected by the gateway itself, which proves the mount and the
	// stripped prefix without streaming.
	srv := &http.Server{Handler: eng2.Handler()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	code, body := get(t, "http://"+ln.Addr().String()+"/live/?channel=nope/1/2/3/4")
	if code != http.StatusBadRequest {
		t.Errorf("/live/ with a bad channel: %d %s, want 400 from the gateway", code, body)
	}
}

// get fetches url without keeping the connection.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEngineRealtime(t *testing.T) {
	t.Parallel()
	dsn, conn := pgtest.NewDatabaseWith(t, blogSchema)
	ctx := t.Context()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	pc, _ := pgx.ParseConfig(dsn)
	eng, err := walflow.Open(ctx, walflow.Config{
		DatabaseURL: dsn, Slot: pc.Database, MemoryLedger: true, HTTPAddr: addr,
		Tables: []channel.Table{
			{Name: "posts"},
			{Name: "comments", Scopes: []channel.Scope{mustScope(t, "posts/{post_id}")}},
		},
		StatusInterval: 200 * time.Millisecond,
		Realtime:       &walflow.RealtimeConfig{Gateway: realtime.GatewayConfig{Authorizer: realtime.AllowAll{}}},
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	gw := eng.RealtimeGateway()
	if gw == nil {
		t.Fatal("RealtimeGateway() = nil with Config.Realtime")
	}
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	runDone := make(chan error, 1)
	go func() { runDone <- eng.Run(runCtx) }()
	closed := false
	defer func() {
		if !closed {
			stop()
			<-runDone
			_ = eng.Close()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !eng.Status(ctx).Streaming {
		if time.Now().After(deadline) {
			t.Fatal("engine did not start streaming within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	base := "http://" + addr
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/realtime/?channel=posts/42/comments", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /realtime/: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := ssetest.Lines(t, resp.Body)
	readUntil := events.Until
	readUntil("event: subscribed")
	if _, err := conn.Exec(ctx, `INSERT INTO posts VALUES (42, 'a'); INSERT INTO comments VALUES (1, 42, 'x')`); err != nil {
		t.Fatal(err)
	}
	got := readUntil(`"channel":"posts/42/comments"`)
	if !strings.Contains(got, "event: insert") || !strings.Contains(got, `"body":"x"`) {
		t.Fatalf("stream:\n%s", got)
	}

	// The gateway's metrics are in the engine's /metrics.
	for {
		code, metrics := get(t, base+"/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		if strings.Contains(metrics, "walflow_realtime_connections 1") && strings.Contains(metrics, "walflow_realtime_messages_sent_total 1") &&
			strings.Contains(metrics, "walflow_events_appended_total 2") {
			break
		}
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatalf("/metrics lacks the gateway's connection and message:\n%s", metrics)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Stopping ends the stream with its resume position, then Run and Close return.
	stop()
	got = readUntil("event: error")
	got += "\n" + readUntil("data: ")
	if !strings.Contains(got, `"reason":"shutdown"`) || !strings.Contains(got, `"position":2`) {
		t.Errorf("last message:\n%s", got)
	}
	if err := <-runDone; err != nil {
		t.Errorf("Run: %v", err)
	}
	closed = true
	if err := eng.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	events.Drain()
	st := gw.Stats()
	if st.Connections != 0 || st.Disconnects[realtime.DisconnectShutdown] != 1 {
		t.Errorf("gateway after Close: %d connections, disconnects %v; want 0 and one shutdown", st.Connections, st.Disconnects)
	}
}
