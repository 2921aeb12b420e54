package duckuser

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every folder that stops the duck user is named in one answer: one at a time took a round of
// fixing each (found by following the README as root, with the data folder under ~).
func TestCheckReachNamesEveryFolderInTheWay(t *testing.T) {
	top := t.TempDir()
	outer, inner := filepath.Join(top, "home"), filepath.Join(top, "home", "duckraft")
	if err := os.MkdirAll(inner, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{top, outer, inner} {
		if err := os.Chmod(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(top, 0o711) // traversable: not in the way
	os.Chmod(filepath.Dir(top), 0o711)
	u := &User{Name: "nobody-here", UID: 4000000, GID: 4000000}
	err := u.CheckReach(filepath.Join(inner, "a"))
	if err == nil || !strings.Contains(err.Error(), outer+" (mode 0700") || !strings.Contains(err.Error(), inner+" (mode 0700") ||
		!strings.Contains(err.Error(), "chmod o+x "+outer+" "+inner) || strings.Contains(err.Error(), top+" (mode") {
		t.Fatalf("CheckReach = %v, want both %s and %s named, and not %s", err, outer, inner, top)
	}
	os.Chmod(outer, 0o711)
	os.Chmod(inner, 0o711)
	if err := u.CheckReach(filepath.Join(inner, "a")); err != nil {
		t.Fatalf("with the folders traversable: %v", err)
	}
}
