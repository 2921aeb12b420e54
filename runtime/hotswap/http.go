package hotswap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// What the HTTP server does with a request that arrives on a connection.
type mode int

const (
	serving    mode = iota // run the duck's handler
	holding                // a swap is deciding; wait for its outcome
	forwarding             // a new generation is Ready; pass the request on
)

// server serves a duck's handler and carries out the HTTP half of a swap.
// Why it forwards instead of closing keep-alive connections: see the package
// doc.
type server struct {
	srv   *http.Server
	ln    *listener
	h     http.Handler
	proxy *httputil.ReverseProxy
	log   *slog.Logger

	mu       sync.Mutex
	changed  *sync.Cond
	mode     mode
	inflight int
	conns    map[net.Conn]http.ConnState
}

func newServer(ln *listener, h http.Handler, log *slog.Logger) *server {
	s := &server{ln: ln, h: h, log: log, conns: make(map[net.Conn]http.ConnState)}
	s.changed = sync.NewCond(&s.mu)
	// The new generation accepts on the very socket this one listened on,
	// so dialling our own address reaches it.
	target := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host
		},
		// A fresh connection per forwarded request: one kept alive could be
		// closed by the new generation's own next swap under our feet.
		Transport: &http.Transport{DisableKeepAlives: true},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Error("forwarding a request to the new generation failed", "method", r.Method, "path", r.URL.Path, "err", err)
			http.Error(w, "forwarding to the new generation failed: "+err.Error()+"; retry", http.StatusBadGateway)
		},
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 30 * time.Second,
		ConnState:         s.track,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

func (s *server) serve() {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		s.log.Error("HTTP server stopped", "addr", s.ln.Addr(), "err", err)
	}
}

func (s *server) track(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == http.StateClosed || st == http.StateHijacked {
		delete(s.conns, c)
	} else {
		s.conns[c] = st
	}
	s.changed.Broadcast()
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	for s.mode == holding {
		s.changed.Wait()
	}
	if s.mode == forwarding {
		s.mu.Unlock()
		// The client learns to open its next connection to the new
		// generation, and this connection ends after this response.
		w.Header().Set("Connection", "close")
		s.proxy.ServeHTTP(w, r)
		return
	}
	s.inflight++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inflight--
		s.changed.Broadcast()
		s.mu.Unlock()
	}()
	s.h.ServeHTTP(w, r)
}

// hold stops accepting, holds new requests and waits until the requests
// already running have finished, or until timeout.
func (s *server) hold(timeout time.Duration) error {
	s.setMode(holding)
	s.ln.pause()
	if !s.waitUntil(time.Now().Add(timeout), nil, func() bool { return s.inflight == 0 }) {
		s.mu.Lock()
		n := s.inflight
		s.mu.Unlock()
		return fmt.Errorf("%d HTTP requests still running on %s after %s", n, s.ln.Addr(), timeout)
	}
	return nil
}

// carryOn undoes hold after a failed swap: held requests run here.
func (s *server) carryOn() error {
	s.setMode(serving)
	return s.ln.resume()
}

// handOver forwards every request from now on and returns once this
// generation's connections have ended, closing idle ones after bound.
// Only then is closing safe enough: a client had bound to send another
// request on the connection and be told to move on.
func (s *server) handOver(bound time.Duration, stop <-chan struct{}) {
	s.setMode(forwarding)
	s.ln.Close()
	noConns := func() bool { return len(s.conns) == 0 }
	if s.waitUntil(time.Now().Add(bound), stop, noConns) {
		return
	}
	s.mu.Lock()
	idle := 0
	for c, st := range s.conns {
		if st == http.StateIdle || st == http.StateNew {
			c.Close()
			idle++
		}
	}
	n := len(s.conns)
	s.mu.Unlock()
	s.log.Info("drain bound passed; closed idle connections", "bound", bound, "idle", idle, "open", n)
	// Requests being forwarded finish quickly; don't cut them short.
	if !s.waitUntil(time.Now().Add(5*time.Second), stop, noConns) {
		s.srv.Close()
	}
}

// shutdown is the graceful stop when no generation follows: nothing can be
// forwarded, so idle connections are closed and running requests finish.
func (s *server) shutdown(timeout time.Duration) {
	s.ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.log.Warn("HTTP requests still running at stop; closing them", "timeout", timeout, "err", err)
		s.srv.Close()
	}
}

func (s *server) setMode(m mode) {
	s.mu.Lock()
	s.mode = m
	s.changed.Broadcast()
	s.mu.Unlock()
}

// waitUntil waits, with s.mu held while cond runs, until cond is true (it
// returns true), the deadline passes or stop closes (false).
func (s *server) waitUntil(deadline time.Time, stop <-chan struct{}, cond func() bool) bool {
	wake := time.AfterFunc(time.Until(deadline), func() {
		s.mu.Lock()
		s.changed.Broadcast()
		s.mu.Unlock()
	})
	defer wake.Stop()
	if stop != nil {
		done := make(chan struct{})
		defer close(done)
		go func() {
			select {
			case <-stop:
				s.mu.Lock()
				s.changed.Broadcast()
				s.mu.Unlock()
			case <-done:
			}
		}()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		if stop != nil {
			select {
			case <-stop:
				return false
			default:
			}
		}
		s.changed.Wait()
	}
	return true
}
