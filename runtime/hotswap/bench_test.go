package hotswap_test

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSwap measures what a client sees while a duck is replaced.
//
// duck/clients=0 and bare/clients=0 time SIGHUP to old process gone with no
// load, for the duck on this SDK and for the bare tableflip server
// (testdata/bare, drains with http.Server.Shutdown).
//
// vegeta=2000rps puts three contenders side by side in one run, each under
// the same load: vegeta attacking open-loop with 2000 POST /quack a second
// (a body, keep-alive, at most 16 connections, no retries; see vegetaLoad),
// which keeps its rate while the server stalls, so a stall is measured in
// every request that was due during it:
//
//   - duck: the duck swapped by this SDK (SIGHUP);
//   - bare: the bare tableflip server swapped by SIGHUP;
//   - restart: the same duck binary stopped with SIGTERM and started again
//     on the same port from its DUCK_STATE_FILE, the plain restart.
//
// Each iteration gives every contender one round, in rotating order so
// that each sees the same noise: start the attack, let it run 200 requests,
// signal, wait until the old process is gone and a new one serves, let it
// run on for 100ms and 200 more requests, stop the attack. Every request's
// start and duration are kept. A request is "during swap" if it overlaps
// the window from the signal to 50ms after the later of old process gone
// and new process Ready (for a restart, Ready is after the old one is
// gone and the gap between is the outage); every other request is "steady".
// Per contender it reports, as <contender>-<metric>:
//
//	gone-p50-ms, gone-p99-ms        signal to old process gone
//	ready-p50-ms, ready-p99-ms      signal to new process Ready (PID file)
//	swapreq-p50-ms, swapreq-p99-ms  latency of requests during swaps
//	steadyreq-p50-ms, -p99-ms       latency of the other requests
//	failed, refused, requests       requests that failed by vegeta's
//	                                metrics (a status other than 200 or an
//	                                error; refused: of them, connection
//	                                refused), all requests
//	req/s                           requests per second vegeta sent
//	countoff                        final count minus POSTs answered 200
//	                                (duck and restart; 0 means exact)
//	conns                           connections vegeta dialled, all rounds
//	                                (each round's attack starts afresh)
//	closed                          of them, closed by the server under
//	                                the client; 0 means every connection
//	                                crossed every swap
//
// and duck/bare-gone-p50-ratio. It also logs the same as a table.
func BenchmarkSwap(b *testing.B) {
	for _, name := range []string{"duck", "bare"} {
		b.Run(name+"/clients=0", func(b *testing.B) { benchSwapIdle(b, name) })
	}
	b.Run(fmt.Sprintf("vegeta=%drps", loadRate), benchSwapUnderLoad)
}

func benchSwapIdle(b *testing.B, name string) {
	d := startDuck(b, name, nil)
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		old := d.pid()
		b.StartTimer()
		start := time.Now()
		d.signal(old, syscall.SIGHUP)
		if !waitExit(old, 30*time.Second) {
			b.Fatalf("old pid %d still running 30s after SIGHUP", old)
		}
		took = append(took, time.Since(start))
		b.StopTimer()
		poll(b, 30*time.Second, "the new generation in the PID file", func() bool { return d.pid() != old })
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(ms(pct(took, 50)), "p50-ms")
	b.ReportMetric(ms(pct(took, 99)), "p99-ms")
}

const (
	loadRate  = 2000 // POSTs a second
	loadConns = 16   // at most, per round
	// A request overlapping [signal, max(gone, ready) + swapTail] is
	// "during swap".
	swapTail = 50 * time.Millisecond
)

