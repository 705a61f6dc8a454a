package xfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
)

// tools maps each command the test environment runs to the Debian package
// that ships it.
var tools = map[string]string{
	"mkfs.xfs":  "xfsprogs",
	"mkfs.ext4": "e2fsprogs",
	"losetup":   "util-linux",
	"blkid":     "util-linux",
	"mount":     "mount",
}

// EnsureTools installs, with apt-get, the Debian packages of the commands
// the loop-mounted XFS and the test CSI driver run (mkfs.xfs, mkfs.ext4,
// losetup, blkid, mount), when any is missing. It needs root and apt-get
// only when something is missing.
func EnsureTools(ctx context.Context) error { return EnsureCommands(ctx, tools) }

// EnsureCommands installs, with apt-get, the Debian package of each command
// in cmds (command -> package) that is not on the PATH.
func EnsureCommands(ctx context.Context, cmds map[string]string) error {
	var missing []string
	seen := map[string]bool{}
	for cmd, pkg := range cmds {
		if _, err := exec.LookPath(cmd); err != nil && !seen[pkg] {
			seen[pkg] = true
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing Debian packages %s and not root to install them: run apt-get install -y %s as root",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("missing packages %s and no apt-get to install them", strings.Join(missing, ", "))
	}
	// A lock timeout, because parallel test binaries may all get here.
	install := append([]string{"-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends"}, missing...)
	if err := apt(ctx, install...); err != nil {
		// A fresh machine may have no package lists yet.
		if uerr := apt(ctx, "-o", "DPkg::Lock::Timeout=300", "update"); uerr != nil {
			return fmt.Errorf("install %s: %w (apt-get update: %v)", strings.Join(missing, " "), err, uerr)
		}
		if err := apt(ctx, install...); err != nil {
			return fmt.Errorf("install %s: %w", strings.Join(missing, " "), err)
		}
	}
	for cmd := range cmds {
		if _, err := exec.LookPath(cmd); err != nil {
			return fmt.Errorf("%s still missing after apt-get install: %w", cmd, err)
		}
	}
	return nil
}

func apt(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("apt-get %s: %w: %s", strings.Join(args, " "), err, lines[len(lines)-1])
	}
	return nil
}
