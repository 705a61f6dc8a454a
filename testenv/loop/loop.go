// Package loop attaches files as loop devices for tests: real block devices.
package loop

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// OptOutEnv, set to 1, makes tests that need loop devices skip, for a
// developer whose machine has none; CI never sets it.
const OptOutEnv = "FERRY_TEST_NO_LOOP"

// Attach attaches path as a loop device and detaches it when the test ends.
// It fails the test when that is impossible (it needs root and losetup).
func Attach(t testing.TB, path string, readOnly bool) string {
	t.Helper()
	if os.Getenv(OptOutEnv) == "1" {
		t.Skip(OptOutEnv + "=1")
	}
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.Command("losetup", append(args, path)...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s (set %s=1 where loop devices cannot be used): %v: %s", path, OptOutEnv, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}
