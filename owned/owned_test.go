package owned

import (
	"os"
	"path/filepath"
	"strings"
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
