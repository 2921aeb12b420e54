// Package build turns a source bundle into a duck binary with the node's local Go toolchain, and
// keeps the result in a cache keyed by the bundle's ID: <Dir>/<id>/src holds the sources as built
// (the bundle, plus go.mod and vendor/ where this node ran go build rather than taking another
// node's binary), <Dir>/<id>/duck the binary and duck.sha256 its sum. Everything a build needs
// besides the bundle travels inside the node binary (see package duckraft), so a build needs no
// network and no module cache, only a Go toolchain.
package build

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/atomicfile"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// DefaultTimeout bounds a build when Builder.Timeout is zero. A cold build of a duck compiles the
// parts of the standard library it uses, which takes tens of seconds on a small machine.
const DefaultTimeout = 5 * time.Minute

// ErrNoToolchain is wrapped by Build's error when there is no go command to run.
var ErrNoToolchain = errors.New("no Go toolchain found")

// ErrTimeout is wrapped by Build's error when a build runs past its time limit.
var ErrTimeout = errors.New("build timed out")

// CompileError is a build that ran and failed: the duck's source does not compile.
type CompileError struct {
	ID bundle.ID
	// Output is the go command's stderr, verbatim: file:line: message lines from the compiler.
	Output string
	code   int // the go command's exit status (1 for a source that does not compile)
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("duck %s does not compile; fix the source and deploy again:\n%s", short(e.ID), strings.TrimRight(e.Output, "\n"))
}

// Builder builds bundles into binaries. Its zero value, with Dir set, is ready to use. Builds of
// different IDs run in parallel; concurrent builds of one ID run the go command once.
type Builder struct {
	// Dir is the cache root, e.g. <data>/builds.
	Dir string
	// Timeout bounds one build; zero means DefaultTimeout.
	Timeout time.Duration
	// GoBin is the go command; empty means "go" looked up on PATH.
	GoBin string
	// Shared, when set, is a folder every node on this host (same user) shares: a binary one of
	// them built is taken by the others instead of building the same bundle again.
	Shared string

	mu        sync.Mutex
	locks     map[bundle.ID]chan struct{} // one per ID, held while that ID builds
	toolchain string                      // the go command's GOVERSION, once asked
}

// archLevel is, per GOARCH, the go env variable that picks the instructions a binary may use,
// and its default: two nodes of one toolchain with different levels build different binaries.
var archLevel = map[string][2]string{
	"amd64": {"GOAMD64", "v1"}, "arm64": {"GOARM64", "v8.0"}, "arm": {"GOARM", "7"},
	"386": {"GO386", "sse2"}, "ppc64": {"GOPPC64", "power8"}, "ppc64le": {"GOPPC64", "power8"},
	"riscv64": {"GORISCV64", "rva20u64"},
}

