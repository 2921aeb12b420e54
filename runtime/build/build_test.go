package build

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/duckraft/duckraft/runtime/bundle"
)

// tableflipDuck imports only tableflip, so it builds whatever state the SDK is in.
const tableflipDuck = `package main

import (
	"fmt"

	"github.com/cloudflare/tableflip"
)

func main() {
	var _ *tableflip.Upgrader
	fmt.Println("quack from tableflip")
}
`

// pack packs files (slash path to content) as a bundle.
func pack(t testing.TB, files map[string]string) bundle.Bundle {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := bundle.Pack(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func realGo(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH to build with")
	}
	return p
}

// countingGo is a go command that records each run in a file before running the real one, so
// tests can tell a cache hit from a build without timing anything.
func countingGo(t *testing.T) (bin string, runs func() int) {
	t.Helper()
	real := realGo(t)
	dir := t.TempDir()
	count := filepath.Join(dir, "runs")
	bin = filepath.Join(dir, "go")
	// Only builds count: asking the toolchain its version is not a build.
	script := fmt.Sprintf("#!/bin/sh\n[ \"$1\" = build ] && echo run >> %q\nexec %q \"$@\"\n", count, real)
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, func() int {
		b, err := os.ReadFile(count)
		if errors.Is(err, os.ErrNotExist) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "run\n")
	}
}

func runDuck(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil {
		t.Fatalf("running %s: %v\n%s", bin, err, out)
	}
	return string(out)
}

