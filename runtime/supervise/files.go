package supervise

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Names inside Dir/<id>/.
const (
	binaryName  = "duck"
	prevName    = "duck.prev" // the binary a swap replaced, until the swap is confirmed
	pidName     = "pid"
	versionName = "version"
	stateName   = "state.json"
)

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
