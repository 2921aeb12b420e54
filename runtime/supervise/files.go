package supervise

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/atomicfile"
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
	// groupName records the running run's process group (the node's file, outside run/), so
	// that a node killed with its duck's helpers still running ends them at its next start.
	groupName = "group"
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

// stage puts src in dir under a new name, as an executable file that stays on disk through a
// crash, and returns its path. The caller renames it over the stable path with install.
//
// A build is never written again once made (a new build is a new file renamed in), so where src
// is on dir's file system, a regular file (not a link to one) of this process's user, readable
// and executable by anyone (a duck may run as another user) and writable by its owner alone,
// without set-user or set-group bits, the new name is a hard link to it: copying and syncing a
// binary of several megabytes took 0.17 to 0.25 s of every node's turn when twenty nodes of a
// hundred swapped at once on one disk. The link is synced like a copy (a sync of a file already
// on disk, as every link of a host's build after the first, costs little).
//
// Otherwise it copies, holding syscall.ForkLock for reading while the file is open for writing,
// so no process forked meanwhile (a duck, go build) inherits the write descriptor, which would
// make exec of the binary fail with "text file busy".
func stage(dir, src string) (string, error) {
	if tmp, err := link(dir, src); err == nil {
		return tmp, nil
	}
	return stageCopy(dir, src)
}

// link stages src as a hard link in dir, when it may be.
func link(dir, src string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", err
	}
	named, err := os.Lstat(src)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	if !named.Mode().IsRegular() || !fi.Mode().IsRegular() || fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 ||
		perm&0o555 != 0o555 || perm&0o022 != 0 || !ok || int(st.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%s is not a plain binary of this process's user that every user may run and only its owner write", src)
	}
	tmp := filepath.Join(dir, binaryName+".new-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.Link(src, tmp); err != nil {
		return "", err
	}
	// The path may have been given another file between the look and the link: the link must
	// be the file looked at.
	if got, err := os.Lstat(tmp); err != nil || !os.SameFile(got, fi) {
		os.Remove(tmp)
		return "", fmt.Errorf("%s changed while it was staged", src)
	}
	// The data only: the link's own metadata (the inode's link count) is made durable with its
	// folder's entry, by install's caller. A full fsync here committed the file system's journal
	// on every link and took 29 ms (median) of each node's turn when twenty of a hundred nodes
	// swapped at once; the data of a host's build is written once, so after the first link
	// there is nothing left to write.
	if err := syscall.Fdatasync(int(in.Fd())); err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// install renames the staged tmp over path and syncs their folder, so that after a power loss
// the path holds the binary the log says the duck runs. A rename onto a link of the same file
// does nothing and leaves tmp (staging the build a duck already runs, at every restart): it is
// removed.
func install(tmp, path string) error {
	if err := place(tmp, path); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(path))
}

// place is install without the folder's sync, which its caller makes later (a swap, once the
// old generation has its signal).
func place(tmp, path string) error {
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	os.Remove(tmp)
	return nil
}

// stageCopy stages a copy of src in dir.
func stageCopy(dir, src string) (string, error) {
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
