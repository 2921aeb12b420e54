package supervise

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

func TestChildrenOfFindsAChild(t *testing.T) {
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	child := cmd.Process.Pid
	waitFor(t, "the child in the children files", func() bool { return slices.Contains(childrenOf(os.Getpid()), child) })
	if !slices.Contains(scanChildrenOf(os.Getpid()), child) {
		t.Fatal("a scan of /proc misses the child")
	}
}
