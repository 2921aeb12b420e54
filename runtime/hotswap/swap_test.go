package hotswap_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// load is keep-alive HTTP clients, one connection each, alternating GET /
// and POST /quack until stopped or their budget is spent.
type load struct {
	posts    atomic.Int64 // POSTs answered 200
	requests atomic.Int64
	failures atomic.Int64
	dials    atomic.Int64
	mu       sync.Mutex
	errs     []string
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func startLoad(t testing.TB, addr string, clients int, every time.Duration, perClient int, budget time.Duration) *load {
	l := &load{}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	l.cancel = cancel
	for i := 0; i < clients; i++ {
		tr := &http.Transport{
			MaxIdleConnsPerHost: 1,
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
				l.dials.Add(1)
				return (&net.Dialer{}).DialContext(ctx, network, a)
			},
		}
		c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer tr.CloseIdleConnections()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for n := 0; n < perClient; n++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				method, path := http.MethodGet, "/"
				if n%2 == 1 {
					method, path = http.MethodPost, "/quack"
				}
				req, _ := http.NewRequest(method, "http://"+addr+path, nil)
				_, err := do(c, req)
				l.requests.Add(1)
				if err != nil {
					l.failures.Add(1)
					l.mu.Lock()
					if len(l.errs) < 20 {
						l.errs = append(l.errs, err.Error())
					}
					l.mu.Unlock()
					continue
				}
				if method == http.MethodPost {
					l.posts.Add(1)
				}
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

func TestSwapUnderLoadLosesNothing(t *testing.T) {
	binary(t, "duck-v2")
	d := startDuck(t, "duck", nil)
	const swaps = 20
	// 8 clients at up to 1000 requests/s each, as fast as two shared cores
	// allow; the budget only stops a hung run.
	l := startLoad(t, d.addr, 8, time.Millisecond, 50_000, 3*time.Minute)
	var took []time.Duration
	for i := 0; i < swaps; i++ {
		// Every swap happens with every client's connection busy.
		before := l.requests.Load()
		poll(t, 30*time.Second, "the clients to make 200 more requests", func() bool {
			return l.requests.Load() >= before+200
		})
		next := "duck-v2"
		if i%2 == 1 {
			next = "duck"
		}
		start := time.Now()
		d.swap(next)
		took = append(took, time.Since(start))
	}
	before := l.requests.Load()
	poll(t, 30*time.Second, "requests after the last swap", func() bool { return l.requests.Load() >= before+50 })
	l.stop()

	final := d.mustCall(http.MethodGet, "/")
	t.Logf("%d swaps, %d requests (%d POSTs ok), %d connections dialled, %d failed; swaps took %v",
		swaps, l.requests.Load(), l.posts.Load(), l.dials.Load(), l.failures.Load(), took)
	if n := l.failures.Load(); n != 0 {
		t.Errorf("%d requests failed across %d swaps; first errors:\n%s", n, swaps, strings.Join(l.errs, "\n"))
	}
	if int64(final.Count) != l.posts.Load() {
		t.Errorf("count is %d after %d successful POSTs: the state lost or double-counted %d", final.Count, l.posts.Load(), int64(final.Count)-l.posts.Load())
	}
	if final.Version != "duck" {
		t.Errorf("version is %q after the last swap, want duck", final.Version)
	}
	// Keep-alive was really in use: far fewer connections than requests.
	if l.dials.Load()*10 > l.requests.Load() {
		t.Errorf("%d connections for %d requests: the clients were not keeping connections alive", l.dials.Load(), l.requests.Load())
	}
}

func TestQuackNumberCarriesAcrossSwap(t *testing.T) {
	d := startDuck(t, "duck", []string{"DUCK_INTERVAL=20ms"})
	d.stdout.waitFor(t, 0, 20*time.Second, "Quack! #5 (duck)")
	d.swap("duck-v2")
	d.stdout.waitFor(t, 0, 20*time.Second, "QUACK!! #", "(duck-v2)")
	first := d.stdout.len()
	d.stdout.waitFor(t, first, 20*time.Second, "QUACK!!")

	quack := regexp.MustCompile(`^(Quack!|QUACK!!) #(\d+) \((duck|duck-v2)\)$`)
	switched := 0
	prev := ""
	for i, line := range d.stdout.snapshot() {
		m := quack.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unexpected stdout line %q", line)
		}
		if n, _ := strconv.Atoi(m[2]); n != i+1 {
			t.Fatalf("line %d is %q: the quack number should be %d (no reset, no repeat, no gap)", i+1, line, i+1)
		}
		if prev != "" && m[1] != prev {
			switched++
		}
		prev = m[1]
	}
	if switched != 1 || prev != "QUACK!!" {
		t.Errorf("the voice changed %d times ending with %q; want one change to QUACK!!", switched, prev)
	}
}

// A swap to a bad version must leave the old generation serving with its
// state, and say why on stderr.
func TestCrashingVersionLeavesOldDuckServing(t *testing.T) {
	d := startDuck(t, "duck", nil)
	for range 3 {
		d.mustCall(http.MethodPost, "/quack")
	}
	old, mark := d.startSwap("duck-crash")
	line := d.stderr.waitFor(t, mark, 20*time.Second, "swap failed", "exit status 3")
	t.Logf("reported: %s", line)

	if d.pid() != old || !alive(old) {
		t.Fatalf("pid file says %d, old pid %d alive=%v: the old generation should still be the duck", d.pid(), old, alive(old))
	}
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 3 || r.Version != "duck" {
		t.Errorf("after the failed swap GET / = %+v, want count 3 from version duck", r)
	}
	if r := d.mustCall(http.MethodPost, "/quack"); r.Count != 4 {
		t.Errorf("POST after the failed swap counted %d, want 4: the state should be thawed", r.Count)
	}
	// And the next good version still takes over with the state.
	d.swap("duck-v2")
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 4 || r.Version != "duck-v2" {
		t.Errorf("after swapping to duck-v2 GET / = %+v, want count 4 from duck-v2", r)
	}
}

func TestHangingVersionTimesOutAndOldDuckCarriesOn(t *testing.T) {
	d := startDuck(t, "duck", []string{"DUCK_READY_TIMEOUT=2s", "DUCK_INTERVAL=50ms"})
	d.mustCall(http.MethodPost, "/quack")
	d.mustCall(http.MethodPost, "/quack")
	old, mark := d.startSwap("duck-hang")
	d.stderr.waitFor(t, mark, 20*time.Second, "duck-hang: never becoming Ready")

	// While the swap decides: a second SIGHUP is ignored, and a request is
	// answered (the new generation's setup runs before it asks for the state).
	d.signal(old, syscall.SIGHUP)
	held := make(chan reply, 1)
	heldErr := make(chan error, 1)
	go func() {
		r, err := d.call(http.MethodPost, "/quack")
		held <- r
		heldErr <- err
	}()
	d.stderr.waitFor(t, mark, 20*time.Second, "SIGHUP ignored: a swap is already in progress")
	line := d.stderr.waitFor(t, mark, 20*time.Second, "swap failed", "timed out")
	t.Logf("reported: %s", line)

	if r, err := <-held, <-heldErr; err != nil || r.Count != 3 {
		t.Errorf("the POST held during the swap got %+v, %v; want count 3", r, err)
	}
	if d.pid() != old || !alive(old) {
		t.Fatalf("pid file says %d, old pid %d alive=%v: the old generation should still be the duck", d.pid(), old, alive(old))
	}
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 3 || r.Version != "duck" {
		t.Errorf("after the failed swap GET / = %+v, want count 3 from version duck", r)
	}
	// The old duck quacks on after thawing.
	d.stdout.waitFor(t, d.stdout.len(), 20*time.Second, "Quack!")
}

// TestSetupThatHangsHoldsNoRequest: a new generation runs its setup before it asks for the
// state, while the old one serves on, so a version whose setup hangs (or takes its time) holds
// no request: the old generation answers throughout, freezes nothing, and carries on when the
// ready timeout ends the swap. Before, the state was asked for first, and every request waited
// for the ready timeout (10 s by default) behind the hanging setup.
func TestSetupThatHangsHoldsNoRequest(t *testing.T) {
	d := startDuck(t, "duck", []string{"DUCK_READY_TIMEOUT=4s"})
	d.mustCall(http.MethodPost, "/quack")
	old, mark := d.startSwap("duck-hang")
	d.stderr.waitFor(t, mark, 20*time.Second, "duck-hang: never becoming Ready")
	for i := range 5 {
		if r := d.mustCall(http.MethodPost, "/quack"); r.Count != 2+i || r.Version != "duck" {
			t.Fatalf("POST %d during the hanging setup = %+v, want count %d from duck", i, r, 2+i)
		}
	}
	// Answered while the swap is still undecided: none waited for its end.
	for _, l := range d.stderr.snapshot()[mark:] {
		if strings.Contains(l, "swap failed") || strings.Contains(l, "state frozen") {
			t.Fatalf("before the five POSTs were answered the old generation logged %q: they waited for the swap", l)
		}
	}
	d.stderr.waitFor(t, mark, 20*time.Second, "swap failed", "did not become Ready within 4s")
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 6 || r.Version != "duck" || d.pid() != old {
		t.Errorf("after the failed swap GET / = %+v from PID %d, want count 6 from duck, PID %d", r, d.pid(), old)
	}
}

// TestSetupFailingBeforeTheStateFreezesNothing: a new generation whose setup fails before it
// reads the state ends the swap then and there: the old generation, greeted through the gate,
// knows it is on this SDK and does not start it a second time the way an older SDK's needs
// (state written first, requests held); it froze nothing, and one failure is reported.
func TestSetupFailingBeforeTheStateFreezesNothing(t *testing.T) {
	got, withReports := reports(t)
	d := startDuck(t, "duck", []string{"DUCK_CRASH_BEFORE_STATE=1"}, withReports)
	for range 3 {
		d.mustCall(http.MethodPost, "/quack")
	}
	old, mark := d.startSwap("duck-crash")
	line := got.waitFor(t, 0, 20*time.Second, `"event":"swap failed"`, "exit status 3")
	t.Logf("reported: %s", line)
	oldStillServes(t, d, old, 4)
	if n := failedReports(got); n != 1 {
		t.Errorf("%d swap failed reports, want one: %q", n, got.snapshot())
	}
	starts := 0
	for _, l := range d.stderr.snapshot()[mark:] {
		if strings.Contains(l, "state frozen") || strings.Contains(l, "state written first") {
			t.Errorf("the old generation logged %q: it froze for a setup that failed before it asked", l)
		}
		if strings.Contains(l, "duck-crash: crashing") {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("the failing version started %d times, want once", starts)
	}
}

func TestBrokenVersionDoesNotBuild(t *testing.T) {
	_, err := build(t, "duck-broken")
	if err == nil {
		t.Fatal("duck-broken built; it should fail to compile")
	}
	if !strings.Contains(err.Error(), "cannot use") {
		t.Errorf("the build error should carry the compiler's message, got: %v", err)
	}
}

func TestMigrationConvertsStateByValue(t *testing.T) {
	d := startDuck(t, "duck", []string{"DUCK_INTERVAL=20ms"})
	for range 5 {
		d.mustCall(http.MethodPost, "/quack")
	}
	d.stdout.waitFor(t, 0, 20*time.Second, "Quack! #3 (duck)")
	d.swap("duck-migrate")

	r := d.mustCall(http.MethodGet, "/")
	if r.State.Posts.Total != 5 || r.Count != 5 {
		t.Errorf("posts.total = %d, count = %d after migrating; want 5 from schema 1's count", r.State.Posts.Total, r.Count)
	}
	if r.State.MigratedFrom != 1 || r.State.Note != "migrated from schema 1" {
		t.Errorf("migrated_from = %d, note = %q; want 1 and the migration note", r.State.MigratedFrom, r.State.Note)
	}
	if r.State.Lines < 3 {
		t.Errorf("lines = %d after migrating; want at least the 3 quacks printed before", r.State.Lines)
	}
	if r := d.mustCall(http.MethodPost, "/quack"); r.State.Posts.Total != 6 {
		t.Errorf("POST after migrating counted %d, want 6", r.State.Posts.Total)
	}
	d.stderr.waitFor(t, 0, 5*time.Second, "state migrated", "from_schema=1", "to_schema=2")

}

// State goes back too: a swap from schema 2 back to schema 1 keeps the
// count through schema 2's Downgrade, and up again through its Migrate;
// the quack number carries across all three.
func TestStateGoesDownAndUpAgain(t *testing.T) {
	d := startDuck(t, "duck", []string{"DUCK_INTERVAL=20ms"})
	post := func(want int, after string) {
		t.Helper()
		if r := d.mustCall(http.MethodPost, "/quack"); r.Count != want {
			t.Errorf("POST after %s counted %d, want %d", after, r.Count, want)
		}
	}
	for i := range 3 {
		post(i+1, "the start")
	}
	// Each version quacks before the next swap, so the line count goes
	// through every schema too.
	quacked := func(voice string) {
		t.Helper()
		d.stdout.waitFor(t, d.stdout.len(), 20*time.Second, voice)
	}
	quacked("Quack! #")
	d.swap("duck-migrate")
	post(4, "going up to schema 2")
	quacked("Quack, migrated! #")
	mark := d.stderr.len()
	d.swap("duck")
	d.stderr.waitFor(t, mark, 5*time.Second, "state downgraded", "from_schema=2", "to_schema=1")
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 4 || r.Version != "duck" {
		t.Errorf("after going back to schema 1 GET / = %+v, want count 4 from duck", r)
	}
	post(5, "going back down to schema 1")
	quacked("Quack! #")
	d.swap("duck-migrate")
	post(6, "going up again")
	quacked("Quack, migrated! #")
	if r := d.mustCall(http.MethodGet, "/"); r.State.MigratedFrom != 1 {
		t.Errorf("after going up again migrated_from = %d, want 1", r.State.MigratedFrom)
	}
	// The quack numbers never restarted or repeated: lines went down and
	// up with the count.
	last := 0
	for _, line := range d.stdout.snapshot() {
		i := strings.Index(line, "#")
		j := strings.Index(line, " (")
		if i < 0 || j < i {
			t.Fatalf("unexpected stdout line %q", line)
		}
		n, err := strconv.Atoi(line[i+1 : j])
		if err != nil || n != last+1 {
			t.Fatalf("quack line %q after #%d: the number should go on by one", line, last)
		}
		last = n
	}
}

// Going back to a schema the newer version cannot produce (no Downgrade)
// is refused with what to do, and the newer version carries on.
func TestGoingBackWithoutDowngradeIsRefused(t *testing.T) {
	d := startDuck(t, "duck-migrate", nil)
	d.mustCall(http.MethodPost, "/quack")
	d.swap("oneway")
	d.mustCall(http.MethodPost, "/quack")
	_, mark := d.startSwap("duck-migrate")
	d.stderr.waitFor(t, mark, 20*time.Second, "swap failed")
	d.stderr.waitFor(t, mark, 5*time.Second, "migrating state from schema 3 to 2", "the version that wrote it has no Config.Downgrade to schema 2")
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 2 || r.Version != "oneway" {
		t.Errorf("after the refused swap back GET / = %+v, want count 2 from oneway", r)
	}
}

// The supervisor holds the write end of the lifeline; when it goes, so
// does the duck, whichever generation is running, and the state is saved
// for the next start.
func TestLifelineEndsEveryGeneration(t *testing.T) {
	for _, swaps := range []int{0, 1} {
		t.Run(fmt.Sprintf("after %d swaps", swaps), func(t *testing.T) {
			stateFile := filepath.Join(t.TempDir(), "state.json")
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			env := []string{"DUCK_LIFELINE_FD=3", "DUCK_STATE_FILE=" + stateFile}
			d := startDuck(t, "duck", env, func(c *exec.Cmd) { c.ExtraFiles = []*os.File{r} })
			r.Close()
			d.mustCall(http.MethodPost, "/quack")
			for range swaps {
				d.swap("duck-v2")
			}
			d.mustCall(http.MethodPost, "/quack")
			last := d.pid()

			w.Close()
			if !waitExit(last, 20*time.Second) {
				t.Fatalf("pid %d still running 20s after the lifeline closed", last)
			}
			d.stderr.waitFor(t, 0, 5*time.Second, "stopping", "lifeline closed")

			// A supervisor that comes back starts the duck from the saved state.
			again := startDuck(t, "duck", []string{"DUCK_STATE_FILE=" + stateFile})
			if r := again.mustCall(http.MethodGet, "/"); r.Count != 2 {
				t.Errorf("restarted duck counts %d, want the 2 POSTs saved at stop", r.Count)
			}
		})
	}
}

// The state saved at a stop carries the older schemas' renderings too, so
// a node that comes back on the older version starts from it.
func TestOlderVersionRestartsFromNewerSavedState(t *testing.T) {
	stateFile := filepath.Join(t.TempDir(), "state.json")
	d := startDuck(t, "duck-migrate", []string{"DUCK_STATE_FILE=" + stateFile})
	d.mustCall(http.MethodPost, "/quack")
	d.mustCall(http.MethodPost, "/quack")
	last := d.pid()
	d.signal(last, syscall.SIGTERM)
	if !waitExit(last, 20*time.Second) {
		t.Fatalf("pid %d still running 20s after SIGTERM", last)
	}
	again := startDuck(t, "duck", []string{"DUCK_STATE_FILE=" + stateFile})
	if r := again.mustCall(http.MethodGet, "/"); r.Count != 2 || r.Version != "duck" {
		t.Errorf("duck started from duck-migrate's saved state: GET / = %+v, want count 2", r)
	}
	again.stderr.waitFor(t, 0, 5*time.Second, "state downgraded", "from_schema=2", "to_schema=1")
}

// Swaps leave nothing beside the PID file: the second name each new generation gives the file it
// replaces goes once the old generation has exited, and nothing it wrote ahead stays.
func TestSwapsLeaveOnlyThePIDFile(t *testing.T) {
	d := startDuck(t, "duck", nil)
	for i := range 3 {
		old, _ := d.swap("duck")
		var left []string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			left, _ = filepath.Glob(d.pidFile + ".*")
			if len(left) == 0 || time.Now().After(deadline) {
				break
			}
		}
		if len(left) != 0 {
			t.Fatalf("swap %d (old generation %d gone): %v still beside the PID file 10 s later", i+1, old, left)
		}
	}
}
