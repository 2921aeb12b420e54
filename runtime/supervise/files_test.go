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

	// A symbolic link is staged as a copy of what it names now, not as a link that would
	// follow the name later; a set-user-ID binary is copied without the bit.
	real := filepath.Join(dir, "build-"+os.FileMode(0o755).String())
	sym := filepath.Join(dir, "symlink")
	if err := os.Symlink(real, sym); err != nil {
		t.Fatal(err)
	}
	suid := filepath.Join(dir, "suid")
	os.WriteFile(suid, []byte("#!/bin/sh\n"), 0o600)
	if err := os.Chmod(suid, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{sym, suid} {
		tmp, err := stage(dir, src)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := os.Stat(src)
		b, err := os.Lstat(tmp)
		if err != nil || !b.Mode().IsRegular() || os.SameFile(a, b) || b.Mode() != 0o755 {
			t.Errorf("%s staged as %v (%v), want a plain copy of mode 0755", filepath.Base(src), b.Mode(), err)
		}
	}
}

// Installing a build over the stable path that already holds it (a restart, a swap to the same
// build) leaves no staged file behind: renaming a link onto the same file does nothing.
func TestInstallingTheSameBuildLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "build")
	if err := os.WriteFile(src, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(src, 0o755)
	duck := filepath.Join(dir, "d")
	os.Mkdir(duck, 0o700)
	for range 3 {
		tmp, err := stage(duck, src)
		if err != nil {
			t.Fatal(err)
		}
		if err := install(tmp, filepath.Join(duck, binaryName)); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(duck)
	if len(ents) != 1 || ents[0].Name() != binaryName {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("the duck's folder holds %v after three installs of one build, want only %s", names, binaryName)
	}
}
