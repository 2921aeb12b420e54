package hotswap_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

// EnvSkipPython, set to 1, skips the Python clients of the client matrix on
// a machine without python3 (see README). Unset, a missing python3 fails
// the test: the matrix would otherwise pass without one of its clients.
const EnvSkipPython = "HOTSWAP_SKIP_PYTHON"

// client is one client of the matrix: it runs until it has made its
// requests and reports the POSTs answered 200 and what went wrong.
type client struct {
	name  string
	posts atomic.Int64
	mu    sync.Mutex
	errs  []string
	note  string // what else it has to say, for the log
}

func (c *client) fail(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

// swapper swaps d to name again and again, a pause apart, until stopped.
type swapper struct {
	swaps  atomic.Int64
	errs   chan error
	cancel context.CancelFunc
	done   chan struct{}
}

func startSwapping(t testing.TB, d *duck, name string, pause time.Duration) *swapper {
	ctx, cancel := context.WithCancel(context.Background())
	s := &swapper{errs: make(chan error, 1), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			if _, _, err := d.trySwap(name); err != nil {
				s.errs <- err
				return
			}
			s.swaps.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *swapper) stop() {
	s.cancel()
	<-s.done
}

func (s *swapper) err() error {
	select {
	case err := <-s.errs:
		return err
	default:
		return nil
	}
}

// TestClientMatrixLosesNothingAcrossSwaps swaps a duck every 300ms under
// load while clients of every kind use it, each on one keep-alive
// connection it never gives up: a POST with a body cannot be retried, so
// one lost connection is a failed request. Every client must see every
// answer on the same connection (its connection crossed the swaps), and the
// duck's count must equal the POSTs answered.
func TestClientMatrixLosesNothingAcrossSwaps(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil && os.Getenv(EnvSkipPython) != "1" {
		t.Fatalf("python3 not found (%v): install it, or set %s=1 to leave the Python clients out", err, EnvSkipPython)
	}
	binary(t, "stream")
	d := startDuck(t, "stream", nil)
	background := startLoad(t, d.addr, 4, 5*time.Millisecond, 1_000_000, 3*time.Minute)

	var clients []*client
	var wg sync.WaitGroup
	run := func(name string, f func(c *client)) {
		c := &client{name: name}
		clients = append(clients, c)
		wg.Add(1)
		go func() { defer wg.Done(); f(c) }()
	}
	idles := []time.Duration{100 * time.Millisecond, 2 * time.Second, 5 * time.Second}
	if !testing.Short() {
		idles = append(idles, 30*time.Second)
	}
	for _, idle := range idles {
		// 20 s of POSTs, or one idle gap if it is longer; every gap spans
		// swaps.
		n := max(2, int(20*time.Second/idle)+1)
		run(fmt.Sprintf("go idle %s", idle), func(c *client) { goClient(d.addr, idle, n, c) })
	}
	if python != "" {
		for _, idle := range []time.Duration{2 * time.Second, 5 * time.Second} {
			run(fmt.Sprintf("python idle %s", idle), func(c *client) { pythonClient(python, d.addr, idle, 20*time.Second/idle+1, c) })
		}
	}
	if curl, err := exec.LookPath("curl"); err == nil {
		run("curl --rate 1/s", func(c *client) { curlClient(curl, d.addr, 15, c) })
	} else {
		t.Logf("curl not found; the matrix runs without it")
	}
	run("pipelined 3 at a time", func(c *client) { pipelinedClient(d.addr, 3, 60, c) })
	run("slow headers", func(c *client) { slowHeadersClient(d.addr, 30, c) })
	run("streaming responses", func(c *client) { streamingClient(d.addr, 40, c) })
	rate := 2000
	if testing.Short() {
		rate = 1000
	}
	swapping := make(chan *swapper, 1)
	run(fmt.Sprintf("vegeta %d/s", rate), func(c *client) { vegetaClient(d.addr, rate, swapping, c) })

	sw := startSwapping(t, d, "stream", 300*time.Millisecond)
	swapping <- sw
	wg.Wait()
	sw.stop()
	background.stop()
	if err := sw.err(); err != nil {
		t.Fatalf("swapping: %v", err)
	}

	final := d.mustCall(http.MethodGet, "/")
	total := background.posts.Load()
	for _, c := range clients {
		total += c.posts.Load()
		t.Logf("%-22s %4d POSTs answered, %d errors%s", c.name, c.posts.Load(), len(c.errs), c.note)
		for _, e := range c.errs {
			t.Errorf("%s: %s", c.name, e)
		}
	}
	t.Logf("%d swaps; background load: %d requests, %d failed, %d connections", sw.swaps.Load(), background.requests.Load(), background.failures.Load(), background.dials.Load())
	if n := background.failures.Load(); n != 0 {
		t.Errorf("background load: %d requests failed; first errors:\n%s", n, strings.Join(background.errs, "\n"))
	}
	if sw.swaps.Load() < 20 {
		t.Errorf("only %d swaps happened while the clients ran; want at least 20", sw.swaps.Load())
	}
	if int64(final.Count) != total {
		t.Errorf("count is %d after %d POSTs answered: %d lost or counted twice", final.Count, total, int64(final.Count)-total)
	}
	if n := background.dials.Load(); n != 4 {
		t.Errorf("the background load dialled %d connections for 4 clients: connections did not cross the swaps", n)
	}
}

// goClient POSTs n times with idle between, on one connection, with
// retries impossible (a body and no GetBody).
func goClient(addr string, idle time.Duration, n int, c *client) {
	var dials atomic.Int64
	tr := &http.Transport{
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     5 * time.Minute,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for i := range n {
		if i > 0 {
			time.Sleep(idle)
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/quack", strings.NewReader("quack"))
		req.GetBody = nil
		if _, err := do(hc, req); err != nil {
			c.fail("POST %d of %d: %v", i+1, n, err)
			continue
		}
		c.posts.Add(1)
	}
	if d := dials.Load(); d != 1 {
		c.fail("dialled %d connections for %d POSTs: the connection did not cross the swaps", d, n)
	}
}

// The Python client prints the local port of its one connection with each
// answer: a port that changes means http.client reconnected.
const pythonScript = `
import http.client, sys, time
host, port, idle, n = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
conn = http.client.HTTPConnection(host, port, timeout=30)
for i in range(n):
    if i:
        time.sleep(idle)
    try:
        conn.request("POST", "/quack", body=b"quack", headers={"Content-Type": "text/plain"})
        r = conn.getresponse()
        body = r.read()
        print("ANSWER", r.status, conn.sock.getsockname()[1], flush=True)
    except Exception as e:
        print("ERROR", i + 1, type(e).__name__, e, flush=True)
        conn.close()
`

func pythonClient(python, addr string, idle time.Duration, n time.Duration, c *client) {
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command(python, "-c", pythonScript, host, port, strconv.FormatFloat(idle.Seconds(), 'f', -1, 64), strconv.Itoa(int(n))).CombinedOutput()
	if err != nil {
		c.fail("python3: %v\n%s", err, out)
	}
	answersOnOnePort(string(out), int(n), c)
}

// answersOnOnePort counts lines "ANSWER <status> <local port>" and checks
// that there are n, all 200, all on one local port.
func answersOnOnePort(out string, n int, c *client) {
	ports := map[string]bool{}
	answered := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 1 && f[0] == "ERROR":
			c.fail("%s", line)
		case len(f) == 3 && f[0] == "ANSWER":
			answered++
			ports[f[2]] = true
			if f[1] != "200" {
				c.fail("answered %s", f[1])
				continue
			}
			c.posts.Add(1)
		}
	}
	if answered != n {
		c.fail("%d answers to %d POSTs:\n%s", answered, n, out)
	}
	if len(ports) > 1 {
		c.fail("answers came on %d connections (local ports %v): it reconnected", len(ports), ports)
	}
}

// curlClient POSTs n times, one a second, in one curl that keeps its
// connection alive between transfers.
func curlClient(curl, addr string, n int, c *client) {
	args := []string{"-s", "--rate", "60/m", "-d", "quack", "-w", "\nANSWER %{http_code} %{local_port}\n"}
	for range n {
		args = append(args, "http://"+addr+"/quack")
	}
	out, err := exec.Command(curl, args...).CombinedOutput()
	if err != nil {
		c.fail("curl: %v\n%s", err, out)
	}
	answersOnOnePort(string(out), n, c)
}

func readReply(br *bufio.Reader) (int, error) {
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return 0, err
	}
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", res.Status, body)
	}
	if res.Close {
		return 0, fmt.Errorf("answered with Connection: close")
	}
	return res.StatusCode, nil
}

