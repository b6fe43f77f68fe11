package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

// Defaults for [Config] and [ServerConfig].
const (
	// StreamDefault is the JetStream stream that holds the ledger.
	StreamDefault = "walflow"
	// BucketDefault is the JetStream key-value bucket of the node registry.
	BucketDefault = "walflow_nodes"
	// HeartbeatDefault is how often a node refreshes its entry in the registry.
	HeartbeatDefault = time.Second
	// NodeTTLDefault is how long a node's entry outlives its last heartbeat.
	NodeTTLDefault = 5 * time.Second
	// ListenDefault is the embedded server's client address.
	ListenDefault = "127.0.0.1:4222"
	// ClusterNameDefault is the embedded servers' cluster name.
	ClusterNameDefault = "walflow"
	// StoreDirDefault is the embedded server's JetStream directory.
	StoreDirDefault = "walflow-nats"
	// SyncDefault is the embedded server's sync setting: fsync every write before
	// acknowledging it.
	SyncDefault = "always"
)

// Config configures how a walflow node joins a cluster: the NATS servers that hold the
// ledger stream and the node registry, and the node's own name. Either URLs or Server is
// set: URLs connects to NATS servers run elsewhere, Server runs one in this process.
type Config struct {
	// URLs are NATS servers to connect to, like nats://10.0.0.1:4222; the client learns
	// the rest of their cluster from them. Default none: Server must be set.
	URLs []string
	// Server runs an embedded NATS server with JetStream in this process, alone or routed
	// to the embedded servers of the other nodes. The node connects to it in-process.
	// Default nil: URLs must be set.
	Server *ServerConfig
	// Stream is the JetStream stream that holds the ledger: letters, digits, - and _.
	// Default "walflow".
	Stream string
	// Replicas is how many servers hold the stream and the registry (1 to 5): JetStream
	// acknowledges an append once a majority of them have it. Default 1 with one embedded
	// server without routes, 3 otherwise.
	Replicas int
	// NodeName names this node in the registry and in /status: letters, digits, -, _ and
	// dots, unique in the cluster. Default the host name.
	NodeName string
	// Bucket is the key-value bucket of the node registry. Default "walflow_nodes".
	Bucket string
	// Heartbeat is how often this node refreshes its registry entry. Default 1s.
	Heartbeat time.Duration
	// NodeTTL is how long a node's entry outlives its last heartbeat: a node silent for
	// longer is gone from the registry, and a standby then ends its replication session
	// (see Elector). It must be at least twice Heartbeat. Default 5s.
	NodeTTL time.Duration
	// Logger receives the cluster's logs (and the embedded server's warnings and errors).
	// Default: warnings and errors as text on stderr.
	Logger *slog.Logger
}

// ServerConfig configures an embedded NATS server.
type ServerConfig struct {
	// Name is the server's name, unique in its cluster. Default Config.NodeName.
	Name string
	// Listen is the host:port where clients (other nodes' walflow, the nats CLI) connect.
	// Port 0 picks a free port. Default "127.0.0.1:4222".
	Listen string
	// ClusterListen is the host:port where the other servers' routes connect. Default ""
	// (a single server, no routes).
	ClusterListen string
	// Routes are the other servers' cluster addresses, as host:port or
	// nats-route://host:port. Listing this server's own address too is fine, so every
	// node can share one list. Default none.
	Routes []string
	// ClusterName names the cluster of routed servers; all of them use the same.
	// Default "walflow".
	ClusterName string
	// StoreDir is the directory of the server's JetStream data. Default "walflow-nats".
	StoreDir string
	// Sync is when the server fsyncs JetStream writes: "always" (before acknowledging
	// each write) or a duration such as "1s" or "2m" (in the background at that
	// interval; a write is then acknowledged before it is on disk, and a power loss of a
	// majority of the replicas at once may lose it). See docs/cluster.md. Default "always".
	Sync string
}

// ConfigError is a bad cluster setting: Field names it, Err says what is wrong and how to
// fix it.
type ConfigError struct {
	// Field is the setting at fault, as named in Config (Server.Listen for a ServerConfig
	// field).
	Field string
	// Err is the problem and its fix.
	Err error
}

func (e *ConfigError) Error() string { return "cluster: " + e.Field + ": " + e.Err.Error() }

func (e *ConfigError) Unwrap() error { return e.Err }

func configErrorf(field, format string, args ...any) error {
	return &ConfigError{Field: field, Err: fmt.Errorf(format, args...)}
}

