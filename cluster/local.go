package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
)

// LocalCluster is a set of embedded NATS servers with JetStream on loopback, routed to
// each other, started by [StartLocalCluster] for tests and for walflow demo --cluster.
type LocalCluster struct {
	servers []*LocalServer
}

// LocalServer is one server of a [LocalCluster]. It keeps its ports and its JetStream
// directory across [LocalServer.Stop] and [LocalServer.Restart].
type LocalServer struct {
	cfg ServerConfig
	url string

	mu  sync.Mutex
	srv *Server // nil while stopped
}

// StartLocalCluster starts n embedded NATS servers (n is 1, or 3 or more for a cluster
// that survives one server down) on free loopback ports, each with its JetStream data in a
// directory under dir, and waits until JetStream answers on every one of them or ctx
// ends. Stop them with [LocalCluster.Shutdown].
func StartLocalCluster(ctx context.Context, dir string, n int) (*LocalCluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("cluster: StartLocalCluster with %d servers; start at least 1", n)
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	lc := &LocalCluster{}
	var routes []string
	if n > 1 {
		for i := range n {
			routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(ports[n+i]))
		}
	}
	for i := range n {
		name := "nats-" + strconv.Itoa(i+1)
		sc := ServerConfig{
			Name:        name,
			Listen:      "127.0.0.1:" + strconv.Itoa(ports[i]),
			ClusterName: ClusterNameDefault,
			StoreDir:    filepath.Join(dir, name),
			Sync:        SyncDefault,
		}
		if n > 1 {
			sc.ClusterListen = "127.0.0.1:" + strconv.Itoa(ports[n+i])
			sc.Routes = routes
		}
		lc.servers = append(lc.servers, &LocalServer{cfg: sc, url: "nats://" + sc.Listen})
	}
	for _, s := range lc.servers {
		if err := s.Restart(ctx); err != nil {
			lc.Shutdown()
			return nil, err
		}
	}
	for _, s := range lc.servers {
		if err := s.waitJetStream(ctx); err != nil {
			lc.Shutdown()
			return nil, err
		}
	}
	return lc, nil
}

// URLs are the servers' client URLs, like nats://127.0.0.1:41234, in server order.
func (lc *LocalCluster) URLs() []string {
	urls := make([]string, len(lc.servers))
	for i, s := range lc.servers {
		urls[i] = s.url
	}
	return urls
}

// Servers are the cluster's servers, to stop and restart one at a time.
func (lc *LocalCluster) Servers() []*LocalServer { return lc.servers }

// Replicas is the replication a stream on this cluster can have: 1 for one server, else 3
// (so that it survives one server down).
func (lc *LocalCluster) Replicas() int {
	if len(lc.servers) == 1 {
		return 1
	}
	return 3
}

// Shutdown stops every server that runs.
func (lc *LocalCluster) Shutdown() {
	for _, s := range lc.servers {
		s.Stop()
	}
}

// URL is the server's client URL; it stays the same across restarts.
func (s *LocalServer) URL() string { return s.url }

// Name is the server's name.
func (s *LocalServer) Name() string { return s.cfg.Name }

// Running reports whether the server runs.
func (s *LocalServer) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil
}

// Stop shuts the server down, keeping its data; it does nothing when stopped.
func (s *LocalServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv = nil
	}
}

// Restart starts the server again on the same ports with the same data, and waits until
// it accepts clients (not until it has caught up with its peers). It does nothing when the
// server runs.
func (s *LocalServer) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	srv, err := StartServer(ctx, s.cfg, nil)
	if err != nil {
		return err
	}
	s.srv = srv
	return nil
}

func (s *LocalServer) waitJetStream(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return fmt.Errorf("cluster: server %s is stopped", s.cfg.Name)
	}
	nc, err := srv.Connect("walflow-local-cluster")
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := WaitJetStream(ctx, nc); err != nil {
		return fmt.Errorf("cluster: server %s: %w", s.cfg.Name, err)
	}
	return nil
}

// freePorts reserves n distinct free loopback ports and releases them for the caller.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	var errs []error
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster: find a free port: %w", err))
			break
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return ports, nil
}
