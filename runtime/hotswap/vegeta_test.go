package hotswap_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// vegetaLoad is vegeta attacking a duck open-loop: POST /quack with a body
// at a constant rate, whether or not earlier requests have been answered,
// on at most maxConns keep-alive connections. An open-loop rate does not
// slow down when the server stalls, so a stall shows in the latencies of
// the requests that were due during it instead of going unmeasured (the
// coordinated omission of a client that waits for each answer).
//
// Retries are impossible: net/http resends a request on a fresh connection
// only if it can rewind its body, and every request here goes out with
// GetBody nil. A connection the server closes under the client is counted
// (peerClosed) even when no request happened to race the close.
type vegetaLoad struct {
	attacker   *vegeta.Attacker
	rate       int
	base       time.Time
	started    time.Time
	dials      atomic.Int64
	peerClosed atomic.Int64
	requests   atomic.Int64
	done       chan struct{}

	// Valid after stop.
	metrics vegeta.Metrics
	samples []sample
	posts   int // POSTs answered 200
	errs    []string
	ran     time.Duration
}

func startVegeta(addr string, rate, maxConns int, base time.Time) *vegetaLoad {
	v := &vegetaLoad{rate: rate, base: base, done: make(chan struct{})}
	tr := &http.Transport{
		MaxIdleConnsPerHost: maxConns,
		MaxConnsPerHost:     maxConns,
		IdleConnTimeout:     5 * time.Minute,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, a)
			if err != nil {
				return nil, err
			}
			v.dials.Add(1)
			return &watchedConn{Conn: nc, peerClosed: &v.peerClosed}, nil
		},
	}
	v.attacker = vegeta.NewAttacker(
		vegeta.Client(&http.Client{Transport: noRetry{tr}}),
		vegeta.Timeout(10*time.Second),
		vegeta.Redirects(vegeta.NoFollow),
	)
	targeter := vegeta.NewStaticTargeter(vegeta.Target{
		Method: http.MethodPost,
		URL:    "http://" + addr + "/quack",
		Body:   []byte("quack"),
		Header: http.Header{"Content-Type": []string{"text/plain"}},
	})
	v.started = time.Now()
	// Three minutes only stops a hung run; stop ends the attack.
	results := v.attacker.Attack(targeter, vegeta.Rate{Freq: rate, Per: time.Second}, 3*time.Minute, "swap")
	go func() {
		defer close(v.done)
		defer tr.CloseIdleConnections()
		for r := range results {
			v.metrics.Add(r)
			failed := r.Error != "" || r.Code != http.StatusOK
			v.samples = append(v.samples, sample{
				start:   r.Timestamp.Sub(v.base),
				took:    r.Latency,
				failed:  failed,
				refused: failed && strings.Contains(r.Error, "connection refused"),
			})
			if failed {
				if len(v.errs) < 5 {
					v.errs = append(v.errs, r.Error)
				}
			} else {
				v.posts++
			}
			v.requests.Add(1)
		}
		v.ran = time.Since(v.started)
		v.metrics.Close()
	}()
	return v
}

// stop ends the attack, lets the requests in flight finish and closes the
// connections.
func (v *vegetaLoad) stop() {
	v.attacker.Stop()
	<-v.done
}

// failed is the requests that got no answer or an answer other than 200,
// by vegeta's own metrics.
func (v *vegetaLoad) failed() int {
	n := 0
	for code, c := range v.metrics.StatusCodes {
		if code != "200" {
			n += c
		}
	}
	return n
}

// noRetry sends every request with GetBody nil, so that net/http cannot
// resend a POST on another connection after the first one failed.
type noRetry struct{ tr http.RoundTripper }

func (n noRetry) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.GetBody = nil
	return n.tr.RoundTrip(r)
}

// watchedConn counts a connection whose read side ended while the client
// had not closed it: the server closed it, or it broke.
type watchedConn struct {
	net.Conn
	peerClosed *atomic.Int64
	closing    atomic.Bool
	once       sync.Once
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && !c.closing.Load() {
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) {
			c.once.Do(func() { c.peerClosed.Add(1) })
		}
	}
	return n, err
}

func (c *watchedConn) Close() error {
	c.closing.Store(true)
	return c.Conn.Close()
}