var (
	streamNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	nodeNameRE   = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.NodeName == "" {
		if h, err := os.Hostname(); err == nil {
			c.NodeName = h
		}
	}
	c.Stream = cmp.Or(c.Stream, StreamDefault)
	c.Bucket = cmp.Or(c.Bucket, BucketDefault)
	c.Heartbeat = cmp.Or(c.Heartbeat, HeartbeatDefault)
	c.NodeTTL = cmp.Or(c.NodeTTL, NodeTTLDefault)
	if c.Server != nil {
		s := *c.Server
		s.Name = cmp.Or(s.Name, c.NodeName)
		s.Listen = cmp.Or(s.Listen, ListenDefault)
		s.ClusterName = cmp.Or(s.ClusterName, ClusterNameDefault)
		s.StoreDir = cmp.Or(s.StoreDir, StoreDirDefault)
		s.Sync = cmp.Or(s.Sync, SyncDefault)
		s.Routes = append([]string(nil), s.Routes...)
		c.Server = &s
	}
	if c.Replicas == 0 {
		c.Replicas = 3
		if c.Server != nil && c.Server.ClusterListen == "" && len(c.Server.Routes) == 0 {
			c.Replicas = 1
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return c
}

// Validate checks a configuration that WithDefaults filled: it returns a [*ConfigError]
// naming the first bad field and its fix, or nil.
func (c Config) Validate() error {
	switch {
	case len(c.URLs) == 0 && c.Server == nil:
		return configErrorf("URLs", "no NATS server: list the servers' URLs (like nats://10.0.0.1:4222), or set Server to run one in this process")
	case len(c.URLs) > 0 && c.Server != nil:
		return configErrorf("URLs", "both URLs and Server are set: connect to servers run elsewhere (URLs) or run one in this process (Server), not both")
	}
	for _, u := range c.URLs {
		p, err := url.Parse(u)
		if err != nil || p.Host == "" || (p.Scheme != "nats" && p.Scheme != "tls" && p.Scheme != "ws" && p.Scheme != "wss") {
			return configErrorf("URLs", "%q is not a NATS URL; write it like nats://10.0.0.1:4222", u)
		}
	}
	if !streamNameRE.MatchString(c.Stream) {
		return configErrorf("Stream", "%q is not a stream name; use 1 to 64 letters, digits, - or _, like walflow", c.Stream)
	}
	if !streamNameRE.MatchString(c.Bucket) {
		return configErrorf("Bucket", "%q is not a bucket name; use 1 to 64 letters, digits, - or _, like walflow_nodes", c.Bucket)
	}
	if c.NodeName == "" || len(c.NodeName) > 128 || !nodeNameRE.MatchString(c.NodeName) {
		return configErrorf("NodeName", "%q is not a node name; use letters, digits, -, _ and inner dots, unique in the cluster, like node-1", c.NodeName)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return configErrorf("Replicas", "%d is out of range; JetStream keeps 1 to 5 replicas (3 tolerates one server down)", c.Replicas)
	}
	if c.Heartbeat <= 0 {
		return configErrorf("Heartbeat", "%s is not positive; use a short interval such as 1s", c.Heartbeat)
	}
	if c.NodeTTL < 2*c.Heartbeat {
		return configErrorf("NodeTTL", "%s is less than twice Heartbeat (%s), so a live node could vanish between two heartbeats; raise it to at least %s", c.NodeTTL, c.Heartbeat, 2*c.Heartbeat)
	}
	if c.Server != nil {
		if err := c.Server.validate(c.Replicas); err != nil {
			return err
		}
	}
	return nil
}

func (s *ServerConfig) validate(replicas int) error {
	if !nodeNameRE.MatchString(s.Name) {
		return configErrorf("Server.Name", "%q is not a server name; use letters, digits, -, _ and inner dots, like node-1", s.Name)
	}
	if _, _, err := splitHostPort(s.Listen); err != nil {
		return configErrorf("Server.Listen", "%q is not host:port (like 127.0.0.1:4222): %w", s.Listen, err)
	}
	if s.ClusterListen != "" {
		if _, _, err := splitHostPort(s.ClusterListen); err != nil {
			return configErrorf("Server.ClusterListen", "%q is not host:port (like 0.0.0.0:6222): %w", s.ClusterListen, err)
		}
	}
	if len(s.Routes) > 0 && s.ClusterListen == "" {
		return configErrorf("Server.ClusterListen", "is empty but Routes are set; routed servers need a cluster address (like 0.0.0.0:6222) for the others to connect to")
	}
	for _, r := range s.Routes {
		if _, err := routeURL(r); err != nil {
			return configErrorf("Server.Routes", "%w", err)
		}
	}
	if s.ClusterListen == "" && replicas > 1 {
		return configErrorf("Replicas", "is %d but the embedded server runs alone (no ClusterListen nor Routes), so it holds one replica; set Replicas to 1 or route it to other servers", replicas)
	}
	if strings.TrimSpace(s.ClusterName) == "" || strings.ContainsAny(s.ClusterName, " \t.*>") {
		return configErrorf("Server.ClusterName", "%q is not a cluster name; use letters, digits, - or _, the same on every server", s.ClusterName)
	}
	if s.StoreDir == "" {
		return configErrorf("Server.StoreDir", "is empty; name the directory of the server's JetStream data")
	}
	if _, _, err := parseSync(s.Sync); err != nil {
		return configErrorf("Server.Sync", "%w", err)
	}
	return nil
}

// parseSync reads ServerConfig.Sync: "always", or an fsync interval.
func parseSync(s string) (always bool, interval time.Duration, err error) {
	if s == "always" {
		return true, 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return false, 0, fmt.Errorf("%q is neither \"always\" (fsync before acknowledging each write) nor a positive interval such as 1s", s)
	}
	return false, d, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return host, p, nil
}

// routeURL turns host:port or nats-route://host:port into a route URL.
func routeURL(r string) (*url.URL, error) {
	s := r
	if !strings.Contains(s, "://") {
		s = "nats-route://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Port() == "" {
		return nil, fmt.Errorf("route %q is not host:port or nats-route://host:port (like 10.0.0.2:6222)", r)
	}
	if u.Scheme != "nats-route" && u.Scheme != "nats" && u.Scheme != "tls" {
		return nil, fmt.Errorf("route %q has scheme %q; write nats-route://host:port", r, u.Scheme)
	}
	return u, nil
}

// ErrNoServer is returned by [Connect] when no NATS server answers.
var ErrNoServer = errors.New("cluster: no NATS server answers")
