// Package csisanity runs the csi-sanity suite
// (github.com/kubernetes-csi/csi-test/v5/pkg/sanity) as a Go test against
// one or more CSI endpoints: the test CSI driver, and anything that must
// behave like it, such as Ferry's CSI hook in front of it.
//
// Ginkgo runs one suite per process, so a test binary calls Run once,
// with every endpoint it wants checked.
package csisanity

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
)

// DefaultVolumeSize is the size of the volumes the suite creates when a
// Suite does not say: large enough for an ext4 with a journal, small
// enough to format in a moment.
const DefaultVolumeSize = 32 << 20

// Suite is one run of csi-sanity against an endpoint.
type Suite struct {
	Name       string // names the run in the report
	Endpoint   string // unix:///path/to/csi.sock, serving every CSI service
	AccessType string // "mount" (the default) or "block"
	VolumeSize int64  // DefaultVolumeSize if 0
	// Secrets, if set, is sent as the secrets of every call that takes
	// some, so that a test can check they never reach a log.
	Secrets map[string]string
}

// Result counts the specs of a Run.
type Result struct {
	Passed, Failed, Skipped, Pending int
	// SkipReasons maps each reason a spec gave for skipping to how many
	// specs gave it.
	SkipReasons map[string]int
}

func (r Result) String() string {
	reasons := make([]string, 0, len(r.SkipReasons))
	for why, n := range r.SkipReasons {
		reasons = append(reasons, fmt.Sprintf("%dx %s", n, why))
	}
	sort.Strings(reasons)
	return fmt.Sprintf("%d passed, %d failed, %d skipped, %d pending; skipped: %s",
		r.Passed, r.Failed, r.Skipped, r.Pending, strings.Join(reasons, "; "))
}

var result Result

// The report of the whole run, taken once Ginkgo is done.
var _ = ginkgo.ReportAfterSuite("csisanity summary", func(rep ginkgo.Report) {
	result = Result{SkipReasons: map[string]int{}}
	for _, s := range rep.SpecReports {
		if s.LeafNodeType != types.NodeTypeIt {
			continue
		}
		switch s.State {
		case types.SpecStatePassed:
			result.Passed++
		case types.SpecStateSkipped:
			result.Skipped++
			result.SkipReasons[s.Failure.Message]++
		case types.SpecStatePending:
			result.Pending++
		default:
			result.Failed++
		}
	}
})

// Run runs csi-sanity once for each suite, in one Ginkgo run, and returns
// the counts. Failed specs fail t. Call it at most once per test binary.
func Run(t *testing.T, suites ...Suite) Result {
	t.Helper()
	var contexts []*sanity.TestContext
	for _, s := range suites {
		cfg := sanity.NewTestConfig()
		dir := t.TempDir()
		cfg.Address = s.Endpoint
		cfg.TargetPath = filepath.Join(dir, "target")
		cfg.StagingPath = filepath.Join(dir, "staging")
		cfg.TestVolumeSize = DefaultVolumeSize
		if s.VolumeSize > 0 {
			cfg.TestVolumeSize = s.VolumeSize
		}
		if s.AccessType != "" {
			cfg.TestVolumeAccessType = s.AccessType
		}
		if s.Secrets != nil {
			cfg.SecretsFile = writeSecrets(t, dir, s.Secrets)
		}
		ginkgo.Describe(s.Name, func() {
			contexts = append(contexts, sanity.GinkgoTest(&cfg))
		})
	}
	gomega.RegisterFailHandler(ginkgo.Fail)
	suiteCfg, reporterCfg := ginkgo.GinkgoConfiguration()
	ginkgo.RunSpecs(t, "csi-sanity", suiteCfg, reporterCfg)
	for _, sc := range contexts {
		sc.Finalize()
	}
	t.Logf("csi-sanity: %s", result)
	return result
}

// writeSecrets writes a secrets file that gives every call the same
// secrets. JSON is YAML, and CSISecrets' YAML keys are its field names.
func writeSecrets(t *testing.T, dir string, secrets map[string]string) string {
	var all sanity.CSISecrets
	v := reflect.ValueOf(&all).Elem()
	for i := range v.NumField() {
		v.Field(i).Set(reflect.ValueOf(secrets))
	}
	b, err := json.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
