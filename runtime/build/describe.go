package build

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

// Describe asks a built duck what it says of its state (hotswap.EnvDescribe): it runs the binary
// with that variable alone set, bounded by a few seconds; the duck serves nothing. The binary is
// code someone sent: with cred (a root node's duck user) it runs as that user, from a copy in a
// folder of its own, as a duck would, never as the node.
func Describe(ctx context.Context, bin string, cred *syscall.Credential) (hotswap.Description, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d hotswap.Description
	dir, err := os.MkdirTemp("", "duckraft-describe-")
	if err != nil {
		return d, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o711); err != nil {
		return d, err
	}
	run := filepath.Join(dir, "duck")
	if err := copyFile(bin, run); err != nil {
		return d, err
	}
	if err := os.Chmod(run, 0o755); err != nil {
		return d, err
	}
	cmd := exec.CommandContext(ctx, run)
	cmd.Dir = dir
	// A duck built with an SDK older than EnvDescribe would start serving instead: on a port
	// of the kernel's choice, so it takes nobody's, until the timeout ends it.
	cmd.Env = []string{hotswap.EnvDescribe + "=1", hotswap.EnvAddr + "=127.0.0.1:0", "PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return d, fmt.Errorf("asking the duck %s about its state: %w: %s", bin, err, bytes.TrimSpace(errOut.Bytes()))
	}
	if err := json.Unmarshal(out.Bytes(), &d); err != nil {
		return d, fmt.Errorf("the duck %s described its state as %q, not a description (built with an older SDK?): %w", bin, out.String(), err)
	}
	return d, nil
}
