package configfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseClusterConfig(t *testing.T) {
	t.Parallel()
	const file = `database_url: postgres://app@localhost/app
cluster:
  node: node-2
  server:
    listen: 0.0.0.0:4222
    cluster_listen: 0.0.0.0:6222
    routes: [10.0.0.1:6222, 10.0.0.2:6222, 10.0.0.3:6222]
    store_dir: nats
    sync: always
  stream: app_ledger
  heartbeat: 500ms
  node_ttl: 3s
`
	c, err := parseConfig("/etc/walflow/walflow.yaml", []byte(file), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	cc := c.Engine.Cluster
	if cc == nil {
		t.Fatal("no Cluster")
	}
	if cc.NodeName != "node-2" || cc.Stream != "app_ledger" || cc.Heartbeat != 500*time.Millisecond || cc.NodeTTL != 3*time.Second ||
		cc.Server == nil || cc.Server.Listen != "0.0.0.0:4222" || cc.Server.ClusterListen != "0.0.0.0:6222" || len(cc.Server.Routes) != 3 ||
		cc.Server.StoreDir != filepath.Join("/etc/walflow", "nats") || cc.Server.Sync != "always" {
		t.Fatalf("cluster config %+v (server %+v)", cc, cc.Server)
	}
	if d := cc.WithDefaults(); d.Replicas != 3 {
		t.Fatalf("routed embedded server: Replicas %d, want 3", d.Replicas)
	}

	c, err = parseConfig("walflow.yaml", []byte("database_url: postgres://app@localhost/app\ncluster:\n  node: a\n  urls: [nats://10.0.0.1:4222]\n  replicas: 3\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cc := c.Engine.Cluster; cc == nil || len(cc.URLs) != 1 || cc.Replicas != 3 || cc.Server != nil {
		t.Fatalf("cluster config %+v", cc)
	}
	c, err = parseConfig("walflow.yaml", []byte("database_url: postgres://app@localhost/app\n"), noEnv)
	if err != nil || c.Engine.Cluster != nil {
		t.Fatalf("no cluster section: Cluster %+v, err %v", c.Engine.Cluster, err)
	}
}

func TestParseClusterConfigErrors(t *testing.T) {
	t.Parallel()
	const db = "database_url: postgres://app@localhost/app\n"
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"empty", db + "cluster:\n", []string{"walflow.yaml:2: cluster: empty; list the NATS servers"}},
		{"no server", db + "cluster:\n  node: a\n", []string{"walflow.yaml:2: cluster: no NATS server: list the servers' URLs"}},
		{"both", db + "cluster:\n  node: a\n  urls: [nats://h:4222]\n  server: {listen: 127.0.0.1:4222}\n", []string{"walflow.yaml:4: cluster.urls: both URLs and Server are set"}},
		{"bad url", db + "cluster:\n  node: a\n  urls: [http://h:4222]\n", []string{`walflow.yaml:4: cluster.urls: "http://h:4222" is not a NATS URL`}},
		{"bad node", db + "cluster:\n  node: my node\n  urls: [nats://h:4222]\n", []string{`walflow.yaml:3: cluster.node: "my node" is not a node name`}},
		{"bad replicas", db + "cluster:\n  node: a\n  urls: [nats://h:4222]\n  replicas: 7\n", []string{"walflow.yaml:5: cluster.replicas: 7 is out of range"}},
		{"replicas not a number", db + "cluster:\n  node: a\n  urls: [nats://h:4222]\n  replicas: three\n", []string{"walflow.yaml:5: cluster.replicas:"}},
		{"ttl too short", db + "cluster:\n  node: a\n  urls: [nats://h:4222]\n  heartbeat: 3s\n", []string{"walflow.yaml:2: cluster: 4s is less than twice Heartbeat"}},
		{"ttl set too short", db + "cluster:\n  node: a\n  urls: [nats://h:4222]\n  node_ttl: 1s\n  heartbeat: 1s\n", []string{"walflow.yaml:5: cluster.node_ttl: 1s is less than twice Heartbeat"}},
		{"bad heartbeat", db + "cluster:\n  node: a\n  urls: [nats://h:4222]\n  heartbeat: often\n", []string{`walflow.yaml:5: cluster.heartbeat: "often" is not a duration`}},
		{"bad sync", db + "cluster:\n  node: a\n  server:\n    listen: 127.0.0.1:4222\n    sync: sometimes\n", []string{`walflow.yaml:6: cluster.server.sync: "sometimes" is neither "always"`}},
		{"lone server replicas", db + "cluster:\n  node: a\n  replicas: 3\n  server:\n    listen: 127.0.0.1:4222\n", []string{"walflow.yaml:4: cluster.replicas: is 3 but the embedded server runs alone"}},
		{"routes without cluster_listen", db + "cluster:\n  node: a\n  server:\n    listen: 127.0.0.1:4222\n    routes: [h:6222]\n", []string{"walflow.yaml:4: cluster.server: is empty but Routes are set"}},
		{"unknown key", db + "cluster:\n  nodes: a\n", []string{"walflow.yaml:3: cluster.nodes: unknown key (did you mean node?)"}},
		{"memory ledger", db + "temporary_slot: true\nledger: {backend: memory}\ncluster:\n  node: a\n  urls: [nats://h:4222]\n", []string{"walflow.yaml:3: ledger.backend: memory, but a cluster keeps its ledger in its JetStream stream"}},
		{"temporary slot", db + "temporary_slot: true\ncluster:\n  node: a\n  urls: [nats://h:4222]\n", []string{"walflow.yaml:2: temporary_slot: true, but a temporary slot is dropped"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := parseConfig("walflow.yaml", []byte(tt.yaml), noEnv)
			if err == nil {
				t.Fatalf("parseConfig succeeded (%+v), want an error with %q", c.Engine.Cluster, tt.want)
			}
			msg, rest := err.Error(), err.Error()
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error\n\t%s\ndoes not contain (in order)\n\t%s", msg, w)
				}
				rest = rest[i+len(w):]
			}
		})
	}
}

// TestExampleClusterConfig loads the commented-out cluster section of
// walflow.example.yaml, uncommented, so it cannot drift from what run accepts.
func TestExampleClusterConfig(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("..", "..", "walflow.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n# cluster:\n")
	if !ok {
		t.Fatal("walflow.example.yaml has no # cluster: section")
	}
	section, _, _ = strings.Cut(section, "\n\n")
	var b strings.Builder
	b.WriteString("cluster:\n")
	for line := range strings.Lines(section) {
		if !strings.HasPrefix(line, "#") {
			t.Fatalf("line %q of the cluster section is not commented out", line)
		}
		b.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "#"), " "))
	}
	c, err := parseConfig("walflow.example.yaml", []byte(b.String()), envOf("DATABASE_URL", "postgres://app@localhost/app"))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if cc := c.Engine.Cluster; cc == nil || cc.NodeName != "node-1" || len(cc.URLs) != 3 || cc.Replicas != 3 {
		t.Errorf("cluster = %+v", c.Engine.Cluster)
	}
}