// Toolchain is the version of the go command builds run with (its GOVERSION, such as
// go1.26.8), followed by the settings that change what it makes when they are not the
// defaults (GOAMD64=v3, GOEXPERIMENT=...): nodes that report different ones may build
// different binaries from one bundle, and nodes on one host share a build only if theirs agree.
func (b *Builder) Toolchain(ctx context.Context) (string, error) {
	b.mu.Lock()
	v := b.toolchain
	b.mu.Unlock()
	if v != "" {
		return v, nil
	}
	goBin, err := b.goCommand()
	if err != nil {
		return "", err
	}
	level, hasLevel := archLevel[runtime.GOARCH]
	args := []string{"env", "GOVERSION", "GOEXPERIMENT"}
	if hasLevel {
		args = append(args, level[0])
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Env = b.env()
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("asking %s for its version: %w", goBin, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	v = strings.TrimSpace(lines[0])
	if len(lines) > 1 && strings.TrimSpace(lines[1]) != "" {
		v += " GOEXPERIMENT=" + strings.TrimSpace(lines[1])
	}
	if len(lines) > 2 && hasLevel && strings.TrimSpace(lines[2]) != "" && strings.TrimSpace(lines[2]) != level[1] {
		v += " " + level[0] + "=" + strings.TrimSpace(lines[2])
	}
	b.mu.Lock()
	b.toolchain = v
	b.mu.Unlock()
	return v, nil
}

// Sum is the sha256 of the binary built for id, in hex: every node reports it, so that a
// cluster can see whether its nodes' toolchains made the same binary from one bundle. The build
// that made the binary, or the copy that took it from the host's shared folder, hashed it on
// the way and left the sum beside it (duck.sha256), so that a hundred nodes on one host do not
// each read it again.
func (b *Builder) Sum(id bundle.ID) (string, error) {
	p, ok := b.Binary(id)
	if !ok {
		return "", fmt.Errorf("build %s: no binary built yet", short(id))
	}
	if sum, err := os.ReadFile(p + ".sha256"); err == nil && bundle.ValidID(string(sum)) {
		return string(sum), nil
	}
	return fileSum(p)
}

// fileSum is the sha256 of the file at p, in hex.
func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Binary returns the path of the cached binary for id and whether it exists.
func (b *Builder) Binary(id bundle.ID) (string, bool) {
	if !id.Valid() {
		return "", false
	}
	p := filepath.Join(b.Dir, string(id), "duck")
	info, err := os.Stat(p)
	return p, err == nil && info.Mode().IsRegular()
}

// Build returns the path of the binary built from the bundle data whose ID is id, building it
// unless the cache already has it. A compile failure is a *CompileError; a missing go command wraps
// ErrNoToolchain; a build that runs past Timeout is stopped, with its whole process group, and
// wraps ErrTimeout.
func (b *Builder) Build(ctx context.Context, id bundle.ID, data []byte) (string, error) {
	if b.Dir == "" {
		return "", errors.New("build: Builder.Dir is empty; set it to the node's build cache folder")
	}
	if !id.Valid() {
		return "", fmt.Errorf("build %q: not a bundle ID (64 lowercase hex digits)", id)
	}
	if got := bundle.Sum(data); got != id {
		return "", fmt.Errorf("build %s: the bundle's sha256 is %s; the bundle was corrupted on its way, fetch it again", short(id), short(got))
	}
	if p, ok := b.Binary(id); ok {
		return p, nil
	}

	timeout := b.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	unlock, err := b.lock(tctx, id)
	if err != nil {
		return "", b.stopped(ctx, id, timeout, err)
	}
	defer unlock()
	// Another Build of this ID may have finished while this one waited.
	if p, ok := b.Binary(id); ok {
		return p, nil
	}
	p, err := b.build(tctx, id, data)
	if err != nil && tctx.Err() != nil {
		return "", b.stopped(ctx, id, timeout, err)
	}
	return p, err
}

// stopped explains a build ended by its context: the caller's, or the time limit.
func (b *Builder) stopped(ctx context.Context, id bundle.ID, timeout time.Duration, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("build %s: stopped because its caller gave up: %w", short(id), ctx.Err())
	}
	return fmt.Errorf("build %s exceeded its time limit of %s and was killed; raise the builder's Timeout or free up the machine (a first build compiles the standard library, later ones reuse GOCACHE): %w (%v)", short(id), timeout, ErrTimeout, err)
}

func (b *Builder) lock(ctx context.Context, id bundle.ID) (func(), error) {
	b.mu.Lock()
	if b.locks == nil {
		b.locks = make(map[bundle.ID]chan struct{})
	}
	ch, ok := b.locks[id]
	if !ok {
		ch = make(chan struct{}, 1)
		b.locks[id] = ch
	}
	b.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// build does the work in a private folder under <Dir>/<id> and renames the results into place,
// so a crash or a concurrent build (another node process on the same folder) never leaves a
// half-written binary where Binary looks.
func (b *Builder) build(ctx context.Context, id bundle.ID, data []byte) (string, error) {
	goBin, err := b.goCommand()
	if err != nil {
		return "", err
	}
	idDir := filepath.Join(b.Dir, string(id))
	if err := os.MkdirAll(idDir, 0o755); err != nil {
		return "", fmt.Errorf("build %s: %w", short(id), err)
	}
	work, err := os.MkdirTemp(idDir, ".work-")
	if err != nil {
		return "", fmt.Errorf("build %s: %w", short(id), err)
	}
	defer func() {
		os.RemoveAll(work)
		os.Remove(idDir) // only if empty: a failed first build leaves no trace
	}()

	src := filepath.Join(work, "src")
	if err := bundle.Extract(data, src); err != nil {
		return "", fmt.Errorf("build %s: %w", short(id), err)
	}
	for _, name := range []string{"go.mod", "go.work", "vendor"} {
		if _, err := os.Lstat(filepath.Join(src, name)); err == nil {
			return "", fmt.Errorf("build %s: the bundle has its own %s; ducks that import other modules are not supported yet, so a duck may import only the standard library and the duckraft SDK: remove %s from the duck's folder", short(id), name, name)
		}
	}

	if err := mainPackage(src); err != nil {
		return "", fmt.Errorf("build %s: %w", short(id), err)
	}
	out := filepath.Join(work, "duck")
	if err := b.produce(ctx, id, goBin, src, out); err != nil {
		return "", err
	}
	// The sources first, so a binary in place always has its sources beside it. Renaming onto an
	// existing non-empty src fails; that src came from the same bundle, so keep it.
	if err := os.Rename(src, filepath.Join(idDir, "src")); err != nil && !errors.Is(err, os.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return "", fmt.Errorf("build %s: %w", short(id), err)
	}
	// The sum before the binary: whoever finds the binary finds its sum.
	bin := filepath.Join(idDir, "duck")
	if err := os.Rename(out+".sha256", bin+".sha256"); err != nil {
		return "", fmt.Errorf("build %s: %w", short(id), err)
	}
	if err := os.Rename(out, bin); err != nil {
		return "", fmt.Errorf("build %s: %w", short(id), err)
	}
	return bin, nil
}

func (b *Builder) goCommand() (string, error) {
	if b.GoBin == "" {
		p, err := exec.LookPath("go")
		if err != nil {
			return "", fmt.Errorf("%w on PATH: install Go 1.26 or later (https://go.dev/dl) on this node, or set the builder's GoBin to the path of a go command", ErrNoToolchain)
		}
		return p, nil
	}
	p, err := exec.LookPath(b.GoBin)
	if err != nil {
		return "", fmt.Errorf("%w at GoBin %s (%v): install Go 1.26 or later there, or point GoBin at an existing go command", ErrNoToolchain, b.GoBin, err)
	}
	return p, nil
}

// produce writes the binary of id to out, and its sha256 to out.sha256: from the host's shared
// build folder if another node on this host built it already, else with go build, leaving a copy
// there for the others. One go build at a time per host, so the nodes of a local cluster wait for
// the first build and take its result instead of each building the same source. Only the node
// that builds writes go.mod and vendor/ beside the sources: a hundred nodes writing the SDK's
// files while the one build ran slowed it down.
func (b *Builder) produce(ctx context.Context, id bundle.ID, goBin, src, out string) error {
	shared := ""
	if b.Shared != "" {
		// Keyed by the toolchain and the SDK too: a node whose go or duckraft differs builds for
		// itself, so that its binary, and the sum it reports, are its own. Asked before the host lock:
		// a hundred nodes asking one after the other took seconds.
		tc, err := b.Toolchain(ctx)
		if err != nil {
			return err
		}
		shared = filepath.Join(b.Shared, strings.ReplaceAll(tc, " ", "-")+"-sdk"+sdkPrint(), string(id), "duck")
	}
	// Another node on this host built it already, or found just now that it does not compile:
	// take its binary, or its compiler's words, without waiting for the host's one go build at
	// a time.
	var failed error
	var taken func() bool
	if shared != "" {
		taken = func() bool {
			if takeShared(shared, out) == nil {
				return true
			}
			failed = sharedFailure(shared, id)
			return failed != nil
		}
		if taken() {
			return failed
		}
	}
	unlock, err := hostLock(ctx, taken)
	if err != nil || unlock == nil {
		return cmp.Or(err, failed) // nil: taken while waiting
	}
	defer unlock()
	if taken != nil && taken() {
		return failed
	}
	if err := writeVendor(src); err != nil {
		return fmt.Errorf("build %s: %w", short(id), err)
	}
	if err := b.run(ctx, id, goBin, src, out); err != nil {
		var ce *CompileError
		if shared != "" && errors.As(err, &ce) && ce.code == 1 {
			shareFailure(shared, ce.Output)
		}
		return err
	}
	if shared != "" {
		os.Remove(shared + failedSuffix) // an earlier failure was not the source's (a full disk, say)
	}
	if err := isProgram(out); err != nil {
		return fmt.Errorf("build %s: %w", short(id), err)
	}
	sum, err := fileSum(out)
	if err != nil {
		return fmt.Errorf("build %s: %w", short(id), err)
	}
	if err := os.WriteFile(out+".sha256", []byte(sum), 0o644); err != nil {
		return fmt.Errorf("build %s: %w", short(id), err)
	}
	if shared != "" {
		// Best effort: a node that cannot share still has its own binary. The sum goes in first,
		// so that a binary found there always has its sum.
		if os.MkdirAll(filepath.Dir(shared), 0o700) == nil {
			// By rename, as the binary: waiters read the sum without the host's lock.
			if _, err := copyFile(out+".sha256", shared+".sha256.tmp"); err == nil && os.Rename(shared+".sha256.tmp", shared+".sha256") == nil {
				tmp := shared + ".tmp"
				if _, err := copyFile(out, tmp); err == nil {
					os.Rename(tmp, shared)
				}
			}
		}
	}
	return nil
}

// failedSuffix names, beside a host's shared binary, the compiler's words of a build of it that
// failed.
const failedSuffix = ".failed"

// sharedFailureFresh is how long a host's failed build stands for the other nodes' builds of the
// same source and toolchain. A hundred nodes of one host built a version that did not compile
// one after another, each failing after the host's lock (and the next version's build queued
// behind them): the failure is the source's, the same for all. Bounded, since go also exits with
// status 1 for what is the machine's (a full disk): a build asked for later runs again.
const sharedFailureFresh = time.Minute

// compilerMessage is a line of the compiler's: file.go:line:column: message.
var compilerMessage = regexp.MustCompile(`(?m)\.go:\d+:\d+: `)

// notTheSource are words of go's exit status 1 that say the machine failed, not the source.
var notTheSource = []string{"signal: killed", "no space left", "permission denied", "too many open files", "cannot allocate memory"}

// shareable says whether a failed build's output is the source's fault alone.
func shareable(output string) bool {
	if !compilerMessage.MatchString(output) {
		return false
	}
	for _, w := range notTheSource {
		if strings.Contains(output, w) {
			return false
		}
	}
	return true
}

// shareFailure leaves the compiler's words of a failed build where the host's other nodes look,
// when they are the source's fault.
func shareFailure(shared, output string) {
	if !shareable(output) || os.MkdirAll(filepath.Dir(shared), 0o700) != nil {
		return
	}
	atomicfile.Write(shared+failedSuffix, []byte(output), 0o600) // best effort: the others build
}

// sharedFailure is the failure another node of this host met building the same source with the
// same toolchain in the last sharedFailureFresh, or nil. (A time ahead of the clock, after the
// clock stepped back, is stale too.)
func sharedFailure(shared string, id bundle.ID) error {
	fi, err := os.Stat(shared + failedSuffix)
	if err != nil {
		return nil
	}
	if age := time.Since(fi.ModTime()); age < 0 || age > sharedFailureFresh {
		return nil
	}
	out, err := os.ReadFile(shared + failedSuffix)
	if err != nil {
		return nil
	}
	return &CompileError{ID: id, Output: string(out), code: 1}
}

// takeShared takes the binary another node of this host built, with its sum: linked where the
// folders share a file system, else copied and hashed on the way.
func takeShared(shared, out string) error {
	if _, err := os.Stat(shared); err != nil {
		return err
	}
	if os.Link(shared, out) == nil {
		if _, err := copyFile(shared+".sha256", out+".sha256"); err == nil {
			return nil
		}
		os.Remove(out)
	}
	sum, err := copyFile(shared, out)
	if err != nil {
		return err
	}
	return os.WriteFile(out+".sha256", []byte(sum), 0o644)
}

// copyFile copies the file from to to, executable, and returns the sha256 of what it copied,
// in hex.
func copyFile(from, to string) (string, error) {
	in, err := os.Open(from)
	if err != nil {
		return "", err
	}
	defer in.Close()
	o, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(o, h), in); err != nil {
		o.Close()
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), o.Close()
}

// run runs go build in src, writing the binary to out.
func (b *Builder) run(ctx context.Context, id bundle.ID, goBin, src, out string) error {
	// -trimpath keeps the build folder out of the binary and out of the build cache's keys, so
	// rebuilding the vendored packages from a new folder is a cache hit. -s -w leave out the
	// symbol table and DWARF, which only a debugger reads (a panic's trace and pprof use the
	// runtime's own tables, which stay): the link of a one-line change took 0.42 s instead of
	// 0.69 (median of 5, two cores), and the binary every node hashes, links and executes at each
	// swap is 7.4 MB instead of 10.7.
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = b.env()
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	// go build runs the compiler and linker as children; on timeout all of them must go, so the
	// command gets its own process group and the whole group is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second

	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return err // Build explains the timeout or cancellation
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return &CompileError{ID: id, Output: stderr.String(), code: exit.ExitCode()}
	}
	return fmt.Errorf("build %s: running %s: %w", short(id), goBin, err)
}

