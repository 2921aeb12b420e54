package systemtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// SkipRootTestsEnv, when set, skips the tests that need root (see README); without it they fail
// when not run as root, so that a CI without root does not pass them silently.
const skipRootTestsEnv = "DUCKRAFT_SKIP_ROOT_TESTS"

func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Getuid() == 0 {
		return
	}
	if os.Getenv(skipRootTestsEnv) != "" {
		t.Skipf("needs root (%s); skipped because %s is set", why, skipRootTestsEnv)
	}
	t.Fatalf("this test needs root (%s): run it as root, or set %s=1 to skip it", why, skipRootTestsEnv)
}

// nobody is the unprivileged user the tests that need one run as.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

// privateTo makes a folder owned by cred's user, for a node running as that user.
func privateTo(t *testing.T, cred *syscall.Credential, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runAs runs a command as cred's user and returns what it printed.
func runAs(cred *syscall.Credential, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A duck runs as its node's user, and a process of the same user could read the node's
// environment and memory through /proc, where the cookie is (DUCKRAFT_COOKIE stays in the
// kernel's copy of the environment after Unsetenv). The node makes itself not dumpable, so such a
// process is refused both; another process of that user, as a control, is readable.
func TestNodeMemoryAndEnvironmentAreClosedToItsUser(t *testing.T) {
	needRoot(t, "it runs a node and a duck-like process as the unprivileged user nobody")
	root, err := os.MkdirTemp("", "duckraft-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	nodeBin := filepath.Join(root, "duckraft")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nodeBin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	home := privateTo(t, nobody, filepath.Join(root, "home"))
	cookie := randomCookie()
	n := startCommandAs(t, nobody, cleanEnv(home, "DUCKRAFT_COOKIE="+cookie), nodeBin, "start", "--name", "a",
		"--data-dir", filepath.Join(home, "a"), "--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	if _, _, exited := n.ready(t); exited {
		t.Fatalf("node as nobody exited (%v):\n%s", n.err, n.out.String())
	}
	pid := strconv.Itoa(n.cmd.Process.Pid)

	// The control: a process of the same user that did not close itself is readable, so the
	// refusals below are the node's doing.
	other := startCommandAs(t, nobody, []string{"DUCKRAFT_COOKIE=control"}, "sleep", "60")
	out, err := runAs(nobody, "cat", "/proc/"+strconv.Itoa(other.cmd.Process.Pid)+"/environ")
	if err != nil || !strings.Contains(out, "control") {
		t.Fatalf("control: nobody cannot read its own sleep's environment (%v): %q; this test would not see a leak", err, out)
	}

	for _, f := range []string{"environ", "mem", "fd/0"} {
		out, err := runAs(nobody, "head", "-c", "4096", "/proc/"+pid+"/"+f)
		if err == nil || strings.Contains(out, cookie) {
			t.Errorf("a process of the node's user read /proc/%s/%s (err %v): %q", pid, f, err, out)
		}
	}
}

// A data folder someone else made first (the README once put it in /tmp, where any user can)
// is refused, as are one reached through a symbolic link and one others may write: the node
// runs the binaries it keeps there.
func TestPlantedDataFolderIsRefused(t *testing.T) {
	home := t.TempDir()
	env := cleanEnv(home, "DUCKRAFT_COOKIE="+randomCookie())
	start := func(dir string) string {
		t.Helper()
		n := startRaw(t, env, "start", "--name", "a", "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
		if _, _, exited := n.ready(t); !exited {
			t.Fatalf("a node started on the data folder %s:\n%s", dir, n.out.String())
		}
		return n.out.String()
	}

	real := filepath.Join(home, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(home, "link")
	os.Symlink(real, link)
	if out := start(link); !strings.Contains(out, "symbolic link") {
		t.Errorf("data folder through a link:\n%s", out)
	}
	open := filepath.Join(home, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	if out := start(open); !strings.Contains(out, "writable by its group or others") {
		t.Errorf("data folder others may write:\n%s", out)
	}

	needRoot(t, "planting a folder as another user needs root")
	planted := privateTo(t, nobody, filepath.Join(home, "planted"))
	if out := start(planted); !strings.Contains(out, "belongs to uid 65534") {
		t.Errorf("data folder another user made:\n%s", out)
	}
}
