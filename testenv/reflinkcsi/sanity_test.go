package reflinkcsi

import (
	"testing"

	"github.com/ferrydr/ferry/testenv/reflinkcsi/csisanity"
)

// TestSanity runs csi-sanity against the driver with and without
// --controller-publish, each for mount and block access.
func TestSanity(t *testing.T) {
	plain := StartTest(t, Config{})
	publish := StartTest(t, Config{ControllerPublish: true})
	secrets := map[string]string{"password": "sanity-secret-value"}
	var suites []csisanity.Suite
	for _, d := range []struct {
		name string
		drv  *Driver
	}{{"reflinkcsi", plain}, {"reflinkcsi --controller-publish", publish}} {
		for _, access := range []string{"mount", "block"} {
			suites = append(suites, csisanity.Suite{
				Name:       d.name + " " + access,
				Endpoint:   d.drv.Config().Endpoint,
				AccessType: access,
				Secrets:    secrets,
			})
		}
	}
	r := csisanity.Run(t, suites...)
	if r.Passed == 0 {
		t.Fatal("csi-sanity passed no spec")
	}
}
