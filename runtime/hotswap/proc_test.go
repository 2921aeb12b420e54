package hotswap_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binaries are built once per test run, by package path relative
// to the module root, one build at a time: the machine is shared.
var builds struct {
	mu   sync.Mutex
	dir  string
	done map[string]string
}

var sources = map[string]string{
	"duck":         "./duck",
	"duck-v2":      "./testdata/duck-v2",
	"duck-crash":   "./testdata/duck-crash",
	"duck-hang":    "./testdata/duck-hang",
	"duck-migrate": "./testdata/duck-migrate",
	"duck-broken":  "./testdata/duck-broken",
	"bare":         "./runtime/hotswap/testdata/bare",
	"stream":       "./runtime/hotswap/testdata/stream",
	"oneway":       "./runtime/hotswap/testdata/oneway",
	"duck-sdk1":    "./runtime/hotswap/testdata/duck-sdk1",
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hotswap-bins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	builds.dir = dir
	builds.done = make(map[string]string)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func moduleRoot(t testing.TB) string {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// build compiles the named program and returns the compiler's output on
// failure.
func build(t testing.TB, name string) (string, error) {
	t.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if p, ok := builds.done[name]; ok {
		return p, nil
	}
	out := filepath.Join(builds.dir, name)
	cmd := exec.Command("go", "build", "-o", out, sources[name])
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", sources[name], err, msg)
	}
	builds.done[name] = out
	return out, nil
}

func binary(t testing.TB, name string) string {
	t.Helper()
	p, err := build(t, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// lines collects a stream's lines as they come.
type lines struct {
	mu  sync.Mutex
	all []string
}

func (l *lines) read(r io.Reader) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		l.mu.Lock()
		l.all = append(l.all, s.Text())
		l.mu.Unlock()
	}
}

func (l *lines) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.all...)
}

// waitFor waits until a line from index from on contains every substring,
// and returns it.
func (l *lines) waitFor(t testing.TB, from int, timeout time.Duration, subs ...string) string {
	t.Helper()
	var found string
	poll(t, timeout, fmt.Sprintf("a line with %q", subs), func() bool {
		all := l.snapshot()
		for _, s := range all[min(from, len(all)):] {
			if containsAll(s, subs) {
				found = s
				return true
			}
		}
		return false
	})
	return found
}

func (l *lines) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.all)
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// poll waits for cond, checking it often, and fails the test at timeout.
func poll(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// duck is a running duck, every generation of it, as a supervisor sees it.
type duck struct {
	t           testing.TB
	dir         string
	bin         string // the stable path every generation is started from
	pidFile     string
	versionFile string
	addr        string
	stdout      *lines
	stderr      *lines
	first       *exec.Cmd
	mu          sync.Mutex // one swap at a time
}

// startDuck starts the named program by a stable absolute path in its own
// process group, which every later generation shares, so cleanup can kill
// them all.
func startDuck(t testing.TB, name string, env []string, prepare ...func(*exec.Cmd)) *duck {
	t.Helper()
	dir := t.TempDir()
	d := &duck{
		t:           t,
		dir:         dir,
		bin:         filepath.Join(dir, "duck"),
		pidFile:     filepath.Join(dir, "duck.pid"),
		versionFile: filepath.Join(dir, "version"),
		addr:        freeAddr(t),
		stdout:      &lines{},
		stderr:      &lines{},
	}
	d.install(name)
	cmd := exec.Command(d.bin)
	cmd.Env = append(os.Environ(),
		"DUCK_ADDR="+d.addr,
		"DUCK_PIDFILE="+d.pidFile,
		"DUCK_VERSION_FILE="+d.versionFile,
	)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Files, not io.Writers: every generation inherits them, and exec.Cmd
	// would otherwise wait for the last generation to close them.
	outR, outW := pipe(t)
	errR, errW := pipe(t)
	cmd.Stdout, cmd.Stderr = outW, errW
	for _, p := range prepare {
		p(cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	outW.Close()
	errW.Close()
	go d.stdout.read(outR)
	go d.stderr.read(errR)
	d.first = cmd
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			for _, l := range d.stderr.snapshot() {
				t.Logf("duck stderr: %s", l)
			}
		}
	})
	poll(t, 20*time.Second, name+" to become Ready", func() bool { return d.pid() == cmd.Process.Pid })
	return d
}

