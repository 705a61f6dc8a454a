package main

import (
	"strings"
	"testing"
)

// TestRestoreToClusterUsage: a command line restore-to-cluster cannot act
// on fails with exit 2 and one line saying what is wrong, before any
// cluster is asked anything. Every case names a kubeconfig that does not
// exist, so a line the checks let through fails with exit 1 instead.
func TestRestoreToClusterUsage(t *testing.T) {
	const kubeconfig = "/nonexistent/kubeconfig"
	repo := []string{"FERRY_REPO=s3://s3.zone-a.example/ferry-dr,s3://s3.zone-b.example/ferry-dr,s3://s3.zone-c.example/ferry-dr"}
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"no namespace", repo, []string{"latest", "--from", "app/data", "--pvc", "data"},
			"ferry: restore-to-cluster needs --namespace and --pvc: the claim to create"},
		{"no pvc", repo, []string{"latest", "--from", "app/data", "--namespace", "restored"},
			"ferry: restore-to-cluster needs --namespace and --pvc: the claim to create"},
		{"latest of nothing", repo, []string{"latest", "--namespace", "restored", "--pvc", "data"},
			`ferry: "latest" needs --from NAMESPACE/PVC or --name SERIES: the latest of what?`},
		{"from without a slash", repo, []string{"latest", "--from", "data", "--namespace", "restored", "--pvc", "data"},
			`ferry: --from "data": want NAMESPACE/PVC`},
		{"from without a namespace", repo, []string{"latest", "--from", "/data", "--namespace", "restored", "--pvc", "data"},
			`ferry: --from "/data": want NAMESPACE/PVC`},
		{"from without a pvc", repo, []string{"latest", "--from", "app/", "--namespace", "restored", "--pvc", "data"},
			`ferry: --from "app/": want NAMESPACE/PVC`},
		{"no snapshot", repo, []string{"--from", "app/data", "--namespace", "restored", "--pvc", "data"},
			"ferry: restore-to-cluster needs one SNAPSHOT (an ID, a prefix of one, or latest)"},
		{"bad volume mode", repo, []string{"latest", "--from", "app/data", "--namespace", "restored", "--pvc", "data", "--volume-mode", "raw"},
			`ferry: --volume-mode "raw": want Filesystem or Block`},
		{"no repository", []string{"FERRY_REPO="}, []string{"latest", "--from", "app/data", "--namespace", "restored", "--pvc", "data"},
			"ferry: no repository: use --repo or set FERRY_REPO"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := ferry(t, c.env, append([]string{"restore-to-cluster", "--kubeconfig", kubeconfig}, c.args...)...)
			expectOneLine(t, r, exitUsage, c.want)
		})
	}

	// The same lines made right get past the checks, to the kubeconfig.
	for _, args := range [][]string{
		{"latest", "--from", "app/data", "--namespace", "restored", "--pvc", "data"},
		{"latest", "--name", "db", "--namespace", "restored", "--pvc", "data", "--volume-mode", "Block"},
		{"4f1a", "--namespace", "restored", "--pvc", "data"},
	} {
		r := ferry(t, repo, append([]string{"restore-to-cluster", "--kubeconfig", kubeconfig}, args...)...)
		if r.code != exitError || !strings.HasPrefix(r.stderr, "ferry: kubeconfig "+kubeconfig+": ") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and one line about the kubeconfig", args, r.code, r.stderr, exitError)
		}
	}
}
