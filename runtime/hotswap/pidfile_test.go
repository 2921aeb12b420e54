package hotswap

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// The PID file's replacement is written ahead and only renamed at Ready: until then the file
// names the previous generation, and a start that ends before Ready leaves no file behind.
func TestPIDFileWrittenAheadNamesThisProcessOnlyOncePublished(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "duck.pid")
	if err := os.WriteFile(path, []byte("999999"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := preparePIDFile(path)
	<-p.made
	if got := readPID(path); got != 999999 {
		t.Fatalf("before Ready the PID file names %d, want the previous generation's 999999", got)
	}
	if err := p.publish(); err != nil {
		t.Fatal(err)
	}
	p.discard() // deferred in Run: must not remove the published file
	if got := readPID(path); got != os.Getpid() {
		t.Fatalf("after Ready the PID file names %d, want this process, %d", got, os.Getpid())
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Fatalf("the folder holds %v, want only the PID file", names)
	}

	failed := preparePIDFile(path + "2")
	failed.discard()
	if names := dirNames(t, dir); len(names) != 1 {
		t.Fatalf("a start that ended before Ready left %v, want only the PID file", names)
	}

	if err := preparePIDFile(filepath.Join(dir, "missing", "duck.pid")).publish(); err == nil {
		t.Fatal("publishing into a folder that does not exist succeeded")
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// A file written ahead by a generation that died before Ready is removed by the next one: each
// failed swap left one beside the PID file. A live process's file stays.
func TestPIDFilesOfGenerationsThatDiedBeforeReadyAreRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "duck.pid")
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale, live := path+".111", path+".222"
	os.WriteFile(stale, []byte(strconv.Itoa(dead.Process.Pid)), 0o644)
	os.WriteFile(live, []byte(strconv.Itoa(os.Getpid())), 0o644)
	p := preparePIDFile(path)
	if err := p.publish(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the dead generation's file is still there (%v)", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live process's file was removed: %v", err)
	}
}
