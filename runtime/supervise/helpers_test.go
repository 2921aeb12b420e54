package supervise

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

	"github.com/duckraft/duckraft/internal/waitfor"
)

// bins holds the test ducks, built once by TestMain.
var bins = map[string]string{}

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) != "" {
		fakeAgent()
		return
	}
	dir, err := os.MkdirTemp("", "supervise-bins-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pkgs := []string{"./duck", "./testdata/duck-v2", "./testdata/duck-crash", "./testdata/duck-hang", "./runtime/supervise/testdata/duck-flaky", "./runtime/supervise/testdata/duck-forker"}
	// One go build for all of them: the machine is shared.
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the test ducks: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	for _, p := range pkgs {
		bins[filepath.Base(p)] = filepath.Join(dir, filepath.Base(p))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testLog writes the supervisor's log to the test's, until the test ends.
type testLog struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testLog) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Logf("%s", bytes.TrimRight(b, "\n"))
	}
	return len(b), nil
}

// newSupervisor returns a supervisor closed (every duck stopped) when the
// test ends.
func newSupervisor(t *testing.T, cfg Config) *Supervisor {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	w := &testLog{t: t}
	cfg.Log = slog.New(slog.NewTextHandler(w, nil))
	if cfg.Healthy == 0 {
		cfg.Healthy = 200 * time.Millisecond
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		if left := ducksUnder(cfg.Dir); len(left) > 0 {
			t.Errorf("duck processes left running after Close: %v", left)
		}
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return s
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDuck starts bins[bin] as id, quacking every 50ms on a free port.
func startDuck(t *testing.T, s *Supervisor, id, bin, version string, env ...string) Spec {
	t.Helper()
	spec := Spec{ID: id, Version: version, Binary: bins[bin], Addr: freeAddr(t), Env: append([]string{"DUCK_INTERVAL=50ms"}, env...)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Start(ctx, spec); err != nil {
		t.Fatalf("Start %s: %v", id, err)
	}
	return spec
}

func swap(s *Supervisor, id, version, bin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return s.Swap(ctx, id, version, bins[bin], 0)
}

// waitFor polls cond until it holds, failing the test past a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.Until(t, what, 20*time.Second, cond)
}

// waitLine waits for a line of any duck that matches.
func waitLine(t *testing.T, s *Supervisor, what string, match func(Line) bool) Line {
	t.Helper()
	var found Line
	waitFor(t, what, func() bool {
		for _, l := range s.Recent("", RingSize) {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

var client = &http.Client{Timeout: 10 * time.Second}

type reply struct {
	Count   int    `json:"count"`
	Version string `json:"version"`
}

func call(t *testing.T, method, addr, path string) reply {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r reply
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &r) != nil {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, body)
	}
	return r
}

func quack(t *testing.T, addr string, n int) {
	t.Helper()
	for range n {
		call(t, "POST", addr, "/quack")
	}
}

// gone says whether pid has exited and been reaped.
func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func mustGet(t *testing.T, s *Supervisor, id string) Status {
	t.Helper()
	st, ok := s.Get(id)
	if !ok {
		t.Fatalf("duck %s unknown to the supervisor", id)
	}
	return st
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

func contains(s string, subs ...string) error {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return fmt.Errorf("%q lacks %q", s, sub)
		}
	}
	return nil
}

// ducksUnder lists the live processes running a binary under dir.
func ducksUnder(dir string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink("/proc/" + e.Name() + "/exe")
		if err == nil && strings.HasPrefix(exe, dir+"/") && !dead(pid) {
			out = append(out, pid)
		}
	}
	return out
}
