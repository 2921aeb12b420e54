package supervise

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/duckraft/duckraft/runtime/duckuser"
)

// nobodyUser is the unprivileged user these tests run ducks as; it needs root.
func nobodyUser(t *testing.T) *duckuser.User {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("DUCKRAFT_SKIP_ROOT_TESTS") != "" {
			t.Skip("needs root (ducks run as another user); skipped because DUCKRAFT_SKIP_ROOT_TESTS is set")
		}
		t.Fatal("this test needs root (it runs ducks as nobody): run it as root, or set DUCKRAFT_SKIP_ROOT_TESTS=1 to skip it")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &duckuser.User{Name: "nobody", UID: uint32(uid), GID: uint32(gid)}
}

// reachableDir is a temp folder the duck user can traverse to: t.TempDir's parent is 0700.
func reachableDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "ducks")
}

func procUID(t *testing.T, pid int) uint32 {
	t.Helper()
	fi, err := os.Stat("/proc/" + strconv.Itoa(pid))
	if err != nil {
		t.Fatal(err)
	}
	return fileUID(fi)
}

// A duck run as a duck user starts, swaps (tableflip re-executes the stable path, writes the
// PID file), keeps its state across the swap and a stop, but cannot write its binary, its
// folder or its version file, which the node owns.
func TestDuckUserRunsSwapsAndKeepsState(t *testing.T) {
	u := nobodyUser(t)
	s := newSupervisor(t, Config{Dir: reachableDir(t), User: u})
	spec := startDuck(t, s, "duck-1", "duck", "v1")
	quack(t, spec.Addr, 2)
	st := mustGet(t, s, "duck-1")
	if got := procUID(t, st.PID); got != u.UID {
		t.Fatalf("duck runs as uid %d, want %d", got, u.UID)
	}
	if err := swap(s, "duck-1", "v2", "duck-v2"); err != nil {
		t.Fatal(err)
	}
	after := mustGet(t, s, "duck-1")
	if r := call(t, "GET", spec.Addr, "/"); r.Count != 2 || r.Version != "v2" {
		t.Fatalf("GET / after swap = %+v, want count 2 version v2", r)
	}
	if got := procUID(t, after.PID); got != u.UID {
		t.Fatalf("swapped duck runs as uid %d, want %d", got, u.UID)
	}

	dir := filepath.Join(s.cfg.Dir, "duck-1")
	for path, want := range map[string]os.FileMode{
		s.cfg.Dir:                       0o710,
		dir:                             0o710,
		filepath.Join(dir, binaryName):  0o755,
		filepath.Join(dir, versionName): 0o644,
		filepath.Join(dir, runName):     0o700,
	} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
		owner := uint32(0)
		if path == filepath.Join(dir, runName) {
			owner = u.UID
		}
		if fileUID(fi) != owner {
			t.Errorf("%s belongs to uid %d, want %d", path, fileUID(fi), owner)
		}
	}

	ctx := t.Context()
	if err := s.Stop(ctx, "duck-1"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatalf("no state file after a stop: %v", err)
	}
	if fileUID(fi) != u.UID {
		t.Fatalf("state file belongs to uid %d, want the duck's %d", fileUID(fi), u.UID)
	}
	spec.Binary = bins["duck-v2"]
	if err := s.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if r := call(t, "GET", spec.Addr, "/"); r.Count != 2 {
		t.Fatalf("GET / after a restart = %+v, want count 2 from the state file", r)
	}
}

// A state file saved where it was before ducks had a folder of their own is moved into it.
func TestOldStateFileIsMovedIntoRun(t *testing.T) {
	dir := t.TempDir()
	s := newSupervisor(t, Config{Dir: dir})
	spec := startDuck(t, s, "duck-1", "duck", "v1")
	quack(t, spec.Addr, 3)
	if err := s.Stop(t.Context(), "duck-1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "duck-1", stateName), filepath.Join(dir, "duck-1", oldStateName)); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context(), spec); err != nil {
		t.Fatal(err)
	}
	if r := call(t, "GET", spec.Addr, "/"); r.Count != 3 {
		t.Fatalf("GET / = %+v, want count 3 from the old state file", r)
	}
}

func fileUID(fi os.FileInfo) uint32 {
	return fi.Sys().(*syscall.Stat_t).Uid
}
