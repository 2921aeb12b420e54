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
	"os"
	"sync"
	"sync/atomic"
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
// Why connections move to the next generation instead of being closed: see
// the package doc.
type server struct {
	srv    *http.Server
	ln     *listener
	h      http.Handler
	proxy  *httputil.ReverseProxy
	log    *slog.Logger
	handed *handedListener // connections from the previous generation

	// out is the channel to the next generation once this one hands over
	// and the next one takes connections; nil before and otherwise.
	out atomic.Pointer[handoff]

	mu        sync.Mutex
	changed   *sync.Cond
	mode      mode
	inflight  int
	conns     map[*conn]http.ConnState
	receiving bool // connections may still come from the previous generation
	moved     int  // connections handed to the next generation
	stayed    int  // connections that could not move (fell back)
	hijacked  int
}

type connKey struct{}

func newServer(ln *listener, h http.Handler, log *slog.Logger) *server {
	s := &server{ln: ln, h: h, log: log, conns: make(map[*conn]http.ConnState)}
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
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

// watched wraps the listener's connections so that they can move.
type watched struct {
	*listener
	s *server
}

func (w watched) Accept() (net.Conn, error) {
	c, err := w.listener.Accept()
	if err != nil {
		return nil, err
	}
	return w.s.adopt(c), nil
}

// adopt wraps a connection and counts it before net/http does, so that a
// hand-over never misses one accepted or received a moment before.
func (s *server) adopt(nc net.Conn) *conn {
	c := newConn(nc, s)
	s.mu.Lock()
	s.conns[c] = http.StateNew
	s.mu.Unlock()
	return c
}

// receiveFrom serves the connections the previous generation hands over
// through the channel f, until it closes the channel.
func (s *server) receiveFrom(f *os.File) error {
	uc, err := openReceiver(f)
	if err != nil {
		return err
	}
	// tableflip keeps its own copy of the channel's inherited end under its
	// name and would pass it on; the next swap registers a new channel
	// under the same name, which replaces it.
	s.handed = newHandedListener(s.ln.Addr())
	s.mu.Lock()
	s.receiving = true
	s.mu.Unlock()
	go s.srv.Serve(s.handed)
	go func() {
		err := receive(uc, s.handed.deliver(s.adopt))
		if err != nil {
			s.log.Error("receiving connections from the previous generation stopped; its remaining clients reconnect", "err", err)
		}
		s.handed.Close()
		s.mu.Lock()
		s.receiving = false
		s.changed.Broadcast()
		s.mu.Unlock()
	}()
	return nil
}

func (s *server) serve() {
	if err := s.srv.Serve(watched{s.ln, s}); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		s.log.Error("HTTP server stopped", "addr", s.ln.Addr(), "err", err)
	}
}

func (s *server) track(nc net.Conn, st http.ConnState) {
	c := nc.(*conn)
	c.setState(st)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateClosed:
		delete(s.conns, c)
	case http.StateHijacked:
		// The handler owns it now; its bytes are no longer ours to frame.
		delete(s.conns, c)
		s.hijacked++
	default:
		s.conns[c] = st
	}
	s.changed.Broadcast()
}

// leavingTo is the channel to the next generation once connections move.
func (s *server) leavingTo() *handoff { return s.out.Load() }

func (s *server) noteMoved(c *conn) {
	s.mu.Lock()
	s.moved++
	s.mu.Unlock()
	s.log.Debug("connection handed to the new generation", "remote", c.RemoteAddr())
}

// fellBack notes a connection that stays: its next request is forwarded
// with "Connection: close", as before connections could move.
func (s *server) fellBack(c *conn, why string) {
	s.mu.Lock()
	s.stayed++
	s.mu.Unlock()
	s.log.Warn("connection stays with this generation; its next request is forwarded, then it closes", "remote", c.RemoteAddr(), "why", why)
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	for s.mode == holding {
		s.changed.Wait()
	}
	if s.mode == forwarding {
		s.mu.Unlock()
		// A request that came before its connection could move runs in the
		// new generation; the connection then moves too. One that cannot
		// move ends after this response, and the client opens its next
		// connection to the new generation.
		if c, ok := r.Context().Value(connKey{}).(*conn); !ok || s.leavingTo() == nil || c.staysWhy() != "" {
			w.Header().Set("Connection", "close")
		}
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

// handOver moves every connection to the next generation as soon as it is
// between requests, forwards the requests that come before that, and
// returns when no connection is left. Nothing waits for an idle client: an
// idle connection moves at once. Only connections that cannot move wait, for
// bound, to be closed while idle (see the package doc).
func (s *server) handOver(out *handoff, bound time.Duration, stop <-chan struct{}) (moved, stayed, hijacked int) {
	// Whether connections move is known before the held requests are let
	// go, so that none is told to close for want of it.
	taker := out != nil && out.heard()
	if taker {
		s.out.Store(out)
	}
	s.setMode(forwarding)
	s.ln.Close()
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if !taker {
			s.fellBack(c, "the new generation does not take connections (no Duck.Serve, or an older SDK)")
		} else if why := c.staysWhy(); why != "" {
			s.fellBack(c, why)
		} else {
			c.wake()
		}
	}
	done := func() bool { return len(s.conns) == 0 && !s.receiving }
	defer func() {
		if out != nil {
			out.close()
		}
		s.mu.Lock()
		moved, stayed, hijacked = s.moved, s.stayed, s.hijacked
		s.mu.Unlock()
	}()
	if s.waitUntil(time.Now().Add(bound), stop, done) {
		return
	}
	s.mu.Lock()
	conns = conns[:0]
	for c := range s.conns {
		conns = append(conns, c)
	}
	n := len(s.conns)
	s.mu.Unlock()
	idle := 0
	for _, c := range conns {
		if c.canClose() {
			c.Close()
			idle++
		}
	}
	s.log.Info("drain bound passed; closed idle connections that could not move", "bound", bound, "idle", idle, "open", n)
	// Requests being forwarded finish quickly; don't cut them short.
	if !s.waitUntil(time.Now().Add(5*time.Second), stop, done) {
		s.srv.Close()
	}
	return
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
