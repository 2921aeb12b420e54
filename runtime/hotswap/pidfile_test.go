package hotswap

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
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

// Ready's rename only drops a link: the PID file being replaced has a second name, made ahead,
// which keeps its inode until the previous generation has exited, and then goes.
func TestThePIDFileReplacedKeepsASecondNameUntilDropped(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "duck.pid")
	if err := os.WriteFile(path, []byte("999999"), 0o644); err != nil {
		t.Fatal(err)
	}
	replaced, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	p := preparePIDFile(path)
	if err := p.publish(); err != nil {
		t.Fatal(err)
	}
	prev := path + prevInfix + strconv.Itoa(os.Getpid())
	if fi, err := os.Stat(prev); err != nil || !os.SameFile(fi, replaced) {
		t.Fatalf("%s is not a second name of the replaced PID file (%v): a copy would leave the rename freeing its inode", prev, err)
	}
	if got := readPID(prev); got != 999999 {
		t.Fatalf("the replaced PID file's second name %s holds %d, want the previous generation's 999999", prev, got)
	}
	if got := readPID(path); got != os.Getpid() {
		t.Fatalf("after Ready the PID file names %d, want this process, %d", got, os.Getpid())
	}
	p.dropPrev()
	p.discard() // deferred in Run: drops nothing twice, keeps the published file
	if names := dirNames(t, dir); len(names) != 1 || names[0] != "duck.pid" {
		t.Fatalf("the folder holds %v once the previous generation has gone, want only duck.pid", names)
	}

	// No PID file yet (a first start): no second name, and the file is made.
	first := filepath.Join(dir, "first.pid")
	p = preparePIDFile(first)
	if err := p.publish(); err != nil {
		t.Fatal(err)
	}
	<-p.made
	if p.prev != "" {
		t.Fatalf("a first start made a second name %s for a PID file that did not exist", p.prev)
	}
	if got := readPID(first); got != os.Getpid() {
		t.Fatalf("a first start's PID file names %d, want %d", got, os.Getpid())
	}
}

// A second name left by a generation that died before it dropped it is removed by the next one;
// a live generation's stays.
func TestSecondNamesOfDeadGenerationsAreRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "duck.pid")
	os.WriteFile(path, []byte("1"), 0o644)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	// Both name a live process inside (the previous generation carried on), so only the name
	// tells the dead one's from the live one's.
	stale := path + prevInfix + strconv.Itoa(dead.Process.Pid)
	live := path + prevInfix + "1"
	for _, f := range []string{stale, live} {
		if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := preparePIDFile(path)
	if err := p.publish(); err != nil {
		t.Fatal(err)
	}
	p.discard()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the dead generation's second name is still there (%v)", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live generation's second name was removed: %v", err)
	}
}

// BenchmarkPIDFileRename measures Ready's rename of the PID file, as tableflip does it (a file
// written and renamed over the PID file) and as the SDK does (the file's block allocated and
// the PID file given a second name ahead). rename-us is the rename alone.
func BenchmarkPIDFileRename(b *testing.B) {
	for _, c := range []struct {
		name  string
		ahead bool
	}{{"plain", false}, {"ahead", true}} {
		b.Run(c.name, func(b *testing.B) {
			dir := b.TempDir()
			path := filepath.Join(dir, "duck.pid")
			if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
				b.Fatal(err)
			}
			var renames time.Duration
			for range b.N {
				var tmp, prev string
				if c.ahead {
					var err error
					if tmp, err = writePIDTemp(path); err != nil {
						b.Fatal(err)
					}
					prev = linkPrev(path)
				} else {
					f, err := os.CreateTemp(dir, "duck.pid.*")
					if err != nil {
						b.Fatal(err)
					}
					f.WriteString(strconv.Itoa(os.Getpid()))
					f.Close()
					tmp = f.Name()
				}
				// What the rest of a start does meanwhile: without it the rename
				// would find the last one's work still under way.
				time.Sleep(time.Millisecond)
				start := time.Now()
				if err := os.Rename(tmp, path); err != nil {
					b.Fatal(err)
				}
				renames += time.Since(start)
				if prev != "" {
					os.Remove(prev)
				}
			}
			b.ReportMetric(float64(renames.Microseconds())/float64(b.N), "rename-us")
		})
	}
}