// pipelinedClient writes per requests at once on one connection, then
// reads their answers, rounds times.
func pipelinedClient(addr string, per, rounds int, c *client) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		c.fail("dial: %v", err)
		return
	}
	defer nc.Close()
	br := bufio.NewReader(nc)
	post := "POST /quack HTTP/1.1\r\nHost: duck\r\nContent-Length: 5\r\n\r\nquack"
	for round := range rounds {
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(nc, strings.Repeat(post, per)); err != nil {
			c.fail("round %d: writing: %v", round+1, err)
			return
		}
		for i := range per {
			if _, err := readReply(br); err != nil {
				c.fail("round %d, answer %d: %v", round+1, i+1, err)
				return
			}
			c.posts.Add(1)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// slowHeadersClient sends each POST a piece at a time over about 0.6s, so
// that swaps happen in the middle of its requests.
func slowHeadersClient(addr string, n int, c *client) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		c.fail("dial: %v", err)
		return
	}
	defer nc.Close()
	br := bufio.NewReader(nc)
	pieces := []string{"POST /quack HTTP/1.1\r\n", "Host: duck\r\n", "Content-Type: text/plain\r\n", "Content-Length: 5\r\n", "\r\n", "qua", "ck"}
	for i := range n {
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		for _, p := range pieces {
			if _, err := io.WriteString(nc, p); err != nil {
				c.fail("POST %d: writing: %v", i+1, err)
				return
			}
			time.Sleep(90 * time.Millisecond)
		}
		if _, err := readReply(br); err != nil {
			c.fail("POST %d: %v", i+1, err)
			return
		}
		c.posts.Add(1)
	}
}

