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

	"github.com/duckraft/duckraft/atomicfile"
	"github.com/duckraft/duckraft/runtime/bundle"
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
	if _, err := copyFile(bin, run); err != nil {
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

// Describe is what the binary built for id says of its state (see the function Describe),
// asked once per binary and host: the answer is kept beside the binary, and in the shared
// folder under the binary's sum. A hundred nodes of one host that each ran their binaries after
// a build (the new one and the one before) kept two cores busy for two seconds.
func (b *Builder) Describe(ctx context.Context, id bundle.ID, cred *syscall.Credential) (hotswap.Description, error) {
	var d hotswap.Description
	bin, ok := b.Binary(id)
	if !ok {
		return d, fmt.Errorf("build %s: no binary built yet", short(id))
	}
	kept := bin + ".describe"
	shared := ""
	if b.Shared != "" {
		if sum, err := b.Sum(id); err == nil {
			shared = filepath.Join(b.Shared, "describe", sum+".json")
		}
	}
	if d, ok := readDescription(kept, shared); ok {
		return d, nil
	}
	// One node of the host asks while the others wait for its answer, and take it without
	// the lock once it is there.
	unlock, err := hostLock(ctx, func() bool {
		var ok bool
		d, ok = readDescription(kept, shared)
		return ok
	})
	if err != nil || unlock == nil {
		return d, err
	}
	defer unlock()
	if d, ok := readDescription(kept, shared); ok {
		return d, nil
	}
	if d, err = Describe(ctx, bin, cred); err != nil {
		return d, err
	}
	data, err := json.Marshal(d)
	if err != nil {
		return d, err
	}
	// Best effort: an answer not kept is asked for again.
	atomicfile.Write(kept, data, 0o600)
	if shared != "" && os.MkdirAll(filepath.Dir(shared), 0o700) == nil {
		atomicfile.Write(shared, data, 0o600)
	}
	return d, nil
}

// readDescription reads a kept answer of Describe: the node's own, else the host's (keeping a
// copy beside the binary).
func readDescription(kept, shared string) (hotswap.Description, bool) {
	var d hotswap.Description
	if data, err := os.ReadFile(kept); err == nil && json.Unmarshal(data, &d) == nil {
		return d, true
	}
	if shared == "" {
		return d, false
	}
	data, err := os.ReadFile(shared)
	if err != nil || json.Unmarshal(data, &d) != nil {
		return d, false
	}
	atomicfile.Write(kept, data, 0o600)
	return d, true
}
