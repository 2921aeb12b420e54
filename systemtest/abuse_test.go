package systemtest

import (
	"context"
	"crypto/tls"
	"github.com/duckraft/duckraft/api"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/duckraft/duckraft/localcluster"
)

// strangers holds connections to a node from someone without the cookie.
type strangers struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (s *strangers) add(c net.Conn) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

func (s *strangers) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// idle opens n connections to addr that say nothing; with tlsHello they complete TLS first and
// then say nothing (half-way through the cookie exchange).
func (s *strangers) idle(t *testing.T, addr string, n int, tlsHello bool) {
	t.Helper()
	for i := 0; i < n; i++ {
		var c net.Conn
		var err error
		if tlsHello {
			c, err = tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		} else {
			c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		}
		if err != nil {
			// The node may already have dropped it; what matters is that it serves members.
			continue
		}
		s.add(c)
	}
}

// raiseFileLimit lets this test hold thousands of connections.
func raiseFileLimit(t *testing.T, want uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= want {
		return
	}
	lim.Cur = min(want, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < want {
		t.Fatalf("this test holds %d connections; the file limit is %d (hard %d): raise it (ulimit -n) to run it", want, lim.Cur, lim.Max)
	}
}

// Thousands of connections without the cookie, idle in clear and silent after TLS, on the API,
// Raft and metrics ports, plus a stream of new ones while members talk: the node keeps serving its
// members (Raft commits through it) and its clients, and counts what it refused.
func TestStrangersConnectionsLeaveNodeServing(t *testing.T) {
	raiseFileLimit(t, 8000)
	c := &localcluster.Cluster{Bin: bin, Root: reachableTempDir(t), Cookie: randomCookie()}
	t.Cleanup(func() { c.StopAll(20 * time.Second) })
	a, err := c.Start("a", "--metrics-addr", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Start("b")
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*localcluster.Node{a, b}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("--- log of node %s:\n%s", n.Name, n.Log())
			}
		}
	})
	connectAll(t, c, nodes)

	var s strangers
	t.Cleanup(s.closeAll)
	metricsHost := strings.TrimPrefix(strings.TrimSuffix(a.Metrics, "/metrics"), "http://")
	s.idle(t, a.API, 1000, false)
	s.idle(t, a.Raft, 1000, false)
	s.idle(t, a.API, 200, true)
	s.idle(t, a.Raft, 200, true)
	s.idle(t, metricsHost, 200, false)
	t.Logf("holding %d connections without the cookie", len(s.conns))

	// And more keep coming, at a bounded rate, while the checks below run.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 1500; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			target := a.API
			if i%2 == 1 {
				target = a.Raft
			}
			if c, err := net.DialTimeout("tcp", target, time.Second); err == nil {
				s.add(c)
			}
		}
	}()
	stopStream := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopStream()

	served := func(when string) {
		t.Helper()
		for _, n := range nodes {
			ms := members(c, n.API)
			if len(ms) != 2 || leaderOf(ms) == "" || !strings.Contains(view(ms), "a:") || strings.Contains(view(ms), ":false:") {
				t.Fatalf("%s: %s sees %s", when, n.Name, view(ms))
			}
		}
		// A Raft round trip through the flooded node: b forwards to the leader, which replicates.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var res api.CommitLatency
		if err := c.Do(ctx, b.API, http.MethodPost, "/v1/bench/commit", api.CommitBench{N: 5}, &res); err != nil {
			t.Fatalf("%s: commits through a flooded cluster: %v", when, err)
		}
		// Clients: a CLI command against the flooded API.
		cli(t, c, a.API, "status")
	}
	served("while strangers hold connections")
	stopStream()
	// Past the handshake timeout, the strangers that were not dropped for newer ones time out.
	time.Sleep(6 * time.Second)
	served("after the handshake timeout")

	page := scrape(t, a.Metrics)
	for _, series := range []string{`duckraft_connections_refused_total{reason="overload"}`, `duckraft_connections_refused_total{reason="timeout"}`} {
		if metric(page, series) < 1 {
			t.Errorf("%s = %v after a flood", series, metric(page, series))
		}
	}
	if n := strings.Count(a.Log(), "refused connection"); n > 200 {
		t.Errorf("node a logged %d refusal lines for a flood: the log is not rate-limited", n)
	}
}

// A node out of file descriptors, because strangers hold connections, fails to accept for a
// while (EMFILE) and serves again when they are gone: its listeners are never closed for good.
// (The first version closed the API or Raft listener on the first such error, which anyone who can
// connect could cause.)
func TestNodeOutOfDescriptorsServesAgain(t *testing.T) {
	home := t.TempDir()
	cookie := randomCookie()
	// Set both limits in the shell, so that the Go runtime cannot raise its soft limit again.
	n := startCommand(t, cleanEnv(home, "DUCKRAFT_COOKIE="+cookie), "sh", "-c", `ulimit -n 150 && exec "$0" "$@"`,
		bin, "start", "--name", "a", "--data-dir", filepath.Join(home, "a"),
		"--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0")
	api, _, exited := n.ready(t)
	if exited {
		t.Fatalf("node exited (%v):\n%s", n.err, n.out.String())
	}
	c := &localcluster.Cluster{Bin: bin, Root: home, Cookie: cookie}
	var s strangers
	t.Cleanup(s.closeAll)
	s.idle(t, api, 300, false)
	waitFor(t, "the node to run out of descriptors", 10*time.Second, func() bool {
		return strings.Contains(n.out.String(), "accept failed; retrying")
	})
	if out := n.out.String(); !strings.Contains(out, "too many open files") {
		t.Fatalf("the accept errors were not EMFILE:\n%s", out)
	}
	s.closeAll()
	// The strangers' connections it had accepted time out or close; it accepts again.
	waitFor(t, "the node to serve its clients again", 20*time.Second, func() bool {
		_, _, err := tryCLI(c, api, "members")
		return err == nil
	})
	m := regexp.MustCompile(`metrics (http://\S+/metrics)`).FindStringSubmatch(n.out.String())
	if m == nil {
		t.Fatalf("no metrics address in:\n%s", n.out.String())
	}
	if v := metric(scrape(t, m[1]), "duckraft_accept_errors_total"); v < 1 {
		t.Errorf("duckraft_accept_errors_total = %v after running out of descriptors", v)
	}
}
