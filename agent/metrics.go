package agent

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/hotswap"
	"github.com/duckraft/duckraft/wire"
)

// metrics is what /metrics reports. It is served without the cookie, since a scraper cannot
// prove it, so it holds counts and states only: no address of a duck, no source, no cookie.
type metrics struct {
	reg          *prometheus.Registry
	swaps        *prometheus.CounterVec
	swapSeconds  prometheus.Histogram
	builds       *prometheus.CounterVec
	buildSeconds prometheus.Histogram
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.swaps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "duckraft_swaps_total", Help: "Duck swaps by result."}, []string{"result"})
	m.swapSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "duckraft_swap_duration_seconds", Help: "One duck's swap, SIGHUP to the new generation Ready and healthy.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)})
	m.builds = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "duckraft_builds_total", Help: "Duck builds (cache misses) by result."}, []string{"result"})
	m.buildSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "duckraft_build_duration_seconds", Help: "One duck build with the local Go toolchain.", Buckets: prometheus.ExponentialBuckets(0.25, 2, 10)})
	f(m.swaps)
	f(m.swapSeconds)
	f(m.builds)
	f(m.buildSeconds)

	for _, st := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "duckraft_raft_state", Help: "1 for the Raft state this node is in.",
			ConstLabels: prometheus.Labels{"state": strings.ToLower(st.String())},
		}, func() float64 { return boolFloat(a.Node().RaftState() == st) }))
	}
	gauge := func(name, help string, v func() float64) {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, v))
	}
	gauge("duckraft_raft_term", "Current Raft term.", func() float64 { return float64(a.Node().Term()) })
	gauge("duckraft_raft_commit_index", "Raft commit index.", func() float64 { return float64(a.Node().CommitIndex()) })
	gauge("duckraft_raft_applied_index", "Raft index applied to the FSM.", func() float64 { return float64(a.Node().AppliedIndex()) })
	gauge("duckraft_version_committed", "Newest committed version number (0: none).", func() float64 {
		vs := a.Node().Versions()
		if len(vs) == 0 {
			return 0
		}
		return float64(vs[len(vs)-1].N)
	})
	gauge("duckraft_version_running", "Committed version number this node's ducks run (0: none, or a version loaded here only).", func() float64 {
		id := a.host.Local().Version
		var n int
		if _, err := fmt.Sscanf(string(a.host.Label(id)), "v%d", &n); err != nil {
			return 0
		}
		return float64(n)
	})
	gauge("duckraft_rollout_active", "1 while a rollout is under way.", func() float64 { return boolFloat(a.Node().Rollout().Active()) })
	gauge("duckraft_ducks", "Ducks supervised by this node.", func() float64 { return float64(len(a.sup.List())) })
	f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "duckraft_duck_restarts_total", Help: "Restarts of crashed ducks, over the ducks this node supervises now."}, func() float64 {
		n := 0
		for _, st := range a.sup.List() {
			n += st.Restarts
		}
		return float64(n)
	}))
	// What the ducks' old generations did with their client connections at each swap, as they
	// report it: moved to the new generation, or kept and closed after one forwarded request
	// (by reason), so that an operator sees which clients a swap may still disturb.
	conns := func(name, help string, v func(hotswap.Connections) int, labels prometheus.Labels) {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(v(a.sup.Connections())) }))
	}
	conns("duckraft_duck_connections_moved_total", "Client connections the ducks' old generations moved to the new one at a swap.",
		func(c hotswap.Connections) int { return c.Moved }, nil)
	conns("duckraft_duck_connections_moved_mid_request_total", "Of the connections moved, those moved partway through a request's line or headers, with its bytes.",
		func(c hotswap.Connections) int { return c.MidRequest }, nil)
	for _, why := range hotswap.FallbackReasons {
		conns("duckraft_duck_connections_fell_back_total", "Client connections that could not move at a swap, by reason: their next request was forwarded to the new generation, then they closed.",
			func(c hotswap.Connections) int { return c.FellBack[why] }, prometheus.Labels{"reason": why})
	}
	conns("duckraft_duck_connections_hijacked_total", "Client connections the ducks' handlers took over (WebSockets and the like): they end with their generation.",
		func(c hotswap.Connections) int { return c.Hijacked }, nil)
	conns("duckraft_duck_requests_forwarded_total", "Requests an old generation forwarded to the new one, on connections that could not move.",
		func(c hotswap.Connections) int { return c.Forwarded }, nil)
	for _, k := range wire.RefusalKinds() {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "duckraft_connections_refused_total", Help: "Connections refused in the handshake, by reason.",
			ConstLabels: prometheus.Labels{"reason": k.String()},
		}, func() float64 { return float64(wire.Refused(k)) }))
	}
	f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "duckraft_accept_errors_total", Help: "Failed accepts (EMFILE and the like) on the API and Raft ports; each is retried after a pause."},
		func() float64 { return float64(wire.AcceptErrors()) }))
	f(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "duckraft_log_lines_suppressed_total", Help: "Refusal and accept-error log lines left out by the rate limit; the refusals are still counted."},
		func() float64 { return float64(wire.SuppressedLogLines()) }))
	return m
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m *metrics) swapped(took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	m.swaps.WithLabelValues(result).Inc()
	m.swapSeconds.Observe(took.Seconds())
}

func (m *metrics) built(took time.Duration, err error) {
	var ce *build.CompileError
	result := "ok"
	switch {
	case errors.As(err, &ce):
		result = "compile_error"
	case err != nil:
		result = "error"
	}
	m.builds.WithLabelValues(result).Inc()
	m.buildSeconds.Observe(took.Seconds())
}

// serveMetrics serves /metrics in plain HTTP on addr, returning the address bound.
func (a *Agent) serveMetrics(addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	// Anyone who reaches this port is served without the cookie, so no client may hold a
	// connection or a goroutine for long: a scrape is one small request and one answer.
	a.metricsSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	go a.metricsSrv.Serve(l)
	return l.Addr().String(), nil
}
