package agent_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/testenv/kube"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
)

// TestVerifyLease: two agents in a cluster remember the same repository;
// only the one holding its Lease ferry-verify-<key> verifies and prunes
// it, and when that agent stops the other takes the Lease and the work
// over. The agents run as deploy/'s ServiceAccount, so its RBAC must let
// them hold the Lease.
func TestVerifyLease(t *testing.T) {
	e := startRepo(t)
	c := kube.Start(t)
	installFerry(t, c, e)
	ctx := t.Context()
	tr := &transcript{}

	// The Lease's name is part of the agents' contract with each other:
	// agents of two versions during a rolling upgrade must still contend
	// for one Lease per repository.
	const secret = "ferry-repository"
	sum := sha256.Sum256([]byte(e.repoURL + "\x00" + ferryNS + "\x00" + secret))
	lease := "ferry-verify-" + hex.EncodeToString(sum[:8])
	// What the agent writes into DIR/repos.json once it has replicated
	// into the repository.
	repos, err := json.Marshal([]map[string]string{{"repository": e.repoURL, "secret_namespace": ferryNS, "secret_name": secret}})
	if err != nil {
		t.Fatal(err)
	}

	nodes := []string{"node-a", "node-b"}
	stop := map[string]func(){}
	metrics := map[string]string{}
	for _, node := range nodes {
		drv := reflinkcsi.StartTest(t, reflinkcsi.Config{NodeID: node})
		state := t.TempDir()
		if err := os.WriteFile(filepath.Join(state, "repos.json"), repos, 0o600); err != nil {
			t.Fatal(err)
		}
		metrics[node] = freeAddr(t)
		stop[node] = runAgent(t, tr, agent.Config{
			Kube: true, Kubeconfig: c.ServiceAccountKubeconfig(ferryNS, agentServiceAccount), Namespace: ferryNS, NodeName: node,
			CSIDriver: drv.Config().Endpoint, StateDir: state, MetricsListen: metrics[node], Heartbeat: time.Second,
			VerifyInterval: 300 * time.Millisecond, PruneInterval: 300 * time.Millisecond, DrillInterval: -1, VerifyBytesPerSecond: 1 << 30,
		})
	}
	for _, node := range nodes {
		waitFor(t, 30*time.Second, node+"'s /metrics", func() bool {
			resp, err := http.Get("http://" + metrics[node] + "/metrics")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil
		})
	}
	// runs returns an agent's verify and prune runs so far, whatever
	// their result, and the verify runs that found the repository whole.
	runs := func(node string) (verifies, prunes, ok float64) {
		text := httpGet(t, "http://"+metrics[node]+"/metrics")
		ok, _ = metricValue(text, `ferry_verify_runs_total{result="ok"}`)
		return metricSum(text, "ferry_verify_runs_total"), metricSum(text, "ferry_prune_runs_total"), ok
	}
	holder := func() string {
		l, err := c.Client.CoordinationV1().Leases(ferryNS).Get(ctx, lease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}

	// 1. One of the agents holds the Lease, and verifies and prunes.
	start := time.Now()
	var first string
	waitFor(t, 30*time.Second, "Lease "+lease+" held by an agent that verified and pruned", func() bool {
		first = holder()
		if !slices.Contains(nodes, first) {
			return false
		}
		_, prunes, ok := runs(first)
		return ok >= 1 && prunes >= 1
	})
	other := nodes[0]
	if other == first {
		other = nodes[1]
	}
	t.Logf("%s holds %s and verified after %s", first, lease, time.Since(start).Round(time.Millisecond))

	// 2. For a while (ten verify intervals) the holder keeps verifying and
	// the other agent neither verifies nor prunes.
	before, _, _ := runs(first)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if h := holder(); h != first {
			t.Fatalf("the Lease moved from %s to %q while both agents ran", first, h)
		}
		if v, p, _ := runs(other); v != 0 || p != 0 {
			t.Fatalf("%s does not hold the Lease but ran %v verifications and %v prunes", other, v, p)
		}
	}
	if after, _, _ := runs(first); after <= before {
		t.Fatalf("the holder %s stopped verifying: %v runs, then %v", first, before, after)
	}

	// 3. The holder stops: the other agent takes the Lease and the work.
	stop[first]()
	start = time.Now()
	waitFor(t, 45*time.Second, other+" holding the Lease", func() bool { return holder() == other })
	t.Logf("%s took %s over %s after %s stopped", other, lease, time.Since(start).Round(time.Millisecond), first)
	waitFor(t, 30*time.Second, other+" verifying and pruning", func() bool {
		_, prunes, ok := runs(other)
		return ok >= 1 && prunes >= 1
	})
}