func benchSwapUnderLoad(b *testing.B) {
	base := time.Now()
	contenders := []*contender{
		{name: "duck", proc: &swapped{d: startDuck(b, "duck", nil)}, counts: true},
		{name: "bare", proc: &swapped{d: startDuck(b, "bare", nil)}},
		{name: "restart", proc: startRestartable(b), counts: true},
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range contenders {
			contenders[(i+j)%len(contenders)].round(b, base)
		}
	}
	b.StopTimer()

	var table strings.Builder
	fmt.Fprintf(&table, "%d rounds each, vegeta %d POSTs/s open-loop on at most %d keep-alive connections; during swap = overlaps [signal, max(gone, ready)+%s]\n",
		b.N, loadRate, loadConns, swapTail)
	fmt.Fprintf(&table, "%-8s %9s %9s %9s %9s %11s %11s %11s %11s %7s %7s %8s %6s %8s %6s %6s\n",
		"", "gone p50", "gone p99", "ready p50", "ready p99", "swapreq p50", "swapreq p99",
		"steady p50", "steady p99", "failed", "refused", "requests", "req/s", "countoff", "conns", "closed")
	gone := map[string]float64{}
	for _, c := range contenders {
		s := c.summary(b)
		gone[c.name] = s.goneP50
		m := func(v float64, unit string) { b.ReportMetric(v, c.name+"-"+unit) }
		m(s.goneP50, "gone-p50-ms")
		m(s.goneP99, "gone-p99-ms")
		m(s.readyP50, "ready-p50-ms")
		m(s.readyP99, "ready-p99-ms")
		m(s.swapP50, "swapreq-p50-ms")
		m(s.swapP99, "swapreq-p99-ms")
		m(s.steadyP50, "steadyreq-p50-ms")
		m(s.steadyP99, "steadyreq-p99-ms")
		m(float64(s.failed), "failed")
		m(float64(s.refused), "refused")
		m(float64(s.requests), "requests")
		m(s.rate, "req/s")
		m(float64(c.dials), "conns")
		m(float64(c.closed), "closed")
		countoff := "-"
		if c.counts {
			m(float64(s.countOff), "countoff")
			countoff = strconv.Itoa(s.countOff)
		}
		fmt.Fprintf(&table, "%-8s %9.2f %9.2f %9.2f %9.2f %11.2f %11.2f %11.2f %11.2f %7d %7d %8d %6.0f %8s %6d %6d\n",
			c.name, s.goneP50, s.goneP99, s.readyP50, s.readyP99, s.swapP50, s.swapP99,
			s.steadyP50, s.steadyP99, s.failed, s.refused, s.requests, s.rate, countoff, c.dials, c.closed)
		if len(s.errs) > 0 {
			fmt.Fprintf(&table, "  %s, first error: %s\n", c.name, s.errs[0])
		}
	}
	b.ReportMetric(gone["duck"]/gone["bare"], "duck/bare-gone-p50-ratio")
	// testing keeps 10 lines of a benchmark's log across all its runs, and
	// the first run (b.N = 1) only sizes the next: log the run that counts.
	if b.N > 1 || flag.Lookup("test.benchtime").Value.String() == "1x" {
		b.Logf("\n%s", table.String())
	}
}

// cycler is a server that can be replaced while it serves.
type cycler interface {
	addr() string
	// cycle swaps or restarts it and returns how long after the signal
	// the old process was gone and the new one was Ready.
	cycle(b *testing.B) (signalled time.Time, gone, ready time.Duration)
}

// swapped is a tableflip server swapped by SIGHUP.
type swapped struct{ d *duck }

func (s *swapped) addr() string { return s.d.addr }

func (s *swapped) cycle(b *testing.B) (time.Time, time.Duration, time.Duration) {
	old := s.d.pid()
	readyc := make(chan time.Duration, 1)
	start := time.Now()
	s.d.signal(old, syscall.SIGHUP)
	go func() {
		for s.d.pid() == old && time.Since(start) < 30*time.Second {
			time.Sleep(time.Millisecond)
		}
		readyc <- time.Since(start)
	}()
	if !waitExit(old, 30*time.Second) {
		b.Fatalf("old pid %d still running 30s after SIGHUP", old)
	}
	gone := time.Since(start)
	ready := <-readyc
	if s.d.pid() == old {
		b.Fatalf("no new generation 30s after SIGHUP to pid %d", old)
	}
	return start, gone, ready
}

// restartable is the duck binary run the plain way: stopped with SIGTERM
// (it saves its state to DUCK_STATE_FILE) and started again.
type restartable struct {
	b                     *testing.B
	bin, address, pidFile string
	stateFile, stderrFile string
	cmd                   *exec.Cmd
	exited                chan struct{}
	stderr                *os.File
	mu                    sync.Mutex
	running               map[int]*exec.Cmd
}

func startRestartable(b *testing.B) *restartable {
	dir := b.TempDir()
	r := &restartable{
		b:          b,
		bin:        binary(b, "duck"),
		address:    freeAddr(b),
		pidFile:    filepath.Join(dir, "duck.pid"),
		stateFile:  filepath.Join(dir, "state.json"),
		stderrFile: filepath.Join(dir, "stderr"),
		running:    map[int]*exec.Cmd{},
	}
	f, err := os.Create(r.stderrFile)
	if err != nil {
		b.Fatal(err)
	}
	r.stderr = f
	b.Cleanup(func() {
		r.mu.Lock()
		for pid := range r.running {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
		r.mu.Unlock()
		f.Close()
		if b.Failed() {
			out, _ := os.ReadFile(r.stderrFile)
			b.Logf("restarted duck's stderr:\n%s", out)
		}
	})
	r.start()
	poll(b, 20*time.Second, "the duck to become Ready", func() bool { return r.pid() == r.cmd.Process.Pid })
	return r
}

func (r *restartable) start() {
	cmd := exec.Command(r.bin)
	cmd.Env = append(os.Environ(),
		"DUCK_ADDR="+r.address,
		"DUCK_PIDFILE="+r.pidFile,
		"DUCK_STATE_FILE="+r.stateFile,
		"DUCK_VERSION=duck",
	)
	cmd.Stderr = r.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.b.Fatalf("starting the duck: %v", err)
	}
	exited := make(chan struct{})
	r.mu.Lock()
	r.running[cmd.Process.Pid] = cmd
	r.mu.Unlock()
	go func() {
		cmd.Wait()
		r.mu.Lock()
		delete(r.running, cmd.Process.Pid)
		r.mu.Unlock()
		close(exited)
	}()
	r.cmd, r.exited = cmd, exited
}