// TestBuildNeedsNoNetworkOrModuleCache builds with an empty module cache and a proxy that would
// fail: only the vendored sources inside this binary and GOCACHE are there to help.
func TestBuildNeedsNoNetworkOrModuleCache(t *testing.T) {
	realGo(t)
	modcache := t.TempDir()
	t.Setenv("GOMODCACHE", modcache)
	t.Setenv("GOPROXY", "https://127.0.0.1:1")
	t.Setenv("GOFLAGS", "-mod=mod")
	t.Setenv("GOTOOLCHAIN", "go1.99.0")

	b := pack(t, map[string]string{"main.go": tableflipDuck})
	builder := &Builder{Dir: t.TempDir()}
	bin, err := builder.Build(context.Background(), b.ID, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(builder.Dir, string(b.ID), "duck"); bin != want {
		t.Errorf("binary at %s, want %s", bin, want)
	}
	if got := runDuck(t, bin); got != "quack from tableflip\n" {
		t.Errorf("duck printed %q", got)
	}
	if _, err := os.Stat(filepath.Join(builder.Dir, string(b.ID), "src", "vendor", "modules.txt")); err != nil {
		t.Errorf("the sources as built are not kept: %v", err)
	}
	if left, _ := os.ReadDir(modcache); len(left) != 0 {
		t.Errorf("the build used the module cache: it holds %v", left)
	}
}

func TestBuildImportsTheSDK(t *testing.T) {
	realGo(t)
	t.Setenv("GOMODCACHE", t.TempDir())
	b := pack(t, map[string]string{"main.go": `package main

import (
	"fmt"

	_ "github.com/duckraft/duckraft/runtime/hotswap"
)

func main() { fmt.Println("quack from the SDK") }
`})
	bin, err := (&Builder{Dir: t.TempDir()}).Build(context.Background(), b.ID, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	if got := runDuck(t, bin); got != "quack from the SDK\n" {
		t.Errorf("duck printed %q", got)
	}
}

func TestCompileErrorCarriesCompilerOutput(t *testing.T) {
	realGo(t)
	b := pack(t, map[string]string{"main.go": "package main\n\nfunc main() {\n\tx = 1\n}\n"})
	builder := &Builder{Dir: t.TempDir()}
	_, err := builder.Build(context.Background(), b.ID, b.Data)
	var ce *CompileError
	if !errors.As(err, &ce) {
		t.Fatalf("Build = %v, want a *CompileError", err)
	}
	if ce.ID != b.ID {
		t.Errorf("CompileError.ID = %s, want %s", ce.ID, b.ID)
	}
	if !strings.Contains(ce.Output, "main.go:4:2: undefined: x") {
		t.Errorf("Output is not the compiler's message:\n%s", ce.Output)
	}
	if !strings.Contains(err.Error(), ce.Output[:len(ce.Output)-1]) {
		t.Errorf("the error does not show the compiler's output: %v", err)
	}
	if _, ok := builder.Binary(b.ID); ok {
		t.Error("a failed build left a binary in the cache")
	}
	if left, _ := os.ReadDir(builder.Dir); len(left) != 0 {
		t.Errorf("a failed build left %v behind", left)
	}
}

func TestSecondBuildIsACacheHit(t *testing.T) {
	goBin, runs := countingGo(t)
	builder := &Builder{Dir: t.TempDir(), GoBin: goBin}
	b := pack(t, map[string]string{"main.go": tableflipDuck})

	first, err := builder.Build(context.Background(), b.ID, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(first)
	if err != nil {
		t.Fatal(err)
	}
	again, err := builder.Build(context.Background(), b.ID, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(again)
	if err != nil {
		t.Fatal(err)
	}
	if again != first || !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Errorf("second build gave %s (%v), first %s (%v)", again, after.ModTime(), first, before.ModTime())
	}
	if n := runs(); n != 1 {
		t.Errorf("go ran %d times for two builds of one ID, want 1", n)
	}
	// A new Builder on the same folder (a restarted node) finds it too.
	if _, err := (&Builder{Dir: builder.Dir, GoBin: goBin}).Build(context.Background(), b.ID, b.Data); err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 1 {
		t.Errorf("go ran %d times after a restart, want 1", n)
	}
}

func TestConcurrentBuildsOfOneIDRunGoOnce(t *testing.T) {
	goBin, runs := countingGo(t)
	builder := &Builder{Dir: t.TempDir(), GoBin: goBin}
	b := pack(t, map[string]string{"main.go": tableflipDuck})

	var wg sync.WaitGroup
	paths := make([]string, 3)
	errs := make([]error, 3)
	for i := range paths {
		wg.Go(func() { paths[i], errs[i] = builder.Build(context.Background(), b.ID, b.Data) })
	}
	wg.Wait()
	for i := range paths {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if paths[i] != paths[0] {
			t.Errorf("build %d gave %s, build 0 gave %s", i, paths[i], paths[0])
		}
	}
	if n := runs(); n != 1 {
		t.Errorf("go ran %d times for one ID, want 1", n)
	}
	if got := runDuck(t, paths[0]); got != "quack from tableflip\n" {
		t.Errorf("duck printed %q", got)
	}
}

func TestNoToolchainIsAClearError(t *testing.T) {
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	t.Run("not on PATH", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := (&Builder{Dir: t.TempDir()}).Build(context.Background(), b.ID, b.Data)
		if !errors.Is(err, ErrNoToolchain) || !strings.Contains(err.Error(), "no Go toolchain found on PATH: install Go") {
			t.Fatalf("Build = %v, want ErrNoToolchain saying to install Go", err)
		}
	})
	t.Run("missing GoBin", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "go")
		_, err := (&Builder{Dir: t.TempDir(), GoBin: missing}).Build(context.Background(), b.ID, b.Data)
		if !errors.Is(err, ErrNoToolchain) || !strings.Contains(err.Error(), missing) {
			t.Fatalf("Build = %v, want ErrNoToolchain naming %s", err, missing)
		}
	})
}

func TestTimeoutStopsTheBuild(t *testing.T) {
	realGo(t)
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	builder := &Builder{Dir: t.TempDir(), Timeout: time.Millisecond}
	_, err := builder.Build(context.Background(), b.ID, b.Data)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "exceeded its time limit of 1ms") {
		t.Fatalf("Build = %v, want ErrTimeout saying the limit", err)
	}
	if _, ok := builder.Binary(b.ID); ok {
		t.Error("a timed-out build left a binary")
	}
}

