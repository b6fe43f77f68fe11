package walflow

import "github.com/walflow/walflow/realtime"

// Gateway returns a Server-Sent Events gateway on the engine's ledger and channels, to mount
// in your own HTTP server (see package realtime for the protocol). cfg.Ledger and cfg.Router
// are filled in; cfg.Authorizer is required. Call its Shutdown before stopping the engine.
func (e *Engine) Gateway(cfg realtime.GatewayConfig) (*realtime.Gateway, error) {
	cfg.Ledger, cfg.Router = e.led, e.router
	if cfg.Logger == nil {
		cfg.Logger = e.cfg.Logger
	}
	return realtime.NewGateway(cfg)
}
