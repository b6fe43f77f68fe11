package cli

import (
	"bytes"
	"regexp"
	"testing"
	"time"

	"github.com/walflow/walflow"
	"github.com/walflow/walflow/cluster"
)

func TestWriteStatusCluster(t *testing.T) {
	t.Parallel()
	since := time.Now().Add(-90 * time.Second).UTC()
	cs := cluster.NewStatus("node-2", []cluster.NodeInfo{
		{Name: "node-1", Role: cluster.RoleLeader, LeaderSince: since, Position: 1200, HTTPAddr: "10.0.0.1:9187", Operators: []string{"post_stats"}},
		{Name: "node-2", Role: cluster.RoleStandby, Position: 1195, Projectors: []string{"search"}},
	}, 1195)
	var b bytes.Buffer
	writeStatus(&b, walflow.Status{Slot: "walflow", SlotExists: true, Cluster: &cs}, statusSource{running: true, where: "http://127.0.0.1:9187/status"})
	for _, re := range []string{
		`streaming +no: this node stands by, node-1 streams the slot`,
		`cluster \(as node node-2 sees it\)`,
		`leader: node-1 since ` + regexp.QuoteMeta(since.Format(time.RFC3339)) + ` \(1m3\ds\)`,
		`node-1 +leader +1200 +0 +10\.0\.0\.1:9187 +operator post_stats\n`,
		`node-2 +standby +1195 +5 +- +projector search\n`,
	} {
		if !regexp.MustCompile(re).MatchString(b.String()) {
			t.Errorf("status does not match %s:\n%s", re, b.String())
		}
	}
}
