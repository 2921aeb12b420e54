package hotswap

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// pidFile names this process in the duck's PID file when it is Ready. The
// file that replaces the PID file is written ahead, beside the rest of the
// start (a new generation spends that time waiting for its state), so that
// Ready only renames it: tableflip writes the whole file inside Ready, and
// that took 0.35 ms on the test machine's ext4 (create, write, close and
// rename), a tenth of a swap under load; the rename alone takes 0.12.
type pidFile struct {
	path string
	made chan struct{}
	tmp  string // the file written ahead, until it is renamed or removed
	err  error
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
	}()
	return p
}

// removeStalePIDTemps removes the files a generation that died before Ready wrote ahead (a
// version that crashed in its setup, one the supervisor killed at its deadline): without this
// each such swap left one beside the PID file. A file is stale when the process it names is
// gone, or it is empty and over a minute old (a write cut short).
func removeStalePIDTemps(path string) {
	files, _ := filepath.Glob(path + ".*")
	for _, f := range files {
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

// discard removes the file written ahead, unless it was published.
func (p *pidFile) discard() {
	<-p.made
	if p.tmp != "" {
		os.Remove(p.tmp)
		p.tmp = ""
	}
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
	_, err = f.WriteString(strconv.Itoa(os.Getpid()))
	if err = errors.Join(err, f.Close()); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}