// env is the node's environment with everything that could make a build reach the network, use a
// module cache, pick another toolchain or cross-compile overridden. GOCACHE is kept: the build cache
// is what makes a rebuild after a one-line change fast.
func (b *Builder) env() []string {
	set := map[string]string{
		"GOTOOLCHAIN": "local",
		"CGO_ENABLED": "0",
		"GOFLAGS":     "-mod=vendor",
		"GOPROXY":     "off",
		"GOSUMDB":     "off",
		"GONOSUMDB":   "",
		"GOPRIVATE":   "",
		"GOWORK":      "off",
		"GO111MODULE": "on",
		"GOOS":        runtime.GOOS,
		"GOARCH":      runtime.GOARCH,
	}
	// A node started without HOME (a bare service) still needs somewhere for the go command's
	// caches; give it folders under the build cache root.
	if os.Getenv("HOME") == "" {
		if os.Getenv("GOCACHE") == "" && os.Getenv("XDG_CACHE_HOME") == "" {
			set["GOCACHE"] = filepath.Join(b.Dir, ".gocache")
		}
		if os.Getenv("GOPATH") == "" && os.Getenv("GOMODCACHE") == "" {
			set["GOPATH"] = filepath.Join(b.Dir, ".gopath")
		}
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		// DUCKRAFT_ variables (the cookie among them) are the node's, never a build's: the go
		// command runs code from the bundle's toolchain directives and generators' reach.
		if _, ok := set[k]; !ok && !strings.HasPrefix(k, "DUCKRAFT_") {
			env = append(env, kv)
		}
	}
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	return env
}

