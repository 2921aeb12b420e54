package supervise

import (
	"os"
	"path/filepath"
	"testing"
)

// A build every user may run is linked into the duck's folder, not copied; one only its owner
// may read, or that others may write, is copied, with the mode a duck of another user can run.
func TestStageLinksWhatMayBeShared(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		mode   os.FileMode
		linked bool
	}{{0o755, true}, {0o555, true}, {0o700, false}, {0o775, false}} {
		src := filepath.Join(dir, "build-"+c.mode.String())
		if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(src, c.mode); err != nil {
			t.Fatal(err)
		}
		tmp, err := stage(dir, src)
		if err != nil {
			t.Fatalf("%s: %v", c.mode, err)
		}
		a, _ := os.Stat(src)
		b, err := os.Stat(tmp)
		if err != nil {
			t.Fatal(err)
		}
		if os.SameFile(a, b) != c.linked {
			t.Errorf("%s: linked %v, want %v", c.mode, os.SameFile(a, b), c.linked)
		}
		if !c.linked && b.Mode().Perm() != 0o755 {
			t.Errorf("%s: the copy has mode %s, want 0755", c.mode, b.Mode().Perm())
		}
		got, _ := os.ReadFile(tmp)
		if string(got) != "#!/bin/sh\n" {
			t.Errorf("%s: staged %q", c.mode, got)
		}
	}
	if _, err := stage(dir, filepath.Join(dir, "missing")); err == nil {
		t.Error("staged a binary that does not exist")
	}
}
