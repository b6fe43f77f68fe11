package configfile

import (
	"errors"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
)

// clusterConfig is the cluster section: the NATS servers, the stream and this node.
type clusterConfig struct {
	Node      string               `yaml:"node"`
	URLs      []string             `yaml:"urls"`
	Server    *clusterServerConfig `yaml:"server"`
	Stream    string               `yaml:"stream"`
	Replicas  int                  `yaml:"replicas"`
	Bucket    string               `yaml:"bucket"`
	Heartbeat string               `yaml:"heartbeat"`
	NodeTTL   string               `yaml:"node_ttl"`
}

// clusterServerConfig is cluster.server: a NATS server embedded in walflow.
type clusterServerConfig struct {
	Name          string   `yaml:"name"`
	Listen        string   `yaml:"listen"`
	ClusterListen string   `yaml:"cluster_listen"`
	Routes        []string `yaml:"routes"`
	ClusterName   string   `yaml:"cluster_name"`
	StoreDir      string   `yaml:"store_dir"`
	Sync          string   `yaml:"sync"`
}

var clusterSpec = mapSpec("the keys of cluster",
	"node", scalar("this node's name, unique in the cluster, like node-1"),
	"urls", &spec{kind: kindList, want: "a list of NATS URLs like [nats://10.0.0.1:4222, nats://10.0.0.2:4222]", elem: scalar("a NATS URL like nats://10.0.0.1:4222")},
	"server", mapSpec("the keys of cluster.server",
		"name", scalar("the server's name, like node-1"),
		"listen", scalar("host:port like 0.0.0.0:4222"),
		"cluster_listen", scalar("host:port like 0.0.0.0:6222"),
		"routes", &spec{kind: kindList, want: "a list of host:port like [10.0.0.1:6222, 10.0.0.2:6222]", elem: scalar("host:port like 10.0.0.1:6222")},
		"cluster_name", scalar("a name like walflow"),
		"store_dir", scalar("a directory like walflow-nats"),
		"sync", scalar(`always, or an interval like 1s`),
	),
	"stream", scalar("a stream name like walflow"),
	"replicas", scalar("a number from 1 to 5, like 3"),
	"bucket", scalar("a bucket name like walflow_nodes"),
	"heartbeat", scalar("a duration like 1s"),
	"node_ttl", scalar("a duration like 5s"),
)

// clusterFieldPaths maps the fields a cluster.ConfigError names to their keys in the file.
var clusterFieldPaths = map[string]string{
	"URLs": "cluster.urls", "Server": "cluster.server", "Stream": "cluster.stream", "Replicas": "cluster.replicas",
	"NodeName": "cluster.node", "Bucket": "cluster.bucket", "Heartbeat": "cluster.heartbeat", "NodeTTL": "cluster.node_ttl",
	"Server.Name": "cluster.server.name", "Server.Listen": "cluster.server.listen",
	"Server.ClusterListen": "cluster.server.cluster_listen", "Server.Routes": "cluster.server.routes",
	"Server.ClusterName": "cluster.server.cluster_name", "Server.StoreDir": "cluster.server.store_dir",
	"Server.Sync": "cluster.server.sync",
}

// cluster validates the cluster section into e.Cluster.
func (l *loader) cluster(fc *fileConfig, e *walflow.Config) error {
	cc := fc.Cluster
	if cc == nil {
		if _, ok := l.nodes["cluster"]; ok {
			return l.errPath("cluster", "empty; list the NATS servers (urls: [nats://10.0.0.1:4222]) or run one in walflow (server: {listen: 0.0.0.0:4222}), or remove the section")
		}
		return nil
	}
	if e.MemoryLedger {
		return l.errPath("ledger.backend", "memory, but a cluster keeps its ledger in its JetStream stream; remove ledger.backend (a cluster node keeps only its channel index, beside ledger.dir)")
	}
	if e.TemporarySlot {
		return l.errPath("temporary_slot", "true, but a temporary slot is dropped with its leader's connection, so no other node could resume it; remove it")
	}
	c := cluster.Config{NodeName: cc.Node, URLs: cc.URLs, Stream: cc.Stream, Replicas: cc.Replicas, Bucket: cc.Bucket}
	var err error
	if c.Heartbeat, err = l.duration("cluster.heartbeat", cc.Heartbeat); err != nil {
		return err
	}
	if c.NodeTTL, err = l.duration("cluster.node_ttl", cc.NodeTTL); err != nil {
		return err
	}
	if s := cc.Server; s != nil {
		c.Server = &cluster.ServerConfig{Name: s.Name, Listen: s.Listen, ClusterListen: s.ClusterListen, Routes: s.Routes,
			ClusterName: s.ClusterName, StoreDir: s.StoreDir, Sync: s.Sync}
		if c.Server.StoreDir == "" {
			c.Server.StoreDir = cluster.StoreDirDefault
		}
		if !filepath.IsAbs(c.Server.StoreDir) {
			c.Server.StoreDir = filepath.Join(filepath.Dir(l.file), c.Server.StoreDir)
		}
	} else if _, ok := l.nodes["cluster.server"]; ok {
		return l.errPath("cluster.server", "empty; set at least listen, like server: {listen: 0.0.0.0:4222}, or remove it")
	}
	if err := c.WithDefaults().Validate(); err != nil {
		var ce *cluster.ConfigError
		if !errors.As(err, &ce) {
			return l.errPath("cluster", "%v", err)
		}
		path := clusterFieldPaths[ce.Field]
		if path == "" {
			path = "cluster"
		}
		if l.nodes[path] != nil && l.keys[path] != nil && l.nodes[path].Kind == yaml.ScalarNode {
			return l.errPath(path, "%v", ce.Err)
		}
		for l.nodes[path] == nil && path != "cluster" {
			// Left out of the file (a default, or a missing key): report it on its section.
			path = parentPath(path)
		}
		return l.errKey(path, "%v", ce.Err)
	}
	e.Cluster = &c
	return nil
}

// parentPath is the key path of the mapping that holds path.
func parentPath(path string) string {
	if i := lastDot(path); i > 0 {
		return path[:i]
	}
	return "cluster"
}

func lastDot(s string) int { return strings.LastIndexByte(s, '.') }
