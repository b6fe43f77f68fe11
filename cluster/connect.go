package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go"
)

// Conn is a node's connection to the cluster's NATS servers, and the embedded server when
// Config.Server runs one.
type Conn struct {
	// NC is the client connection; it reconnects on its own while Conn is open.
	NC *nats.Conn
	// Server is the embedded server; nil with Config.URLs.
	Server *Server
}

// Connect starts the embedded server (Config.Server) or connects to Config.URLs, as cfg
// (filled by [Config.WithDefaults] and valid) says. It returns once the client is
// connected; JetStream may still be electing its leaders (see [WaitJetStream]). An
// unreachable server fails with [ErrNoServer].
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	log := cfg.Logger.With(slog.String("component", "cluster"))
	opts := []nats.Option{
		nats.Name("walflow " + cfg.NodeName),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // closed on purpose
			}
			log.Warn("disconnected from NATS; reconnecting", slog.Any("error", err))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", slog.String("url", nc.ConnectedUrlRedacted()))
		}),
	}
	if cfg.Server != nil {
		srv, err := StartServer(ctx, *cfg.Server, cfg.Logger)
		if err != nil {
			return nil, err
		}
		nc, err := nats.Connect(srv.ClientURL(), append(opts, nats.InProcessServer(srv.srv))...)
		if err != nil {
			srv.Shutdown()
			return nil, fmt.Errorf("cluster: connect to the embedded NATS server: %w", err)
		}
		return &Conn{NC: nc, Server: srv}, nil
	}
	nc, err := nats.Connect(strings.Join(cfg.URLs, ","), append(opts, nats.RetryOnFailedConnect(false))...)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w; check that they run and that this machine reaches them", ErrNoServer, strings.Join(cfg.URLs, ", "), err)
	}
	return &Conn{NC: nc}, nil
}

// Close closes the client connection, then stops the embedded server if any.
func (c *Conn) Close() {
	c.NC.Close()
	if c.Server != nil {
		c.Server.Shutdown()
	}
}
