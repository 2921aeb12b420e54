package owned

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestOwnFolderIsAccepted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := Dir(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("mode %04o, want 0700", fi.Mode().Perm())
	}
	if err := Dir(dir); err != nil {
		t.Fatalf("again: %v", err)
	}
}

func TestSymlinkIsRefused(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(root, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := Dir(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("Dir(symlink) = %v", err)
	}
}

func TestWritableByOthersIsRefused(t *testing.T) {
	for _, mode := range []os.FileMode{0o770, 0o702, 0o777} {
		dir := filepath.Join(t.TempDir(), "data")
		os.Mkdir(dir, 0o700)
		os.Chmod(dir, mode)
		if err := Dir(dir); err == nil || !strings.Contains(err.Error(), "chmod go-w") {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
}

// Folders made above the data folder let a duck user pass through (0711), not list; the data
// folder itself is private. A root node with --data-dir under a folder that did not exist made
// it 0700 and then warned that its ducks could not get through it.
func TestDirMakesItsParentsPassable(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0o022)) // as most shells have it; a umask of 077 closes them
	root := t.TempDir()
	path := filepath.Join(root, "c1", "n1")
	if err := Dir(path); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{filepath.Join(root, "c1"): 0o711, path: 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", p, got, want)
		}
	}
	if err := Dir(path); err != nil {
		t.Fatalf("Dir of a folder that exists: %v", err)
	}
}