func pipe(t testing.TB) (*os.File, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startSwap installs version and asks the current generation to swap to it, returning that
// generation's PID and how many lines its stderr had before.
func (d *duck) startSwap(version string) (old, mark int) {
	old, mark = d.pid(), d.stderr.len()
	d.install(version)
	d.signal(old, syscall.SIGHUP)
	return old, mark
}

// install puts the named program at the stable path by rename, as a
// supervisor does before SIGHUP, with its name as the version.
func (d *duck) install(name string) {
	d.t.Helper()
	if err := d.installing(name); err != nil {
		d.t.Fatal(err)
	}
}

func (d *duck) installing(name string) error {
	bin, err := build(d.t, name)
	if err != nil {
		return err
	}
	src, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	tmp := d.bin + ".new"
	if err := os.WriteFile(tmp, src, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(d.versionFile+".new", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(d.versionFile+".new", d.versionFile); err != nil {
		return err
	}
	return os.Rename(tmp, d.bin)
}

// pid is the PID of the generation that became Ready last, or 0.
func (d *duck) pid() int {
	b, err := os.ReadFile(d.pidFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func (d *duck) signal(pid int, sig syscall.Signal) {
	d.t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		d.t.Fatalf("signalling pid %d: %v", pid, err)
	}
}

// swap installs the named program and swaps to it, waiting until the new
// generation is Ready and the old one has exited.
func (d *duck) swap(name string) (oldPID, newPID int) {
	d.t.Helper()
	oldPID, newPID, err := d.trySwap(name)
	if err != nil {
		d.t.Fatal(err)
	}
	return oldPID, newPID
}

// trySwap is swap for goroutines other than the test's: it returns what
// went wrong instead of failing the test.
func (d *duck) trySwap(name string) (oldPID, newPID int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	oldPID = d.pid()
	if err := d.installing(name); err != nil {
		return oldPID, 0, err
	}
	if err := syscall.Kill(oldPID, syscall.SIGHUP); err != nil {
		return oldPID, 0, fmt.Errorf("signalling pid %d: %w", oldPID, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for d.pid() == oldPID {
		if time.Now().After(deadline) {
			return oldPID, 0, fmt.Errorf("no new generation replacing pid %d after 20s", oldPID)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !waitExit(oldPID, 20*time.Second) {
		return oldPID, 0, fmt.Errorf("old generation pid %d still running 20s after the new one became Ready", oldPID)
	}
	return oldPID, d.pid(), nil
}

// swapStarted installs the named program and signals the running
// generation, returning once the new one is Ready, the old one perhaps
// still handing over.
func (d *duck) swapStarted(name string) (oldPID, newPID int) {
	d.t.Helper()
	oldPID = d.pid()
	d.install(name)
	d.signal(oldPID, syscall.SIGHUP)
	poll(d.t, 20*time.Second, fmt.Sprintf("a new generation replacing pid %d", oldPID), func() bool {
		return d.pid() != oldPID
	})
	return oldPID, d.pid()
}

// alive says whether pid is running (not gone, not a zombie nobody reaped).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// waitExit waits until pid has exited. It sleeps in the kernel on a pidfd
// where it can, so a benchmark learns of the exit at once without burning
// a CPU on polling; otherwise it polls /proc.
func waitExit(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	// pidfd_open is 434 on every Linux architecture.
	fd, _, errno := syscall.Syscall(434, uintptr(pid), 0, 0)
	if errno == 0 {
		defer syscall.Close(int(fd))
		for time.Now().Before(deadline) {
			var set syscall.FdSet
			set.Bits[int(fd)/64] |= 1 << (uint(fd) % 64)
			tv := syscall.NsecToTimeval(int64(time.Until(deadline)))
			n, err := syscall.Select(int(fd)+1, &set, nil, nil, &tv)
			if err == syscall.EINTR {
				continue
			}
			return err == nil && n > 0
		}
		return false
	}
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// reply is the duck's JSON answer.
type reply struct {
	Count   int    `json:"count"`
	Version string `json:"version"`
	State   struct {
		Lines        int    `json:"lines"`
		MigratedFrom int    `json:"migrated_from"`
		Note         string `json:"note"`
		Posts        struct {
			Total uint64 `json:"total"`
		} `json:"posts"`
	} `json:"state"`
}

var oneShot = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

func (d *duck) call(method, path string) (reply, error) {
	req, err := http.NewRequest(method, "http://"+d.addr+path, nil)
	if err != nil {
		return reply{}, err
	}
	return do(oneShot, req)
}

func (d *duck) mustCall(method, path string) reply {
	d.t.Helper()
	r, err := d.call(method, path)
	if err != nil {
		d.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func do(c *http.Client, req *http.Request) (reply, error) {
	res, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return reply{}, fmt.Errorf("%s %s: reading body: %w", req.Method, req.URL.Path, err)
	}
	if res.StatusCode != http.StatusOK {
		return reply{}, fmt.Errorf("%s %s: %s: %s", req.Method, req.URL.Path, res.Status, body)
	}
	var r reply
	if err := json.Unmarshal(body, &r); err != nil {
		return reply{}, fmt.Errorf("%s %s: %w in %q", req.Method, req.URL.Path, err, body)
	}
	return r, nil
}
