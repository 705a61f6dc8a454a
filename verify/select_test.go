package verify

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/transport/pack"
)

// TestSelectPacksCoversAll checks, for every percentage and a range of
// repository sizes, that ceil(100/N) successive selections cover every pack.
func TestSelectPacksCoversAll(t *testing.T) {
	for packs := 1; packs <= 40; packs++ {
		all := make([]pack.ID, packs)
		for i := range all {
			all[i][0], all[i][1] = byte(i>>8), byte(i)
		}
		for pct := 1; pct <= 100; pct++ {
			seen := map[pack.ID]bool{}
			cursor := ""
			runs := (100 + pct - 1) / pct
			for range runs {
				sel, _ := selectPacks(all, cursor, pct)
				for _, id := range sel {
					seen[id] = true
				}
				cursor = sel[len(sel)-1].String()
			}
			if len(seen) != packs {
				t.Fatalf("%d packs, %d%%: %d runs covered %d", packs, pct, runs, len(seen))
			}
		}
	}
	if sel, _ := selectPacks(nil, "", 50); len(sel) != 0 {
		t.Fatal("selected from nothing")
	}
}

func TestRotationStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "b", "state.json")
	st, err := loadRotation(path, "repo1")
	if err != nil || st.Cursor != "" {
		t.Fatalf("missing state file: %+v %v", st, err)
	}
	st.Cursor = "abcd"
	if err := st.save(path); err != nil {
		t.Fatal(err)
	}
	if got, err := loadRotation(path, "repo1"); err != nil || got.Cursor != "abcd" {
		t.Fatalf("reloaded: %+v %v", got, err)
	}
	if got, err := loadRotation(path, "repo2"); err != nil || got.Cursor != "" || got.RepoID != "repo2" {
		t.Fatalf("another repository's state must not be used: %+v %v", got, err)
	}
	if err := os.WriteFile(path, []byte("{torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := loadRotation(path, "repo1"); err != nil || got.Cursor != "" {
		t.Fatalf("a torn state file should start over: %+v %v", got, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("save left temporary files: %v", entries)
	}
}
