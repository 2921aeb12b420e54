package supervise

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/duckraft/duckraft/runtime/duckuser"
)

// Names inside Dir/<id>/.
const (
	binaryName  = "duck"
	prevName    = "duck.prev" // the binary a swap replaced, until the swap is confirmed
	versionName = "version"
	runName     = "run" // the duck's own folder; the next two are in it
	pidName     = "run/pid"
	stateName   = "run/state.json"
	// oldStateName is where the state file was before ducks had a folder
	// of their own; a duck started again takes it from there once.
	oldStateName = "state.json"
)

// nodeDir makes dir, a folder of the node's that a duck must traverse but
// not list or write: with a duck user, group-owned by its group, 0710.
func nodeDir(dir string, u *duckuser.User) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if u == nil {
		return nil
	}
	if err := os.Lchown(dir, os.Geteuid(), int(u.GID)); err != nil {
		return err
	}
	return os.Chmod(dir, 0o710)
}

// duckDir makes dir, the duck's own folder: with a duck user, owned by it,
// 0700. Its parent is the node's and not writable by the duck, so dir
// cannot have been swapped for a link.
func duckDir(dir string, u *duckuser.User) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if u == nil {
		return nil
	}
	if err := os.Lchown(dir, int(u.UID), int(u.GID)); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// ownedBy says whether pid's real user is u (any process when u is nil).
func ownedBy(pid int, u *duckuser.User) bool {
	if u == nil {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(rest)
			return len(f) > 0 && f[0] == strconv.FormatUint(uint64(u.UID), 10)
		}
	}
	return false
}

// stage copies src to a new executable file in dir and returns its path.
// It holds syscall.ForkLock for reading while the file is open for writing,
// so no process forked meanwhile (a duck, go build) inherits the write
// descriptor, which would make exec of the binary fail with "text file
// busy".
func stage(dir, src string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("opening the duck binary: %w; build it first", err)
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil {
		return "", err
	} else if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("duck binary %s is not a regular file", src)
	}
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	out, err := os.CreateTemp(dir, binaryName+".new-*")
	if err != nil {
		return "", err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(0o755)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out.Name())
		return "", fmt.Errorf("copying the duck binary into %s: %w", dir, err)
	}
	return out.Name(), nil
}

// writeFileAtomic replaces path's content by rename, so a duck reading it
// sees the old content or the new, never a part.
func writeFileAtomic(path, content string) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".new-*")
	if err != nil {
		return err
	}
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Chmod(0o644) // the duck reads it, whoever it runs as
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// readPIDFile returns the PID tableflip last wrote to path, or 0.
func readPIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}
