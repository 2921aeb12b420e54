package hotswap_test

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// duck-sdk1 is the duck built on testdata/sdk1, this SDK as it was before a
// new generation asked for the state (it freezes first, and reads the
// state file at once). Swaps between it and the duck on this SDK go both
// ways under load: from sdk1 the state file is complete at once; to sdk1
// the new generation finds the state still pending, fails, and the old
// generation starts it again with the state written first. Nothing is
// lost either way, and no swap fails.
func TestSwapsAcrossSDKVersionsLoseNothing(t *testing.T) {
	binary(t, "duck-sdk1")
	d := startDuck(t, "duck", nil)
	l := startLoad(t, d.addr, 4, time.Millisecond, 50_000, 3*time.Minute)
	order := []string{"duck-sdk1", "duck", "duck-sdk1", "duck-sdk1", "duck", "duck"}
	running := "duck"
	for _, next := range order {
		before := l.requests.Load()
		poll(t, 30*time.Second, "the clients to make 200 more requests", func() bool {
			return l.requests.Load() >= before+200
		})
		mark := d.stderr.len()
		from := d.pid()
		d.swap(next)
		if next == "duck-sdk1" && running == "duck" {
			// The sdk1 generation refused the pending state, and the swap
			// went on the old way.
			d.stderr.waitFor(t, mark, 5*time.Second, "state snapshot has no state field")
			d.stderr.waitFor(t, mark, 5*time.Second, "exited before asking for the state", fmt.Sprintf("pid=%d", from))
		}
		running = next
	}
	before := l.requests.Load()
	poll(t, 30*time.Second, "requests after the last swap", func() bool { return l.requests.Load() >= before+50 })
	l.stop()

	final := d.mustCall(http.MethodGet, "/")
	t.Logf("%d swaps, %d requests (%d POSTs ok), %d failed", len(order), l.requests.Load(), l.posts.Load(), l.failures.Load())
	if n := l.failures.Load(); n != 0 {
		t.Errorf("%d requests failed across %d swaps; first errors:\n%s", n, len(order), strings.Join(l.errs, "\n"))
	}
	if int64(final.Count) != l.posts.Load() {
		t.Errorf("count is %d after %d successful POSTs: the state lost or double-counted %d", final.Count, l.posts.Load(), int64(final.Count)-l.posts.Load())
	}
	if final.Version != "duck" {
		t.Errorf("version is %q after the last swap, want duck", final.Version)
	}
	for _, line := range d.stderr.snapshot() {
		if strings.Contains(line, "swap failed") {
			t.Errorf("a swap failed: %s", line)
		}
	}
}

// reports reads what the generations tell their supervisor on DUCK_REPORT_FD.
func reports(t *testing.T) (*lines, func(*exec.Cmd)) {
	r, w := pipe(t)
	got := &lines{}
	go got.read(r)
	return got, func(cmd *exec.Cmd) {
		cmd.ExtraFiles = []*os.File{w}
		cmd.Env = append(cmd.Env, "DUCK_REPORT_FD=3")
	}
}

// A new generation that dies while it waits for the state (here while the
// old one waits for a running request before freezing) leaves the old one
// serving with its state, which it never froze for good: the running
// request ends there, the count goes on from where it was, the failure is
// reported, and the next swap carries the state.
func TestNewGenerationKilledWhileWaitingForStateLeavesOldServing(t *testing.T) {
	got, withReports := reports(t)
	d := startDuck(t, "stream", nil, withReports)
	for range 3 {
		d.mustCall(http.MethodPost, "/quack")
	}
	// A request that changes state until it ends as far as the SDK knows
	// (not detached): the old generation waits for it before freezing.
	res, err := oneShot.Get("http://" + d.addr + "/stream?parts=30&every=100ms&attached=1")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	stream := bufio.NewReader(res.Body)
	if _, err := stream.ReadString('\n'); err != nil {
		t.Fatal(err)
	}

	old := d.pid()
	mark := d.stderr.len()
	d.signal(old, syscall.SIGHUP)
	d.stderr.waitFor(t, mark, 20*time.Second, "waiting for running requests before freezing", fmt.Sprintf("pid=%d", old))
	var child int
	poll(t, 20*time.Second, "the new generation's process", func() bool {
		kids := childrenOf(old)
		if len(kids) == 1 {
			child = kids[0]
		}
		return child != 0
	})
	d.signal(child, syscall.SIGKILL)
	line := got.waitFor(t, 0, 20*time.Second, `"event":"swap failed"`, fmt.Sprintf(`"pid":%d`, old))
	t.Logf("reported: %s", line)

	// The stream goes on to its end from the old generation.
	parts := 1
	for {
		line, err := stream.ReadString('\n')
		if err != nil {
			break
		}
		if !strings.Contains(line, "from stream") {
			t.Fatalf("stream part %q: want every part from the old generation", line)
		}
		parts++
	}
	if parts != 30 {
		t.Errorf("the stream gave %d parts of 30", parts)
	}
	oldStillServes(t, d, old, 4)
	d.swap("stream")
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 4 {
		t.Errorf("after the next swap GET / = %+v, want count 4", r)
	}
	if n := failedReports(got); n != 1 {
		t.Errorf("%d swap failed reports, want one: %q", n, got.snapshot())
	}
}

// A new version that exits before it asks for the state (here it cannot
// read its version file) is started once more the old way, in case it is
// on an older SDK, fails again, and leaves the old generation serving with
// its state; the failure is reported once.
func TestVersionExitingBeforeAskingLeavesOldServing(t *testing.T) {
	got, withReports := reports(t)
	d := startDuck(t, "duck", nil, withReports)
	for range 3 {
		d.mustCall(http.MethodPost, "/quack")
	}
	old := d.pid()
	if err := os.Remove(d.versionFile); err != nil {
		t.Fatal(err)
	}
	d.signal(old, syscall.SIGHUP)
	line := got.waitFor(t, 0, 20*time.Second, `"event":"swap failed"`, "exited")
	t.Logf("reported: %s", line)
	oldStillServes(t, d, old, 4)
	d.swap("duck-v2")
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 4 || r.Version != "duck-v2" {
		t.Errorf("after swapping to duck-v2 GET / = %+v, want count 4 from duck-v2", r)
	}
	if n := failedReports(got); n != 1 {
		t.Errorf("%d swap failed reports, want one: %q", n, got.snapshot())
	}
}

// failedReports counts the "swap failed" reports among got (the successful swaps also report,
// what they did with their connections).
func failedReports(got *lines) int {
	n := 0
	for _, l := range got.snapshot() {
		if strings.Contains(l, `"event":"swap failed"`) {
			n++
		}
	}
	return n
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var kids []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if kid, err := strconv.Atoi(f); err == nil {
				kids = append(kids, kid)
			}
		}
	}
	return kids
}

// oldStillServes checks that after a failed swap the old generation, old, is still the duck, with
// its state thawed and unchanged: a POST counts want.
func oldStillServes(t *testing.T, d *duck, old, want int) {
	t.Helper()
	if d.pid() != old || !alive(old) {
		t.Fatalf("pid file says %d, old pid %d alive=%v: the old generation should still be the duck", d.pid(), old, alive(old))
	}
	if r := d.mustCall(http.MethodPost, "/quack"); r.Count != want {
		t.Errorf("POST after the failed swap counted %d, want %d: the state should be thawed and unchanged", r.Count, want)
	}
}