// TestTimeoutKillsTheProcessGroup uses a go command that starts a child and hangs, as the real
// one does with the compiler: both must be gone once Build returns.
func TestTimeoutKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	goBin := filepath.Join(dir, "go")
	script := fmt.Sprintf("#!/bin/sh\nsleep 300 &\necho $! > %q.tmp\nmv %q.tmp %q\nwait\n", pidFile, pidFile, pidFile)
	if err := os.WriteFile(goBin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	builder := &Builder{Dir: t.TempDir(), GoBin: goBin, Timeout: 2 * time.Second}
	_, err := builder.Build(context.Background(), b.ID, b.Data)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Build = %v, want ErrTimeout", err)
	}
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the stand-in go command never started its child: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); alive(pid); {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the go command's child %d outlived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid runs; a zombie waiting for a reaper counts as gone.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// hostile packs raw tar entries by hand, as a malicious peer might.
func hostile(t *testing.T, hdrs ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, h := range hdrs {
		body := "package main\n"
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(body))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestPathEscapeIsRefusedBeforeAnythingRuns(t *testing.T) {
	outer := t.TempDir()
	marker := filepath.Join(outer, "go-ran")
	goBin := filepath.Join(outer, "go")
	if err := os.WriteFile(goBin, []byte(fmt.Sprintf("#!/bin/sh\ntouch %q\n", marker)), 0o755); err != nil {
		t.Fatal(err)
	}
	builder := &Builder{Dir: filepath.Join(outer, "builds"), GoBin: goBin}
	if err := os.Mkdir(builder.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"dot-dot", hostile(t, tar.Header{Typeflag: tar.TypeReg, Name: "../../../escape.go", Mode: 0o644}), `has a ".." component`},
		{"symlink", hostile(t, tar.Header{Typeflag: tar.TypeSymlink, Name: "main.go", Linkname: "/etc/passwd"}), "is a symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := bundle.Sum(tc.data)
			_, err := builder.Build(context.Background(), id, tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Build = %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the go command ran for a refused bundle")
	}
	assertOnly(t, outer, "builds", "go")
	assertOnly(t, builder.Dir)
}

func TestBundleWithItsOwnModuleIsRefused(t *testing.T) {
	b := pack(t, map[string]string{"main.go": tableflipDuck, "go.mod": "module duck\n\ngo 1.26\n\nrequire example.com/x v1.0.0\n"})
	builder := &Builder{Dir: t.TempDir(), GoBin: realGo(t)}
	_, err := builder.Build(context.Background(), b.ID, b.Data)
	if err == nil || !strings.Contains(err.Error(), "ducks that import other modules are not supported yet") {
		t.Fatalf("Build = %v, want the not supported yet error", err)
	}
	assertOnly(t, builder.Dir)
}

func TestBundleThatDoesNotMatchItsIDIsRefused(t *testing.T) {
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	other := pack(t, map[string]string{"main.go": "package main\n\nfunc main() {}\n"})
	_, err := (&Builder{Dir: t.TempDir()}).Build(context.Background(), other.ID, b.Data)
	if err == nil || !strings.Contains(err.Error(), "corrupted") {
		t.Fatalf("Build = %v, want a corrupted bundle error", err)
	}
	if _, err := (&Builder{Dir: t.TempDir()}).Build(context.Background(), "../../etc", b.Data); err == nil {
		t.Fatal("Build accepted an ID that is a path")
	}
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	sort.Strings(names)
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}

// TestBuildsTheRepositoryDuck builds duck/, the program a node runs by default, as a node would.
func TestBuildsTheRepositoryDuck(t *testing.T) {
	realGo(t)
	t.Setenv("GOMODCACHE", t.TempDir())
	b, err := bundle.Pack(filepath.Join("..", "..", "duck"))
	if err != nil {
		t.Fatal(err)
	}
	bin, err := (&Builder{Dir: t.TempDir()}).Build(context.Background(), b.ID, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(bin); err != nil || info.Mode()&0o111 == 0 {
		t.Fatalf("no executable at %s: %v", bin, err)
	}
	// Linked without the symbol table and DWARF (-s -w), which only a debugger reads.
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, name := range []string{".symtab", ".debug_info"} {
		if f.Section(name) != nil {
			t.Errorf("the duck's binary has %s: it was linked with its symbols and DWARF", name)
		}
	}
	if f.Section(".gopclntab") == nil {
		t.Error("the duck's binary has no .gopclntab: its panics would have no trace")
	}
}

// BenchmarkRebuildOneLineChange measures what deploying a one-line change to duck/ costs a node:
// the bundle is new, so it is extracted, vendored and built, but GOCACHE is warm.
func BenchmarkRebuildOneLineChange(b *testing.B) {
	realGo(b)
	main, err := os.ReadFile(filepath.Join("..", "..", "duck", "main.go"))
	if err != nil {
		b.Fatal(err)
	}
	quackLine := regexp.MustCompile(`(?m)^const quack = .*$`)
	duck := func(i int) bundle.Bundle {
		// The change duck/main.go invites: a new quack line. Should that line move, a new line of
		// code is the same size of change.
		line := fmt.Sprintf("const quack = \"Quack %d! #%%d (%%s)\\n\"", i)
		src := quackLine.ReplaceAllLiteralString(string(main), line)
		if src == string(main) {
			src += fmt.Sprintf("\nvar rebuild = %d\n", i)
		}
		return pack(b, map[string]string{"main.go": src})
	}
	builder := &Builder{Dir: b.TempDir()}
	warm := duck(-1)
	if _, err := builder.Build(context.Background(), warm.ID, warm.Data); err != nil {
		b.Fatal(err)
	}
	var took []time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		next := duck(i)
		b.StartTimer()
		start := time.Now()
		if _, err := builder.Build(context.Background(), next.ID, next.Data); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "median-ms")
}

// Nodes on one host share their builds: the second node's Build takes the first one's binary
// instead of running go again, and it runs as the first one's does.
func TestNodesOnOneHostShareABuild(t *testing.T) {
	goBin, runs := countingGo(t)
	shared := t.TempDir()
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	one, two := &Builder{Dir: t.TempDir(), GoBin: goBin, Shared: shared}, &Builder{Dir: t.TempDir(), GoBin: goBin, Shared: shared}
	first, err := one.Build(context.Background(), b.ID, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	second, err := two.Build(context.Background(), b.ID, b.Data)
	if err != nil {
		t.Fatal(err)
	}
	// Each reports the sum of the binary it has, which the build or the copy left beside it.
	for i, builder := range []*Builder{one, two} {
		bin, _ := builder.Binary(b.ID)
		data, _ := os.ReadFile(bin)
		want := sha256.Sum256(data)
		if got, err := builder.Sum(b.ID); err != nil || got != hex.EncodeToString(want[:]) {
			t.Errorf("node %d: Sum = %q, %v; want the sha256 of its binary %x", i+1, got, err, want)
		}
	}
	// The node that took the binary wrote none of what only a build needs.
	if _, err := os.Stat(filepath.Join(two.Dir, string(b.ID), "src", "vendor")); err == nil {
		t.Error("the second node wrote vendor/ for a build it did not run")
	}
	if n := runs(); n != 1 {
		t.Errorf("go ran %d times for two nodes building one bundle on one host, want 1", n)
	}
	if first == second {
		t.Fatal("the two nodes share one path: each needs its own copy in its data folder")
	}
	a, _ := os.ReadFile(first)
	c, _ := os.ReadFile(second)
	if len(a) == 0 || !bytes.Equal(a, c) {
		t.Fatal("the second node's binary differs from the first's")
	}
	// A node without the shared folder builds for itself.
	if _, err := (&Builder{Dir: t.TempDir(), GoBin: goBin}).Build(context.Background(), b.ID, b.Data); err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 2 {
		t.Errorf("go ran %d times, want 2 once a node without the shared folder built too", n)
	}
}

// A node waiting for the host's build takes the shared binary as soon as it is there, without
// the host's lock: the waiters used to take the lock one after another to find the work done,
// and at a hundred nodes their built reports spread over 1.3 s.
func TestAWaitingNodeTakesTheSharedBuildWithoutTheLock(t *testing.T) {
	goBin, runs := countingGo(t)
	shared := t.TempDir()
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	if _, err := (&Builder{Dir: t.TempDir(), GoBin: goBin, Shared: shared}).Build(context.Background(), b.ID, b.Data); err != nil {
		t.Fatal(err)
	}
	// The shared binary is put aside while another "build" holds the host's lock.
	aside := shared + ".aside"
	if err := os.Rename(shared, aside); err != nil {
		t.Fatal(err)
	}
	unlock, err := hostLock(context.Background(), nil)
	if err != nil || unlock == nil {
		t.Fatalf("taking the host's lock: %v", err)
	}
	defer unlock()
	built := make(chan error, 1)
	go func() {
		_, err := (&Builder{Dir: t.TempDir(), GoBin: goBin, Shared: shared}).Build(context.Background(), b.ID, b.Data)
		built <- err
	}()
	time.Sleep(200 * time.Millisecond) // it waits for the lock now
	if err := os.Rename(aside, shared); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-built:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting node did not take the shared binary while the host's lock was held")
	}
	if n := runs(); n != 1 {
		t.Errorf("go ran %d times, want 1", n)
	}
}

// Two nodes that build one bundle each for itself, in folders of their own (as on two hosts),
// produce the same binary, byte for byte: the build's flags leave the paths, the build's
// folder and VCS stamps out of it. This is what lets --same-binary call a differing sum drift.
func TestIndependentBuildsOfOneBundleAreIdentical(t *testing.T) {
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	var sums []string
	for _, dir := range []string{filepath.Join(t.TempDir(), "node-a", "builds"), filepath.Join(t.TempDir(), "a much longer", "folder", "for node b")} {
		builder := &Builder{Dir: dir}
		bin, err := builder.Build(context.Background(), b.ID, b.Data)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(data, []byte(dir)) {
			t.Errorf("the binary built in %s names its folder", dir)
		}
		sum, err := builder.Sum(b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if want := sha256.Sum256(data); sum != hex.EncodeToString(want[:]) {
			t.Fatalf("Sum = %s, not the sha256 of the binary", sum)
		}
		sums = append(sums, sum)
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds of one bundle in two folders: %s and %s, want one binary", sums[0], sums[1])
	}
}

// A node whose go builds for another instruction level (GOAMD64=v3) says so in its toolchain,
// and builds for itself instead of taking the binary of a node on the default level from the
// shared folder (it took it, so the drift --same-binary is for never showed on one host).
func TestAnotherInstructionLevelBuildsForItself(t *testing.T) {
	nonDefault := map[string]string{"amd64": "v3", "arm64": "v8.1"}[runtime.GOARCH]
	level := archLevel[runtime.GOARCH][0]
	if nonDefault == "" {
		t.Fatalf("no other instruction level known for GOARCH %s: add one to this test", runtime.GOARCH)
	}
	shared := t.TempDir()
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	one := &Builder{Dir: t.TempDir(), Shared: shared}
	if _, err := one.Build(context.Background(), b.ID, b.Data); err != nil {
		t.Fatal(err)
	}
	if tc, _ := one.Toolchain(context.Background()); strings.Contains(tc, level) {
		t.Fatalf("the default level is named in the toolchain: %q", tc)
	}
	t.Setenv(level, nonDefault)
	two := &Builder{Dir: t.TempDir(), Shared: shared}
	tc, err := two.Toolchain(context.Background())
	if err != nil || !strings.HasSuffix(tc, " "+level+"="+nonDefault) {
		t.Fatalf("toolchain %q, %v; want it to name %s=%s", tc, err, level, nonDefault)
	}
	if _, err := two.Build(context.Background(), b.ID, b.Data); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(shared); len(entries) != 2 {
		t.Fatalf("the shared folder holds %d builds' keys, want one per level", len(entries))
	}
}

// A node whose toolchain differs does not take another's build from the shared folder: it builds
// for itself, and its binary's sum says what its toolchain made.
func TestAnotherToolchainBuildsForItself(t *testing.T) {
	goBin, runs := countingGo(t)
	real := realGo(t)
	dir := t.TempDir()
	other := filepath.Join(dir, "go")
	// The same go, but it says it is another version and compiles without optimizing: drift.
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = env ] && [ \"$2\" = GOVERSION ]; then echo go1.99-drift; exit 0; fi\nif [ \"$1\" = build ]; then shift; exec %q build -gcflags=-N \"$@\"; fi\nexec %q \"$@\"\n", real, real)
	if err := os.WriteFile(other, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	shared := t.TempDir()
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	one := &Builder{Dir: t.TempDir(), GoBin: goBin, Shared: shared}
	two := &Builder{Dir: t.TempDir(), GoBin: other, Shared: shared}
	for _, x := range []*Builder{one, two} {
		if _, err := x.Build(context.Background(), b.ID, b.Data); err != nil {
			t.Fatal(err)
		}
	}
	if n := runs(); n != 1 {
		t.Errorf("the first toolchain built %d times, want 1", n)
	}
	v1, _ := one.Toolchain(context.Background())
	v2, _ := two.Toolchain(context.Background())
	s1, err1 := one.Sum(b.ID)
	s2, err2 := two.Sum(b.ID)
	if err1 != nil || err2 != nil || v2 != "go1.99-drift" || v1 == v2 || s1 == s2 || len(s1) != 64 {
		t.Fatalf("toolchains %q and %q made %q and %q (%v, %v): want two versions and two sums", v1, v2, s1, s2, err1, err2)
	}
}

// A duck is asked about its state once per host: the first node runs its binary, the others of
// the host read the answer kept under the binary's sum.
func TestDescribeIsAskedOncePerHost(t *testing.T) {
	shared := t.TempDir()
	src, err := os.ReadFile(filepath.Join("..", "..", "testdata", "duck-migrate", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	b := pack(t, map[string]string{"main.go": string(src)})
	one, two := &Builder{Dir: t.TempDir(), Shared: shared}, &Builder{Dir: t.TempDir(), Shared: shared}
	for _, builder := range []*Builder{one, two} {
		if _, err := builder.Build(context.Background(), b.ID, b.Data); err != nil {
			t.Fatal(err)
		}
	}
	first, err := one.Describe(context.Background(), b.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if first.Schema != 2 || !first.Migrates {
		t.Fatalf("duck-migrate describes schema %d, Migrate %v; want 2 and a Migrate", first.Schema, first.Migrates)
	}
	// The second node's binary no longer runs: only the kept answer can say what it says.
	bin, _ := two.Binary(b.ID)
	if err := os.WriteFile(bin, []byte("not a program"), 0o755); err != nil {
		t.Fatal(err)
	}
	second, err := two.Describe(context.Background(), b.ID, nil)
	if err != nil {
		t.Fatalf("the second node ran its binary instead of reading the host's answer: %v", err)
	}
	if second.Schema != first.Schema {
		t.Fatalf("second node: schema %d, first %d", second.Schema, first.Schema)
	}
	// Without the shared folder a node asks its binary itself, and a binary that does not run
	// is a clear error.
	three := &Builder{Dir: t.TempDir()}
	if _, err := three.Build(context.Background(), b.ID, b.Data); err != nil {
		t.Fatal(err)
	}
	bin, _ = three.Binary(b.ID)
	os.WriteFile(bin, []byte("not a program"), 0o755)
	if _, err := three.Describe(context.Background(), b.ID, nil); err == nil {
		t.Fatal("a node without the shared folder described a binary that does not run")
	}
}

// A folder that holds a library is refused at its build, saying why: go build of a package that
// is not main succeeds and writes an archive where the binary goes, which every node "built"
// and no duck could run (found by deploying one). With a build constraint choosing the files,
// the check on what go build made catches it too.
func TestALibraryIsNotADuck(t *testing.T) {
	realGo(t)
	for name, files := range map[string]map[string]string{
		"library": {"lib.go": "package lib\n\nfunc F() {}\n"},
		"main only under a tag": {
			"lib.go":  "package lib\n\nfunc F() {}\n",
			"main.go": "//go:build never\n\npackage main\n\nfunc main() {}\n",
		},
	} {
		b := pack(t, files)
		builder := &Builder{Dir: t.TempDir()}
		_, err := builder.Build(context.Background(), b.ID, b.Data)
		if err == nil || !strings.Contains(err.Error(), "a duck is a program") {
			t.Errorf("%s: Build = %v, want a refusal saying a duck is a program", name, err)
		}
		if _, ok := builder.Binary(b.ID); ok {
			t.Errorf("%s: a binary is in place after the refusal", name)
		}
	}
}

// A waiter for the host's build is woken by the lock's release, not only by its next poll:
// waitRelease's channel stays open while the exclusive lock is held and closes once it is let go.
func TestWaitReleaseWakesWhenTheLockIsLetGo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "build.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	released := waitRelease(path)
	// A second waiter shares the watch: one goroutine per file, however many ask.
	if again := waitRelease(path); again != released {
		t.Fatal("a second waiter got a watch of its own")
	}
	select {
	case <-released:
		t.Fatal("waitRelease said the lock was let go while it was held")
	case <-time.After(300 * time.Millisecond):
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	select {
	case <-released:
	case <-time.After(20 * time.Second):
		t.Fatal("waitRelease did not wake when the lock was let go")
	}
	// Taken again at once: the waiter let its shared lock go.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the lock is still held after the waiter woke: %v", err)
	}
}

// A source that does not compile fails once per host, not once per node: the others take the
// compiler's words from the shared folder (a hundred nodes used to fail one after another, each
// after the host's lock, with the next version's build queued behind them). After
// sharedFailureFresh, or once the same source built, a node builds again.
func TestAHostsNodesShareAFailedBuild(t *testing.T) {
	goBin, runs := countingGo(t)
	shared := t.TempDir()
	b := pack(t, map[string]string{"main.go": "package main\n\nfunc main() { undefinedThing() }\n"})
	var outputs []string
	for i := 0; i < 3; i++ {
		_, err := (&Builder{Dir: t.TempDir(), GoBin: goBin, Shared: shared}).Build(context.Background(), b.ID, b.Data)
		var ce *CompileError
		if !errors.As(err, &ce) || !strings.Contains(ce.Output, "undefinedThing") {
			t.Fatalf("node %d: err = %v, want the compiler's error", i+1, err)
		}
		outputs = append(outputs, ce.Output)
	}
	if n := runs(); n != 1 {
		t.Fatalf("go ran %d times for three nodes of one host, want 1", n)
	}
	if outputs[1] != outputs[0] || outputs[2] != outputs[0] {
		t.Fatalf("the nodes that took the failure report other words:\n%q\n%q", outputs[0], outputs[1])
	}
	// Older than sharedFailureFresh: built again.
	matches, _ := filepath.Glob(filepath.Join(shared, "*", string(b.ID), "duck"+failedSuffix))
	if len(matches) != 1 {
		t.Fatalf("shared failures: %v, want one", matches)
	}
	old := time.Now().Add(-2 * sharedFailureFresh)
	if err := os.Chtimes(matches[0], old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Builder{Dir: t.TempDir(), GoBin: goBin, Shared: shared}).Build(context.Background(), b.ID, b.Data); err == nil {
		t.Fatal("a source that does not compile built")
	}
	if n := runs(); n != 2 {
		t.Fatalf("go ran %d times after the shared failure went stale, want 2", n)
	}
}

// Only the compiler's words about the source are shared: go exits with status 1 for a full
// disk or a killed compiler too, which are the machine's and may be gone on the next try.
func TestOnlyTheSourcesFailuresAreShared(t *testing.T) {
	for out, want := range map[string]bool{
		"# duck\n./main.go:3:15: undefined: undefinedThing\n":                                    true,
		"# duck\n./main.go:3:15: undefined: x\ncompile: writing output: no space left on device": false,
		"go build duck: /usr/lib/go/pkg/tool/linux_amd64/compile: signal: killed\n":              false,
		"go: cannot write GOCACHE: permission denied\n":                                          false,
		"": false,
	} {
		if got := shareable(out); got != want {
			t.Errorf("shareable(%q) = %v, want %v", out, got, want)
		}
	}
}