// streamingClient reads n streamed responses of 10 parts over 0.2s each,
// interleaved with a POST each, on one connection.
func streamingClient(addr string, n int, c *client) {
	var dials atomic.Int64
	tr := &http.Transport{
		MaxIdleConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, a)
		},
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for i := range n {
		res, err := hc.Get("http://" + addr + "/stream?parts=10&every=20ms")
		if err != nil {
			c.fail("stream %d: %v", i+1, err)
			continue
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK || strings.Count(string(body), "\n") != 10 {
			c.fail("stream %d: %s, %d lines, %v", i+1, res.Status, strings.Count(string(body), "\n"), err)
			continue
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/quack", strings.NewReader("quack"))
		req.GetBody = nil
		if _, err := do(hc, req); err != nil {
			c.fail("POST %d: %v", i+1, err)
			continue
		}
		c.posts.Add(1)
	}
	if d := dials.Load(); d != 1 {
		c.fail("dialled %d connections: the connection did not cross the swaps", d)
	}
}

// vegetaClient attacks the duck with vegeta, open-loop at rate POSTs a
// second on at most 16 keep-alive connections, from the first swap until
// 20 more have happened entirely under the attack. By vegeta's metrics no
// request may fail (every status 200, no error), no connection may be
// closed under it, and it may dial no more than its 16.
func vegetaClient(addr string, rate int, swapping <-chan *swapper, c *client) {
	const maxConns, swaps = 16, 20
	sw := <-swapping
	v := startVegeta(addr, rate, maxConns, time.Now())
	// The swap under way when the attack began may have started before it.
	from := sw.swaps.Load() + 1
	deadline := time.Now().Add(2 * time.Minute)
	for sw.swaps.Load() < from+swaps && time.Now().Before(deadline) {
		select {
		case <-sw.done:
			deadline = time.Now()
		case <-time.After(10 * time.Millisecond):
		}
	}
	time.Sleep(200 * time.Millisecond)
	v.stop()
	under := sw.swaps.Load() - from
	m := &v.metrics
	c.posts.Add(int64(m.StatusCodes["200"]))
	c.note = fmt.Sprintf("; %d requests at %.0f/s across %d swaps, %d connections, latency p50 %s p99 %s max %s, status codes %v",
		m.Requests, m.Rate, under, v.dials.Load(), m.Latencies.P50, m.Latencies.P99, m.Latencies.Max, m.StatusCodes)
	if n := v.failed(); n != 0 || len(m.Errors) != 0 {
		c.fail("%d of %d requests failed: status codes %v, errors %q", n, m.Requests, m.StatusCodes, m.Errors)
	}
	if under < swaps {
		c.fail("only %d swaps happened entirely under the attack; want at least %d", under, swaps)
	}
	if m.Rate < float64(rate)/2 {
		c.fail("vegeta sent %.0f requests a second, less than half the %d asked for", m.Rate, rate)
	}
	if n := v.peerClosed.Load(); n != 0 {
		c.fail("the server closed %d connections under vegeta", n)
	}
	if n := v.dials.Load(); n > maxConns {
		c.fail("vegeta dialled %d connections, more than its %d: connections were lost", n, maxConns)
	}
}

// An old generation must not wait for idle keep-alive clients: their
// connections move at once, so it is gone long before a client idle for a
// minute speaks again, and the client finds its connection still open.
func TestOldGenerationExitsWithIdleClientsConnected(t *testing.T) {
	reported, withReports := reports(t)
	d := startDuck(t, "duck", nil, withReports)
	const clients = 5
	conns := make([]net.Conn, clients)
	readers := make([]*bufio.Reader, clients)
	post := "POST /quack HTTP/1.1\r\nHost: duck\r\nContent-Length: 5\r\n\r\nquack"
	for i := range conns {
		nc, br := dialRaw(t, d.addr)
		conns[i], readers[i] = nc, br
		io.WriteString(nc, post)
		if _, err := readReply(readers[i]); err != nil {
			t.Fatalf("client %d, first POST: %v", i, err)
		}
	}
	mark := d.stderr.len()
	old := d.pid()
	d.install("duck-v2")
	d.signal(old, syscall.SIGHUP)
	// The clients stay silent until the old generation is gone.
	if !waitExit(old, 20*time.Second) {
		t.Fatalf("old generation pid %d still running 20s after SIGHUP with %d idle clients", old, clients)
	}
	line := d.stderr.waitFor(t, mark, 5*time.Second, "exiting: handed over", fmt.Sprintf("pid=%d", old))
	if !strings.Contains(line, fmt.Sprintf("connections_moved=%d", clients)) || !strings.Contains(line, "connections_fell_back=0") {
		t.Errorf("the old generation should have moved all %d connections: %s", clients, line)
	}
	if got := handedOver(t, reported, old); got.Moved != clients || len(got.FellBack) != 0 {
		t.Errorf("the old generation reported %+v to its supervisor, want %d moved and none fallen back", got, clients)
	}
	noDrainWait(t, d, mark)
	for i, nc := range conns {
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(nc, post)
		if _, err := readReply(readers[i]); err != nil {
			t.Errorf("client %d, POST on its old connection after the swap: %v", i, err)
		}
	}
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 2*clients || r.Version != "duck-v2" {
		t.Errorf("GET / = %+v, want count %d from duck-v2", r, 2*clients)
	}
}

// A connection whose requests the SDK cannot frame stays with the old
// generation and falls back to the way before connections moved: its next
// request is forwarded and answered with "Connection: close". The log says
// which connection fell back and why, and the exit line counts it.
func TestUnframeableConnectionFallsBackToForwarding(t *testing.T) {
	reported, withReports := reports(t)
	d := startDuck(t, "duck", nil, withReports)
	nc, br := dialRaw(t, d.addr)
	// net/http ignores Transfer-Encoding on HTTP/1.0 and reads 5 bytes by
	// Content-Length; the framer will not guess which it is.
	post := "POST /quack HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nquack"
	io.WriteString(nc, post)
	if _, err := readReply(br); err != nil {
		t.Fatalf("first POST: %v", err)
	}
	mark := d.stderr.len()
	old, _ := d.swapStarted("duck-v2")

	io.WriteString(nc, post)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("POST after the swap on the connection that stayed: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !res.Close {
		t.Errorf("POST after the swap: %s, Connection: close=%v; want 200 and close", res.Status, res.Close)
	}
	if !waitExit(old, 20*time.Second) {
		t.Fatalf("old generation pid %d still running", old)
	}
	d.stderr.waitFor(t, mark, 5*time.Second, "connection stays with this generation", "cannot frame its requests")
	d.stderr.waitFor(t, mark, 5*time.Second, "exiting: handed over", fmt.Sprintf("pid=%d", old), "connections_moved=0", "connections_fell_back=1", "requests_forwarded=1")
	if got := handedOver(t, reported, old); got.Moved != 0 || got.FellBack[hotswap.FallbackUnframeable] != 1 || len(got.FellBack) != 1 || got.Forwarded != 1 {
		t.Errorf("the old generation reported %+v to its supervisor, want one connection fallen back as %q and one request forwarded", got, hotswap.FallbackUnframeable)
	}
	if r := d.mustCall(http.MethodGet, "/"); r.Count != 2 || r.Version != "duck-v2" {
		t.Errorf("GET / = %+v, want count 2 from duck-v2", r)
	}
}

// A long request running when a swap begins holds no one else's: the stream's handler detaches
// it from the state (hotswap.Detach), so the state is handed over without waiting for it, and
// the new generation answers another client while the stream goes on from the old one. The
// stream lasts until the test closes it, so the order of events is what the test checks, not a
// duration: before Detach the new generation could not start until the stream had ended.
func TestLongRequestHoldsNoOneAcrossSwap(t *testing.T) {
	d := startDuck(t, "stream", nil)
	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	posts := 0
	post := func() reply {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+d.addr+"/quack", strings.NewReader("quack"))
		req.GetBody = nil
		r, err := do(hc, req)
		if err != nil {
			t.Fatalf("POST %d: %v", posts+1, err)
		}
		posts++
		return r
	}
	post()

	// About 10 s of parts unless closed; the test closes it well before.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.addr+"/stream?parts=1000&every=10ms", nil)
	res, err := oneShot.Do(req)
	if err != nil {
		t.Fatalf("GET /stream: %v", err)
	}
	defer res.Body.Close()
	stream := bufio.NewReader(res.Body)
	part := func() string {
		t.Helper()
		line, err := stream.ReadString('\n')
		if err != nil {
			t.Fatalf("the stream ended before the test closed it (after %q): %v", line, err)
		}
		return strings.TrimSpace(line)
	}
	part()

	old := d.pid()
	if err := os.WriteFile(d.versionFile, []byte("stream-2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(old, syscall.SIGHUP)
	// Read the stream meanwhile, so that the old generation's writes never block.
	var got atomic.Int64
	ended := make(chan struct{})
	var wrong atomic.Value
	go func() {
		defer close(ended)
		for {
			line, err := stream.ReadString('\n')
			if err != nil {
				return
			}
			if !strings.HasSuffix(strings.TrimSpace(line), "from stream") {
				wrong.CompareAndSwap(nil, line)
			}
			got.Add(1)
		}
	}()
	poll(t, 30*time.Second, "an answer from the new generation", func() bool {
		return post().Version == "stream-2"
	})
	select {
	case <-ended:
		t.Fatalf("the stream ended before the new generation answered another client: the long request held the swap")
	default:
	}
	// The new generation has answered; the stream goes on, from the old generation.
	after := got.Load()
	poll(t, 20*time.Second, "three more parts of the stream", func() bool {
		select {
		case <-ended:
			t.Fatalf("the stream ended before the test closed it")
		default:
		}
		return got.Load() >= after+3
	})
	if line := wrong.Load(); line != nil {
		t.Fatalf("stream part %q: want every part from the old generation (version stream)", line)
	}
	d.stderr.waitFor(t, 0, 5*time.Second, "swap: state frozen", fmt.Sprintf("pid=%d", old), "requests_detached=1")
	cancel()
	if !waitExit(old, 20*time.Second) {
		t.Fatalf("old generation pid %d still running 20s after its stream was closed", old)
	}
	if r := d.mustCall(http.MethodGet, "/"); r.Count != posts || r.Version != "stream-2" {
		t.Errorf("GET / = %+v, want count %d from stream-2", r, posts)
	}
}

// A request whose line and headers are only partly received when a swap begins does not keep
// the old generation alive: its connection moves at once with the bytes read of it, and the new
// generation answers the whole request. The client sends the rest only once the old generation
// is gone, so the order is what the test checks; before bytes moved, the old generation waited
// for the request and, after its drain bound, closed the connection under it.
func TestHalfSentRequestMovesWithItsBytes(t *testing.T) {
	d := startDuck(t, "duck", nil)
	nc, br := dialRaw(t, d.addr)
	// One write: the server reads the POST's start with the GET, which it answers.
	io.WriteString(nc, "GET / HTTP/1.1\r\nHost: duck\r\n\r\nPOST /quack HTTP/1.1\r\nHost: duck\r\n")
	if _, err := readReply(br); err != nil {
		t.Fatalf("GET: %v", err)
	}
	mark := d.stderr.len()
	old := d.pid()
	d.install("duck-v2")
	d.signal(old, syscall.SIGHUP)
	if !waitExit(old, 20*time.Second) {
		t.Fatalf("old generation pid %d still running 20s after SIGHUP", old)
	}
	d.stderr.waitFor(t, mark, 5*time.Second, "exiting: handed over", fmt.Sprintf("pid=%d", old),
		"connections_moved=1", "connections_moved_mid_request=1", "requests_forwarded=0")
	io.WriteString(nc, "Content-Length: 5\r\n\r\nquack")
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the POST whose start was read before the swap: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"version":"duck-v2"`) || !strings.Contains(string(body), `"count":1`) {
		t.Errorf("the POST whose start was read before the swap: %s %s; want 200, count 1 from duck-v2", res.Status, body)
	}
	noDrainWait(t, d, mark)
}

// A request whose body is still coming when it reaches the server during a swap does not run
// in the old generation, which would then live until the client sent the rest: it waits for the
// swap's outcome and moves with its connection, carrying its headers and the part of its body
// read, and the new generation runs it whole. A stream that does not detach holds the swap open
// long enough for the request's headers to arrive during it. The client sends the rest of the
// body only once the old generation is gone, so the order is what the test checks; before, the
// old generation answered the request and then waited for the rest of its body (up to its drain
// bound and 5 s more).
func TestHalfSentBodyMovesWithItsBytes(t *testing.T) {
	d := startDuck(t, "stream", nil)
	nc, br := dialRaw(t, d.addr)
	// The POST's start, read by the old generation before the swap: its headers are not done.
	io.WriteString(nc, "POST /quack HTTP/1.1\r\nHost: duck\r\n")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.addr+"/stream?parts=10&every=100ms&attached=1", nil)
	res, err := oneShot.Do(req)
	if err != nil {
		t.Fatalf("GET /stream: %v", err)
	}
	defer res.Body.Close()
	go io.Copy(io.Discard, res.Body)

	mark := d.stderr.len()
	old := d.pid()
	if err := os.WriteFile(d.versionFile, []byte("stream-2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(old, syscall.SIGHUP)
	d.stderr.waitFor(t, mark, 20*time.Second, "swap: waiting for running requests before freezing", fmt.Sprintf("pid=%d", old), "requests_running=1")
	// The headers end, and half the body comes, while the stream holds the swap.
	io.WriteString(nc, "Content-Length: 5\r\n\r\nqu")
	// The stream ends after a second; the old generation must then go without the rest.
	if !waitExit(old, 20*time.Second) {
		t.Fatalf("old generation pid %d still running 20s after SIGHUP, waiting for a body", old)
	}
	d.stderr.waitFor(t, mark, 5*time.Second, "exiting: handed over", fmt.Sprintf("pid=%d", old),
		"connections_moved_mid_request=1", "requests_forwarded=0")
	io.WriteString(nc, "ack")
	res2, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the POST whose body was half sent across the swap: %v", err)
	}
	body, _ := io.ReadAll(res2.Body)
	res2.Body.Close()
	if res2.StatusCode != http.StatusOK || !strings.Contains(string(body), `"version":"stream-2"`) || !strings.Contains(string(body), `"count":1`) {
		t.Errorf("the POST whose body was half sent across the swap: %s %s; want 200, count 1 from stream-2", res2.Status, body)
	}
	noDrainWait(t, d, mark)
}

// dialRaw opens a plain TCP connection to addr for a test that writes HTTP by hand, closed when
// the test ends and bounded so that a lost answer fails the test rather than hangs it.
func dialRaw(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return nc, bufio.NewReader(nc)
}

// noDrainWait fails t if, after line mark of d's log, an old generation waited out its drain
// bound: every connection should have moved without it.
func noDrainWait(t *testing.T, d *duck, mark int) {
	t.Helper()
	for _, l := range d.stderr.snapshot()[mark:] {
		if strings.Contains(l, "drain bound passed") {
			t.Errorf("the old generation waited out its drain bound: %s", l)
		}
	}
}

// handedOver waits for generation pid's hotswap.EventHandedOver report on the report pipe and returns
// what it says of its connections.
func handedOver(t *testing.T, reported *lines, pid int) hotswap.Connections {
	t.Helper()
	line := reported.waitFor(t, 0, 5*time.Second, `"event":"`+hotswap.EventHandedOver+`"`, fmt.Sprintf(`"pid":%d`, pid))
	var rep hotswap.Report
	if err := json.Unmarshal([]byte(line), &rep); err != nil || rep.Connections == nil {
		t.Fatalf("report %q: %v, or no connections in it", line, err)
	}
	return *rep.Connections
}
