package walflow

import "github.com/walflow/walflow/realtime"

// Gateway returns a realtime gateway (Server-Sent Events, WebSocket and the walflow.js
// client) on the engine's ledger and channels, to mount in your own HTTP server; see package
// realtime for the protocols, and Config.Realtime to have the engine serve one itself.
// cfg.Ledger and cfg.Router are filled in, cfg.SharedLedger set in a cluster, and
// cfg.Snapshots when nil (the engine serves
// channel snapshots at .../snapshot); cfg.Authorizer is required. Call its Shutdown
// before stopping the engine.
func (e *Engine) Gateway(cfg realtime.GatewayConfig) (*realtime.Gateway, error) {
	cfg.Ledger, cfg.Router = e.led, e.router
	// In a cluster a client may resume with a position another node sent it.
	cfg.SharedLedger = cfg.SharedLedger || e.cfg.Cluster != nil
	if cfg.Snapshots == nil {
		cfg.Snapshots = e
	}
	if cfg.Logger == nil {
		cfg.Logger = e.cfg.Logger
	}
	return realtime.NewGateway(cfg)
}