func short(id bundle.ID) string { return id.Short() }

// hostLock lets one go build run at a time on this machine. Nodes on one host (a local cluster,
// the tests) build the same version at once; in parallel they share the cores and each takes
// as long as all of them together, while one after another the first finishes at its own speed
// and the others find its work in the shared build cache. Nodes on separate hosts do not meet.
//
// done, when not nil, is asked before each try: once it says the work is there (another node
// built and shared the binary), hostLock returns a nil unlock and no error, without the lock.
// The waiters used to take the lock one after another only to find the work done: at a hundred
// nodes their built reports spread over 1.3 s after the build, and the first wave of a rollout,
// granted in order, waited for the last of them.
func hostLock(ctx context.Context, done func() bool) (func(), error) {
	// In the user's own cache folder, not /tmp, where another user could hold it.
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	os.MkdirAll(filepath.Join(dir, "duckraft"), 0o700)
	f, err := os.OpenFile(filepath.Join(dir, "duckraft", "build.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return func() {}, nil // no lock to be had: build anyway, only slower
	}
	// A waiter wakes when the lock is released (a shared lock, taken and let go at once, on a
	// second open of the file, granted to every waiter together), and at the latest after 10 ms,
	// then less and less often up to every 100 ms, for work shared while the lock is still held.
	// Polling alone, a hundred nodes found the build 50 ms after it on average, spread over
	// 100 ms, and the first wave of a rollout, granted in order, waited for the last of them; a
	// hundred nodes asking every 10 ms took CPU from that build.
	woken := false
	for wait := 10 * time.Millisecond; ; wait = min(wait*3/2, 100*time.Millisecond) {
		if done != nil && done() {
			f.Close()
			return nil, nil
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		// Woken by a release that left nothing to take (another waiter took the lock, or the
		// build failed): the next wake is the timer's, or the waiters, each holding the shared
		// lock a moment, would keep each other from the exclusive one in a spin.
		var released <-chan struct{}
		if !woken {
			released = waitRelease(f.Name())
		}
		woken = false
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-released:
			woken = true
		case <-time.After(wait):
		}
	}
}

// releases is the one watcher per lock file of this process (see waitRelease).
var releases = struct {
	sync.Mutex
	watch map[string]chan struct{}
}{watch: map[string]chan struct{}{}}

// waitRelease returns a channel closed once the exclusive lock on the file at path is let go.
// One goroutine watches per file, whoever asks: it cannot be called off (it waits in flock), so
// one per caller would pile up behind a build that hangs or a holder that is stopped.
func waitRelease(path string) <-chan struct{} {
	releases.Lock()
	defer releases.Unlock()
	if ch, ok := releases.watch[path]; ok {
		return ch
	}
	released := make(chan struct{})
	releases.watch[path] = released
	go func() {
		defer func() {
			releases.Lock()
			delete(releases.watch, path)
			releases.Unlock()
			close(released)
		}()
		g, err := os.Open(path)
		if err != nil {
			time.Sleep(100 * time.Millisecond) // the poll carries on alone
			return
		}
		defer g.Close()
		for {
			err := syscall.Flock(int(g.Fd()), syscall.LOCK_SH)
			if err == syscall.EINTR {
				continue
			}
			if err == nil {
				syscall.Flock(int(g.Fd()), syscall.LOCK_UN)
			}
			return
		}
	}()
	return released
}

// mainPackage checks that src holds a main package. go build of any other package succeeds and
// writes an archive where the binary goes, so a library deployed as a version was "built" on
// every node and failed only when a duck ran it ("exec format error"; found by trying it).
func mainPackage(src string) error {
	files, _ := filepath.Glob(filepath.Join(src, "*.go"))
	fset := token.NewFileSet()
	var other string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.PackageClauseOnly)
		if err != nil {
			return nil // the compiler says what is wrong, better
		}
		if f.Name.Name == "main" {
			return nil
		}
		other = f.Name.Name
	}
	if other == "" {
		return nil // no Go files: go build says so
	}
	return fmt.Errorf("the folder holds package %s, not a main package: a duck is a program (package main, with a func main that serves through the duckraft SDK); deploy the folder of that program", other)
}

// isProgram checks that go build made an executable, whatever mainPackage saw (build
// constraints choose the files): on Linux an ELF file.
func isProgram(path string) error {
	if runtime.GOOS != "linux" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "\x7fELF" {
		return errors.New("go build made no program (an archive: the package built is not main); a duck is a program: package main, with a func main")
	}
	return nil
}