func (r *restartable) pid() int {
	b, err := os.ReadFile(r.pidFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func (r *restartable) addr() string { return r.address }

func (r *restartable) cycle(b *testing.B) (time.Time, time.Duration, time.Duration) {
	old, exited := r.cmd.Process.Pid, r.exited
	start := time.Now()
	if err := syscall.Kill(old, syscall.SIGTERM); err != nil {
		b.Fatalf("SIGTERM to pid %d: %v", old, err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		b.Fatalf("pid %d still running 30s after SIGTERM", old)
	}
	gone := time.Since(start)
	r.start()
	now := r.cmd.Process.Pid
	for r.pid() != now {
		if time.Since(start) > 30*time.Second {
			b.Fatalf("the restarted duck (pid %d) not Ready after 30s", now)
		}
		time.Sleep(time.Millisecond)
	}
	return start, gone, time.Since(start)
}

// contender is one way of replacing the server, with everything measured
// across its rounds.
type contender struct {
	name     string
	proc     cycler
	counts   bool // it keeps a count of POSTs across replacements
	gone     []time.Duration
	ready    []time.Duration
	windows  [][2]time.Duration // since base: the "during swap" windows
	samples  []sample
	posts    int
	dials    int64
	closed   int64
	errs     []string
	loadTime time.Duration // how long the load ran, all rounds
}

// sample is one request: when it started (since base), how long it took.
type sample struct {
	start, took time.Duration
	failed      bool
	refused     bool
}

// round runs the load against c, replaces the server once under it, and
// keeps the figures.
func (c *contender) round(b *testing.B, base time.Time) {
	l := startVegeta(c.proc.addr(), loadRate, loadConns, base)
	poll(b, 30*time.Second, c.name+": 200 requests before the swap", func() bool { return l.requests.Load() >= 200 })
	signalled, gone, ready := c.proc.cycle(b)
	end := max(gone, ready) + swapTail
	c.gone = append(c.gone, gone)
	c.ready = append(c.ready, ready)
	from := signalled.Sub(base)
	c.windows = append(c.windows, [2]time.Duration{from, from + end})
	after := l.requests.Load()
	time.Sleep(time.Until(signalled.Add(end + 100*time.Millisecond)))
	poll(b, 30*time.Second, c.name+": 200 requests after the swap", func() bool { return l.requests.Load() >= after+200 })
	l.stop()
	c.loadTime += l.ran
	c.samples = append(c.samples, l.samples...)
	c.posts += l.metrics.StatusCodes["200"]
	c.dials += l.dials.Load()
	c.closed += l.peerClosed.Load()
	if n := l.failed(); n != len(l.samples)-l.posts || l.metrics.Requests != uint64(len(l.samples)) {
		b.Fatalf("%s: vegeta's metrics (%d requests, %d failed) disagree with its results (%d, %d)",
			c.name, l.metrics.Requests, n, len(l.samples), len(l.samples)-l.posts)
	}
	for _, e := range l.errs {
		if len(c.errs) < 5 {
			c.errs = append(c.errs, e)
		}
	}
}

type summary struct {
	goneP50, goneP99, readyP50, readyP99   float64
	swapP50, swapP99, steadyP50, steadyP99 float64
	failed, refused, requests, countOff    int
	rate                                   float64
	errs                                   []string
}

func (c *contender) summary(b *testing.B) summary {
	var s summary
	slices.Sort(c.gone)
	slices.Sort(c.ready)
	s.goneP50, s.goneP99 = ms(pct(c.gone, 50)), ms(pct(c.gone, 99))
	s.readyP50, s.readyP99 = ms(pct(c.ready, 50)), ms(pct(c.ready, 99))
	var during, steady []time.Duration
	for _, r := range c.samples {
		s.requests++
		if r.failed {
			s.failed++
			if r.refused {
				s.refused++
			}
			continue
		}
		if overlaps(c.windows, r) {
			during = append(during, r.took)
		} else {
			steady = append(steady, r.took)
		}
	}
	slices.Sort(during)
	slices.Sort(steady)
	s.swapP50, s.swapP99 = ms(pct(during, 50)), ms(pct(during, 99))
	s.steadyP50, s.steadyP99 = ms(pct(steady, 50)), ms(pct(steady, 99))
	if c.counts {
		r, err := do(oneShot, mustRequest(b, http.MethodGet, "http://"+c.proc.addr()+"/"))
		if err != nil {
			b.Fatalf("%s: final count: %v", c.name, err)
		}
		s.countOff = r.Count - c.posts
	}
	s.errs = c.errs
	s.rate = float64(s.requests) / c.loadTime.Seconds()
	return s
}

func overlaps(windows [][2]time.Duration, r sample) bool {
	for _, w := range windows {
		if r.start <= w[1] && r.start+r.took >= w[0] {
			return true
		}
	}
	return false
}

func mustRequest(b *testing.B, method, url string) *http.Request {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	return req
}

// pct is the p-th percentile of sorted, or 0 when it is empty.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[(len(sorted)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
