#!/usr/bin/env bash
# Ferry end to end with no server: a repository over three local directories
# (standing for three zones), a real ext4 volume image full of real files.
# init, backup, change the volume, back up again (only the change is stored),
# restore and compare, lose a whole target, restore again and compare.
set -euo pipefail
FERRY=${FERRY:-bin/ferry}
FERRY=$(realpath "$FERRY")
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

export FERRY_PASSWORD="demo-only-password"
export FERRY_CACHE_DIR="$work/cache" # the local index cache goes with the rest
export FERRY_REPO="file://$work/zone-a,file://$work/zone-b,file://$work/zone-c"
mkdir zone-a zone-b zone-c

step "A 1 GiB volume image: ext4 holding the Go source tree (real files, mostly empty space)"
src=$(go env GOROOT)/src
run mkfs.ext4 -q -F -d "$src" -L demo vol.img 1G
ls -ls --block-size=M vol.img

step "Create a repository: erasure 2+1 over three targets"
run "$FERRY" init --erasure 2+1

step "First backup"
run "$FERRY" backup --name demo --json vol.img | tee b1.json
cp --sparse=always vol.img v1.img

step "Change the volume: add a 24 MiB file and remove a file (debugfs, no mount needed)"
head -c $((24 << 20)) /dev/urandom > new.bin
debugfs -w -R "write new.bin /new.bin" vol.img >/dev/null 2>&1
debugfs -w -R "rm /cmd/go/alldocs.go" vol.img >/dev/null 2>&1

step "Second backup: only what changed is stored"
run "$FERRY" backup --name demo --json vol.img | tee b2.json
run "$FERRY" snapshots

step "Restore the latest snapshot and compare"
run "$FERRY" restore latest --target restored.img
run cmp vol.img restored.img && echo "identical to the volume"
ls -ls --block-size=M restored.img

step "Lose a whole target (zone-b) and restore the first snapshot"
run rm -rf zone-b
first=$(sed -n 's/.*"snapshot_id": "\([0-9a-f]*\)".*/\1/p' b1.json)
run "$FERRY" restore "$first" --target restored-v1.img
run cmp v1.img restored-v1.img && echo "identical to the first version, with one target gone"

step "Done"
