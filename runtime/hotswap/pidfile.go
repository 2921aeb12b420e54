package hotswap

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// pidFile names this process in the duck's PID file when it is Ready. The
// file that replaces the PID file is written ahead, beside the rest of the
// start (a new generation spends that time waiting for its state), so that
// Ready only renames it: tableflip writes the whole file inside Ready, and
// that took 0.35 ms on the test machine's ext4 (create, write, close and
// rename), a tenth of a swap under load.
//
// The rename alone took 0.1 ms there, and up to 0.4 under load, most of it
// ext4 freeing the replaced file's inode (on a file system mounted with
// discard, waiting for the disk's discard of its block) and allocating the
// new file's delayed block. Both are taken off the path: the new file's
// block is allocated when it is made (fallocate), and the PID file gets a
// second name (prev), so the rename only drops a link; prev is removed once
// the previous generation has exited. The rename then took 12 us instead of
// 110 (BenchmarkPIDFileRename).
type pidFile struct {
	path string
	made chan struct{}
	tmp  string // the file written ahead, until it is renamed or removed
	prev string // the second name of the PID file being replaced, until dropped
	err  error
	drop sync.Once
}

// preparePIDFile starts writing the replacement for the PID file at path
// ("" for none) and returns at once.
func preparePIDFile(path string) *pidFile {
	p := &pidFile{path: path, made: make(chan struct{})}
	if path == "" {
		close(p.made)
		return p
	}
	go func() {
		defer close(p.made)
		removeStalePIDTemps(path)
		p.tmp, p.err = writePIDTemp(path)
		if p.err == nil {
			p.prev = linkPrev(path)
		}
	}()
	return p
}

// prevInfix names the PID file's second name: <path>.prev.<PID of the generation that made it>.
const prevInfix = ".prev."

// linkPrev gives the PID file a second name, so that replacing it does not free its inode on
// Ready's path, and returns that name; "" if there is no PID file yet or the link fails (the
// rename then frees the inode, as before).
func linkPrev(path string) string {
	prev := path + prevInfix + strconv.Itoa(os.Getpid())
	os.Remove(prev)
	if os.Link(path, prev) != nil {
		return ""
	}
	return prev
}

// removeStalePIDTemps removes the files a generation that died before Ready wrote ahead (a
// version that crashed in its setup, one the supervisor killed at its deadline): without this
// each such swap left one beside the PID file. A file is stale when the process it names is
// gone, or it is empty and over a minute old (a write cut short). A second name of the PID file
// (linkPrev) is stale when the generation that made it is gone.
func removeStalePIDTemps(path string) {
	files, _ := filepath.Glob(path + ".*")
	for _, f := range files {
		if rest, ok := strings.CutPrefix(f, path+prevInfix); ok {
			if pid, err := strconv.Atoi(rest); err == nil && pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH {
				os.Remove(f)
			}
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(string(b)); err == nil && pid > 0 {
			if syscall.Kill(pid, 0) == syscall.ESRCH {
				os.Remove(f)
			}
			continue
		}
		if fi, err := os.Stat(f); err == nil && len(b) == 0 && time.Since(fi.ModTime()) > time.Minute {
			os.Remove(f)
		}
	}
}

// publish renames the file written ahead over the PID file: from then on it
// names this process.
func (p *pidFile) publish() error {
	<-p.made
	if p.path == "" {
		return nil
	}
	if p.err != nil {
		return p.err
	}
	if err := os.Rename(p.tmp, p.path); err != nil {
		return err
	}
	p.tmp = ""
	return nil
}

// dropPrev removes the PID file's second name, once the previous generation has exited: the
// inode it kept is freed then, off the swap's path.
func (p *pidFile) dropPrev() {
	<-p.made
	p.drop.Do(func() {
		if p.prev != "" {
			os.Remove(p.prev)
		}
	})
}

// discard removes the file written ahead, unless it was published, and the second name.
func (p *pidFile) discard() {
	<-p.made
	if p.tmp != "" {
		os.Remove(p.tmp)
		p.tmp = ""
	}
	p.dropPrev()
}

// writePIDTemp writes this process's PID into a new file beside path, to be
// renamed over it (so that a reader never sees a PID file half written).
func writePIDTemp(path string) (string, error) {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, name+".*")
	if err != nil {
		return "", err
	}
	// The file's block allocated now rather than by the rename (ext4 allocates a delayed block
	// of a file renamed over another); without fallocate (EOPNOTSUPP, not Linux) the rename
	// does it.
	allocateAhead(f)
	_, err = f.WriteString(strconv.Itoa(os.Getpid()))
	if err = errors.Join(err, f.Close()); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}
