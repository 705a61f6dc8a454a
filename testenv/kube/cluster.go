package kube

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// NoKubeEnv, set to 1, makes Start skip the test instead of failing when
// the binaries are not already built or a cluster cannot start. It is a
// developer opt-out; CI must not set it.
const NoKubeEnv = "FERRY_TEST_NO_KUBE"

// adminUser is the user of Cluster.Config and Cluster.Kubeconfig, in the
// group system:masters.
const adminUser = "ferry-test-admin"

const buildTimeout = 40 * time.Minute

// Cluster is one Kubernetes control plane on loopback: etcd,
// kube-apiserver and kube-controller-manager, with nothing shared with
// another Cluster. It has no nodes: pods are never scheduled.
type Cluster struct {
	Name       string
	Kubeconfig string       // admin kubeconfig file: a user in system:masters
	Config     *rest.Config // from Kubeconfig
	Client     kubernetes.Interface
	Dynamic    dynamic.Interface
	LogDir     string // one <program>.log per process, tails printed when the test fails

	t    testing.TB
	bins *Binaries
	dir  string
	pki  *pki

	mapper *restmapper.DeferredDiscoveryRESTMapper // of Apply

	mu                 sync.Mutex
	procs              []*process // in start order
	snapshotController *process   // started by the first StartSnapshotter
}

// Option changes how Start sets up a cluster.
type Option func(*Cluster)

// Name names the cluster ("primary", "dr") in its kubeconfig, its CA and
// the test's log. The default is "kube".
func Name(name string) Option { return func(c *Cluster) { c.Name = name } }

// Start builds the binaries if needed, starts a cluster on free loopback
// ports with its data in the test's temporary directory, installs the
// VolumeSnapshot CRDs, and returns once the default namespace and its
// service account exist. The cluster stops when the test ends; if the test
// failed, the end of each process's log is printed first. On failure Start
// calls t.Fatal, or t.Skip when FERRY_TEST_NO_KUBE=1.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	c := &Cluster{Name: "kube", t: t}
	for _, o := range opts {
		o(c)
	}
	c.bins = binaries(t)
	c.dir = t.TempDir()
	c.LogDir = filepath.Join(c.dir, "logs")
	t.Cleanup(func() {
		if t.Failed() {
			c.printLogs()
		}
		c.Stop()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*startTimeout)
	defer cancel()
	start := time.Now()
	if err := c.start(ctx); err != nil {
		failStart(t, "cluster %s: %v", c.Name, err)
	}
	t.Logf("cluster %s: %s, ready in %s, logs in %s", c.Name, c.Config.Host, time.Since(start).Round(time.Millisecond), c.LogDir)
	return c
}

// binaries returns the cached binaries, building them if needed.
func binaries(t testing.TB) *Binaries {
	t.Helper()
	if bins := Cached(); bins != nil {
		return bins
	}
	if os.Getenv(NoKubeEnv) == "1" {
		t.Skipf("the Kubernetes binaries are not built (run: go run ./testenv/cmd/ferry-testenv install); skipped: %s=1", NoKubeEnv)
	}
	t.Logf("building the Kubernetes test binaries into the cache, once per machine (minutes)")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	bins, err := Install(ctx, testLogWriter{t})
	if err != nil {
		failStart(t, "%v", err)
	}
	return bins
}

func failStart(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(NoKubeEnv) == "1" {
		t.Skipf("%s (skipped: %s=1)", msg, NoKubeEnv)
	}
	t.Fatalf("%s\n(set %s=1 to skip Kubernetes tests on a developer machine)", msg, NoKubeEnv)
}

