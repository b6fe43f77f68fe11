package walflow

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/walflow/walflow/realtime"
)

// Defaults for [RealtimeConfig].
const (
	// RealtimePathDefault is the default [RealtimeConfig.Path].
	RealtimePathDefault = "/realtime/"
	// RealtimeShutdownGraceDefault is the default [RealtimeConfig.ShutdownGrace].
	RealtimeShutdownGraceDefault = 5 * time.Second
)

// RealtimeConfig makes the engine serve the realtime gateway (see package realtime) next to
// /metrics, /healthz and /status: on Config.HTTPAddr when Run serves HTTP, and in
// [Engine.Handler] for embedders who mount it themselves.
type RealtimeConfig struct {
	// Path is the prefix the gateway is mounted at, like /realtime/: a stream is opened at
	// /realtime/?channel=posts. The gateway sees the paths under it relative to it. It must
	// start with a slash; a missing trailing slash is added. Default RealtimePathDefault
	// ("/realtime/").
	Path string
	// Gateway configures the gateway. Its Ledger and Router are the engine's (values set
	// here are replaced) and its Logger defaults to Config.Logger. Authorizer is required:
	// a realtime.JWTAuthorizer, or realtime.AllowAll{} for tests and trusted networks.
	Gateway realtime.GatewayConfig
	// ShutdownGrace bounds how long stopping waits for open streams to end (each is sent a
	// last message with its resume position) before their connections are closed.
	// Default RealtimeShutdownGraceDefault (5s).
	ShutdownGrace time.Duration
}

func (c RealtimeConfig) withDefaults() RealtimeConfig {
	if c.Path == "" {
		c.Path = RealtimePathDefault
	}
	if !strings.HasSuffix(c.Path, "/") {
		c.Path += "/"
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = RealtimeShutdownGraceDefault
	}
	return c
}

// ValidRealtimePath reports whether p can be RealtimeConfig.Path: a clean URL path prefix
// that starts and ends with a slash, with no pattern or escape characters.
func ValidRealtimePath(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.ContainsAny(p, "{}?#% \t\r\n") &&
		(p == "/" || path.Clean(p)+"/" == p)
}

func (c RealtimeConfig) validate() error {
	if !ValidRealtimePath(c.Path) {
		return fmt.Errorf("walflow: Realtime.Path %q is not a URL path prefix; write it like /realtime/ (a slash, then segments of letters, digits, - or _)", c.Path)
	}
	if c.Gateway.Authorizer == nil {
		return errors.New("walflow: Realtime.Gateway.Authorizer is nil; set it to a realtime.JWTAuthorizer (realtime.NewJWTAuthorizer), or to realtime.AllowAll{} for tests and trusted networks only")
	}
	return nil
}

// openRealtime builds the gateway of Config.Realtime, if any.
func (e *Engine) openRealtime() error {
	rc := e.cfg.Realtime
	if rc == nil {
		return nil
	}
	gw, err := e.Gateway(rc.Gateway)
	if err != nil {
		return fmt.Errorf("walflow: Realtime.Gateway: %w", err)
	}
	e.gw = gw
	return nil
}

// RealtimeGateway returns the gateway of Config.Realtime, or nil when it is not configured.
// The engine serves and shuts it down itself; it is exposed for its Stats and Collector,
// or to mount it on another server too.
func (e *Engine) RealtimeGateway() *realtime.Gateway { return e.gw }

// mountRealtime mounts the gateway on mux at Config.Realtime.Path.
func (e *Engine) mountRealtime(mux *http.ServeMux) {
	if e.gw == nil {
		return
	}
	p := e.cfg.Realtime.Path
	mux.Handle(p, http.StripPrefix(strings.TrimSuffix(p, "/"), e.gw))
}

// shutdownRealtime ends the gateway's streams, waiting at most ShutdownGrace. It reports
// whether they all ended.
func (e *Engine) shutdownRealtime(ctx context.Context) bool {
	if e.gw == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.Realtime.ShutdownGrace)
	defer cancel()
	return e.gw.Shutdown(ctx) == nil
}
