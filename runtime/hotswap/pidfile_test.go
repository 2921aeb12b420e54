package hotswap

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// After a failed swap the PID file names the generation that carries on: a new generation
// killed between tableflip's PID file write and its word to the old one left its own PID
// there, and a supervisor took the dead process for the duck.
func TestFailedSwapReclaimsThePIDFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pid")
	if err := os.WriteFile(path, []byte("999999"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &runner{env: env{pidFile: path}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	r.reclaimPIDFile()
	if got := readPID(path); got != os.Getpid() {
		t.Fatalf("the PID file names %d after a failed swap, want this process, %d", got, os.Getpid())
	}
}
