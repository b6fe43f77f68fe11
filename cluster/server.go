package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is an embedded NATS server with JetStream, started by [StartServer].
type Server struct {
	srv  *server.Server
	opts *server.Options
}

// StartServer starts an embedded NATS server with JetStream as sc (filled by
// [Config.WithDefaults]) says, and waits until it accepts clients or ctx ends. It does not
// wait for JetStream to be ready (a routed server needs its peers for that): see
// [WaitJetStream]. Stop it with [Server.Shutdown].
func StartServer(ctx context.Context, sc ServerConfig, logger *slog.Logger) (*Server, error) {
	opts, err := serverOptions(sc)
	if err != nil {
		return nil, err
	}
	return startServer(ctx, opts, logger)
}

func serverOptions(sc ServerConfig) (*server.Options, error) {
	host, port, err := splitHostPort(sc.Listen)
	if err != nil {
		return nil, configErrorf("Server.Listen", "%q is not host:port: %w", sc.Listen, err)
	}
	always, interval, err := parseSync(sc.Sync)
	if err != nil {
		return nil, configErrorf("Server.Sync", "%w", err)
	}
	opts := &server.Options{
		ServerName:   sc.Name,
		Host:         host,
		Port:         port,
		JetStream:    true,
		StoreDir:     sc.StoreDir,
		SyncAlways:   always,
		SyncInterval: interval,
		NoSigs:       true,
	}
	if sc.ClusterListen != "" {
		chost, cport, err := splitHostPort(sc.ClusterListen)
		if err != nil {
			return nil, configErrorf("Server.ClusterListen", "%q is not host:port: %w", sc.ClusterListen, err)
		}
		opts.Cluster = server.ClusterOpts{Name: sc.ClusterName, Host: chost, Port: cport}
		for _, r := range sc.Routes {
			u, err := routeURL(r)
			if err != nil {
				return nil, configErrorf("Server.Routes", "%w", err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	return opts, nil
}

func startServer(ctx context.Context, opts *server.Options, logger *slog.Logger) (*Server, error) {
	o := *opts
	o.Routes = append([]*url.URL(nil), opts.Routes...)
	srv, err := server.NewServer(&o)
	if err != nil {
		return nil, fmt.Errorf("cluster: configure the embedded NATS server %q: %w", opts.ServerName, err)
	}
	if logger != nil {
		srv.SetLoggerV2(natsLogger{logger.With(slog.String("component", "nats"), slog.String("server", opts.ServerName))}, false, false, false)
	}
	srv.Start()
	for !srv.ReadyForConnections(100 * time.Millisecond) {
		if err := ctx.Err(); err != nil {
			srv.Shutdown()
			srv.WaitForShutdown()
			return nil, fmt.Errorf("cluster: start the embedded NATS server %q on %s:%d: %w", opts.ServerName, opts.Host, opts.Port, err)
		}
		if !srv.Running() {
			srv.WaitForShutdown()
			return nil, fmt.Errorf("cluster: start the embedded NATS server %q on %s:%d: it stopped (port in use, or an unreadable StoreDir %q; see the logs)", opts.ServerName, opts.Host, opts.Port, opts.StoreDir)
		}
	}
	return &Server{srv: srv, opts: &o}, nil
}

// ClientURL is where clients connect, like nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.srv.ClientURL() }

// ClusterURL is where the other servers' routes connect, like nats-route://127.0.0.1:6222;
// "" without ClusterListen.
func (s *Server) ClusterURL() string {
	a := s.srv.ClusterAddr()
	if a == nil {
		return ""
	}
	return "nats-route://" + a.String()
}

// Name is the server's name.
func (s *Server) Name() string { return s.opts.ServerName }

// Connect opens an in-process client connection to the server.
func (s *Server) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect(s.ClientURL(), nats.InProcessServer(s.srv), nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to the embedded NATS server %q: %w", s.opts.ServerName, err)
	}
	return nc, nil
}

// Shutdown stops the server and waits until it has stopped. Its JetStream data stays in
// StoreDir.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// WaitJetStream waits until JetStream answers on nc (a routed server's JetStream needs a
// majority of its peers to elect a meta leader), or ctx ends.
func WaitJetStream(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("cluster: jetstream: %w", err)
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: wait for JetStream (a cluster needs a majority of its servers up): %w (last error: %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// natsLogger sends the embedded server's warnings and errors to slog; its notices go at
// debug level, and it logs no debug nor trace lines.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) {
	n.l.Debug(fmt.Sprintf(format, v...)) //nolint:sloglint // the server formats its own messages
}

func (n natsLogger) Warnf(format string, v ...any) {
	n.l.Warn(fmt.Sprintf(format, v...)) //nolint:sloglint // the server formats its own messages
}

func (n natsLogger) Fatalf(format string, v ...any) {
	n.l.Error(fmt.Sprintf(format, v...)) //nolint:sloglint // the server formats its own messages
}

func (n natsLogger) Errorf(format string, v ...any) {
	n.l.Error(fmt.Sprintf(format, v...)) //nolint:sloglint // the server formats its own messages
}

func (n natsLogger) Debugf(string, ...any) {}
func (n natsLogger) Tracef(string, ...any) {}
