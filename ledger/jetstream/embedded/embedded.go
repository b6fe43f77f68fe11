// Package embedded starts a NATS server with JetStream inside the process, configured as
// walflow's JetStream ledger requires: every stored message is fsynced before it is
// acknowledged (sync always), unless Options.SyncInterval says otherwise. It serves tests
// and one-node setups; see docs/cluster.md, section Durability.
package embedded

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configures an embedded server.
type Options struct {
	// StoreDir is the JetStream store directory; required. A server started again on the
	// same directory recovers its streams.
	StoreDir string
	// Host is the address to listen on; 127.0.0.1 by default.
	Host string
	// Port is the client port; 0 picks a free one.
	Port int
	// Name is the server's name; the server generates one when empty.
	Name string
	// SyncInterval is how often the store is flushed to disk. Zero means sync always:
	// each message is fsynced before JetStream acknowledges it, the setting walflow
	// requires of a single server. A positive interval acknowledges before the fsync: a
	// power loss (not a process crash) can then lose up to that long of acknowledged
	// writes.
	SyncInterval time.Duration
	// ReadyTimeout bounds the wait for the server to accept connections; 10 s by default.
	ReadyTimeout time.Duration
}

// Start starts a server and returns once it accepts connections with JetStream enabled.
// Shut it down with Shutdown, then WaitForShutdown.
func Start(opts Options) (*server.Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded: Options.StoreDir is empty; name a directory for the JetStream store")
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	port := opts.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 10 * time.Second
	}
	so := &server.Options{
		ServerName: opts.Name,
		Host:       opts.Host,
		Port:       port,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	}
	if opts.SyncInterval > 0 {
		so.SyncInterval = opts.SyncInterval
	} else {
		so.SyncAlways = true
		so.SyncInterval = 2 * time.Minute
	}
	s, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("embedded: configure the NATS server: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(opts.ReadyTimeout) || !s.JetStreamEnabled() {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("embedded: the NATS server on %s:%d did not start with JetStream within %s (is the port free and %s writable?)", opts.Host, opts.Port, opts.ReadyTimeout, opts.StoreDir)
	}
	return s, nil
}
