package cluster

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := Config{Server: &ServerConfig{}, NodeName: "n1"}.WithDefaults()
	if c.Stream != StreamDefault || c.Bucket != BucketDefault || c.Replicas != 1 || c.Heartbeat != HeartbeatDefault || c.NodeTTL != NodeTTLDefault {
		t.Fatalf("defaults: %+v", c)
	}
	if c.Server.Name != "n1" || c.Server.Listen != ListenDefault || c.Server.Sync != "always" || c.Server.StoreDir != StoreDirDefault {
		t.Fatalf("server defaults: %+v", *c.Server)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	routed := Config{Server: &ServerConfig{ClusterListen: "127.0.0.1:6222"}, NodeName: "n1"}.WithDefaults()
	if routed.Replicas != 3 {
		t.Fatalf("replicas of a routed server = %d, want 3", routed.Replicas)
	}
	remote := Config{URLs: []string{"nats://10.0.0.1:4222"}}.WithDefaults()
	if remote.Replicas != 3 || remote.NodeName == "" {
		t.Fatalf("remote defaults: %+v", remote)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	srv := func(f func(*ServerConfig)) *ServerConfig {
		s := &ServerConfig{ClusterListen: "127.0.0.1:6222", Routes: []string{"127.0.0.1:6222", "nats-route://127.0.0.1:6223"}}
		f(s)
		return s
	}
	tests := []struct {
		name  string
		cfg   Config
		field string
		want  string
	}{
		{"no server", Config{}, "URLs", "no NATS server"},
		{"both", Config{URLs: []string{"nats://a:4222"}, Server: &ServerConfig{}}, "URLs", "not both"},
		{"bad url", Config{URLs: []string{"http://a:4222"}}, "URLs", "not a NATS URL"},
		{"stream", Config{URLs: []string{"nats://a:4222"}, Stream: "a.b"}, "Stream", "not a stream name"},
		{"bucket", Config{URLs: []string{"nats://a:4222"}, Bucket: "a b"}, "Bucket", "not a bucket name"},
		{"node name", Config{URLs: []string{"nats://a:4222"}, NodeName: "a*b"}, "NodeName", "not a node name"},
		{"replicas", Config{URLs: []string{"nats://a:4222"}, Replicas: 7}, "Replicas", "1 to 5"},
		{"ttl", Config{URLs: []string{"nats://a:4222"}, Heartbeat: time.Second, NodeTTL: 1500 * time.Millisecond}, "NodeTTL", "twice Heartbeat"},
		{"listen", Config{Server: &ServerConfig{Listen: "nohost"}}, "Server.Listen", "host:port"},
		{"routes without cluster", Config{Server: &ServerConfig{Routes: []string{"127.0.0.1:6222"}}}, "Server.ClusterListen", "Routes are set"},
		{"bad route", Config{Server: srv(func(s *ServerConfig) { s.Routes = []string{"http://x:1"} })}, "Server.Routes", "nats-route://"},
		{"route without port", Config{Server: srv(func(s *ServerConfig) { s.Routes = []string{"x"} })}, "Server.Routes", "host:port"},
		{"single server replicas", Config{Server: &ServerConfig{}, Replicas: 3}, "Replicas", "runs alone"},
		{"sync", Config{Server: srv(func(s *ServerConfig) { s.Sync = "sometimes" })}, "Server.Sync", "always"},
		{"cluster name", Config{Server: srv(func(s *ServerConfig) { s.ClusterName = "a.b" })}, "Server.ClusterName", "not a cluster name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.cfg.NodeName == "" {
				tt.cfg.NodeName = "node-1"
			}
			err := tt.cfg.WithDefaults().Validate()
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Validate() = %v, want a *ConfigError", err)
			}
			if ce.Field != tt.field || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "cluster: "+tt.field+": ") {
				t.Fatalf("Validate() = %q (field %s), want field %s and %q", err, ce.Field, tt.field, tt.want)
			}
		})
	}
	good := Config{NodeName: "n.1", Server: srv(func(s *ServerConfig) { s.Sync = "1s" })}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatalf("valid routed config: %v", err)
	}
}