func (c *Cluster) start(ctx context.Context) error {
	for _, d := range []string{c.LogDir, filepath.Join(c.dir, "pki"), filepath.Join(c.dir, "etcd")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	var err error
	if c.pki, err = newPKI(filepath.Join(c.dir, "pki"), c.Name); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	etcd, err := c.startEtcd(ctx)
	if err != nil {
		return err
	}
	if err := c.startAPIServer(ctx, etcd); err != nil {
		return err
	}
	kcm, err := c.startControllerManager()
	if err != nil {
		return err
	}
	if err := c.installSnapshotCRDs(ctx); err != nil {
		return err
	}
	// The controller manager creates the default namespace's service
	// account once it runs.
	return kcm.waitReady(ctx, func(ctx context.Context) error {
		_, err := c.Client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// add records a started process for Stop and the logs.
func (c *Cluster) add(p *process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = append(c.procs, p)
}

// startEtcd starts etcd and returns its client URL.
func (c *Cluster) startEtcd(ctx context.Context) (string, error) {
	health := &http.Client{Timeout: 2 * time.Second}
	p, ports, err := launch(ctx, "etcd", c.logFile("etcd"), c.bins.Etcd, 2,
		func(ports []int) []string {
			client, peer := "http://"+loopback(ports[0]), "http://"+loopback(ports[1])
			return []string{
				"--name=" + c.Name,
				"--data-dir=" + filepath.Join(c.dir, "etcd"),
				"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
				"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
				"--initial-cluster=" + c.Name + "=" + peer,
				"--unsafe-no-fsync", // a test's data need not survive a crash of the machine
				"--log-level=warn",
			}
		},
		func(ctx context.Context, ports []int) error {
			return getOK(ctx, health, "http://"+loopback(ports[0])+"/health")
		})
	if err != nil {
		return "", err
	}
	c.add(p)
	return "http://" + loopback(ports[0]), nil
}

func (c *Cluster) startAPIServer(ctx context.Context, etcd string) error {
	p, _, err := launch(ctx, "kube-apiserver", c.logFile("kube-apiserver"), c.bins.APIServer, 1,
		func(ports []int) []string {
			return []string{
				"--etcd-servers=" + etcd,
				"--bind-address=127.0.0.1",
				"--advertise-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(ports[0]),
				"--tls-cert-file=" + c.pki.servingCert,
				"--tls-private-key-file=" + c.pki.servingKey,
				"--client-ca-file=" + c.pki.caFile,
				"--authorization-mode=Node,RBAC",
				"--allow-privileged=true", // CSI node plugins and the Ferry agent need privileged pods, as on real clusters
				"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
				"--service-account-key-file=" + c.pki.saPub,
				"--service-account-signing-key-file=" + c.pki.saKey,
				// Services get addresses from this range, but there are no
				// nodes or proxies: nothing is ever sent to them.
				"--service-cluster-ip-range=10.0.0.0/24",
				// No endpoints for the kubernetes Service: the loopback
				// address is not a valid endpoint, and no pod needs one.
				"--endpoint-reconciler-type=none",
				// Faster start and less work for two cores: no flow-control
				// bootstrap objects to create.
				"--enable-priority-and-fairness=false",
				"--profiling=false",
			}
		},
		func(ctx context.Context, ports []int) error {
			if host := "https://" + loopback(ports[0]); c.Config == nil || c.Config.Host != host {
				if err := c.connect(host); err != nil {
					return err
				}
			}
			body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			if err != nil {
				return fmt.Errorf("readyz: %w: %s", err, body)
			}
			return nil
		})
	if err != nil {
		return err
	}
	c.add(p)
	return nil
}

// connect writes the admin kubeconfig for the API server at host and
// makes the clients from it.
func (c *Cluster) connect(host string) error {
	cert, key, err := c.pki.clientCert(adminUser, "system:masters")
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := c.writeKubeconfig(c.Kubeconfig, host, adminUser, cert, key); err != nil {
		return err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return err
	}
	// Tests create objects in bursts; client-go's default of 5 per second
	// would make them wait.
	c.Config.QPS, c.Config.Burst = 100, 200
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		return err
	}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery()))
	return nil
}

func (c *Cluster) writeKubeconfig(file, host, user string, cert, key []byte) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: c.pki.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: user}
	cfg.CurrentContext = c.Name
	return clientcmd.WriteToFile(*cfg, file)
}

// controllers are the kube-controller-manager controllers a cluster runs:
// PersistentVolumeClaims bind, namespaces and owned objects are deleted,
// service accounts get tokens and the root CA, aggregated ClusterRoles
// (admin, edit, view) get their rules.
var controllers = []string{
	"persistentvolume-binder-controller",
	"persistentvolume-protection-controller",
	"persistentvolumeclaim-protection-controller",
	"namespace-controller",
	"garbage-collector-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
	"clusterrole-aggregation-controller",
}

func (c *Cluster) startControllerManager() (*process, error) {
	const user = "system:kube-controller-manager" // bound to its ClusterRole by RBAC's bootstrap policy
	cert, key, err := c.pki.clientCert(user)
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(c.dir, "kube-controller-manager.kubeconfig")
	if err := c.writeKubeconfig(kubeconfig, c.Config.Host, user, cert, key); err != nil {
		return nil, err
	}
	p, err := startProcess("kube-controller-manager", c.logFile("kube-controller-manager"), c.bins.ControllerManager,
		"--kubeconfig="+kubeconfig,
		"--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0", // no health or metrics endpoint: one port less per cluster
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+c.pki.saKey,
		"--root-ca-file="+c.pki.caFile,
		// The binder's periodic resync, 15s by default, is what retries
		// a claim that could not bind yet.
		"--pvclaimbinder-sync-period=1s",
	)
	if err != nil {
		return nil, err
	}
	c.add(p)
	return p, nil
}

func (c *Cluster) logFile(name string) string { return filepath.Join(c.LogDir, name+".log") }

// Stop stops the cluster's processes, the last started first. It is safe
// to call more than once. A process that had exited by itself fails the
// test.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.procs) - 1; i >= 0; i-- {
		if err := c.procs[i].stop(); err != nil {
			c.t.Errorf("cluster %s: %v", c.Name, err)
		}
	}
}

func (c *Cluster) printLogs() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		c.t.Logf("cluster %s: end of %s:\n%s", c.Name, p.logFile, p.logTail())
	}
}

// ServiceAccountConfig returns a copy of Config that impersonates the
// service account namespace/name: requests are authorised as they would be
// for the service account's own token (its user, its groups and
// system:authenticated), so a test sees exactly what RBAC grants it.
func (c *Cluster) ServiceAccountConfig(namespace, name string) *rest.Config {
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + namespace + ":" + name}
	return cfg
}

// ServiceAccountKubeconfig is ServiceAccountConfig as a kubeconfig file,
// for a program that takes one.
func (c *Cluster) ServiceAccountKubeconfig(namespace, name string) string {
	c.t.Helper()
	return c.KubeconfigAs("system:serviceaccount:"+namespace+":"+name, "system:serviceaccounts", "system:serviceaccounts:"+namespace)
}

// KubeconfigAs writes a kubeconfig file that impersonates user in groups
// (and system:authenticated), as kubectl's --as and --as-group do, with
// the admin's credentials, and returns its name: a program given it can
// do exactly what RBAC grants that identity.
func (c *Cluster) KubeconfigAs(user string, groups ...string) string {
	c.t.Helper()
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		c.t.Fatal(err)
	}
	auth := cfg.AuthInfos[cfg.Contexts[cfg.CurrentContext].AuthInfo]
	auth.Impersonate, auth.ImpersonateGroups = user, groups
	f, err := os.CreateTemp(c.dir, "as-*.kubeconfig")
	if err != nil {
		c.t.Fatal(err)
	}
	f.Close()
	if err := clientcmd.WriteToFile(*cfg, f.Name()); err != nil {
		c.t.Fatal(err)
	}
	return f.Name()
}

// getOK GETs url and returns nil for a 200 response.
func getOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return nil
}

// testLogWriter sends what is written to it to the test's log.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
