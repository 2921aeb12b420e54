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

	// stopReads is set from the start of a swap until its outcome; gate
	// lets hold wait for reads that began before it was set.
	stopReads atomic.Bool
	gate      sync.RWMutex

	mu        sync.Mutex
	changed   *sync.Cond
	mode      mode
	frozen    bool // holding, and no more requests may start here
	inflight  int  // requests running the duck's handler, but detached ones
	detached  int  // requests running that Detach has detached from the state
	conns     map[*conn]http.ConnState
	receiving bool // connections may still come from the previous generation
	moves     Connections
}

// Connections is what became of a generation's connections when it handed
// over: its exit line counts them, and it reports them to its supervisor
// (EventHandedOver).
type Connections struct {
	Moved int `json:"moved"` // connections handed to the next generation
	// MidRequest of them moved in the middle of a request's line or headers,
	// with the bytes read of it.
	MidRequest int `json:"moved_mid_request,omitempty"`
	// FellBack counts the connections that could not move, by reason (one of
	// FallbackReasons): each had its next request forwarded, then closed.
	FellBack  map[string]int `json:"fell_back,omitempty"`
	Hijacked  int            `json:"hijacked,omitempty"`  // connections their handler took (over the generation's life)
	Forwarded int            `json:"forwarded,omitempty"` // requests forwarded to the next generation
}

// The reasons a connection stays with its generation instead of moving.
const (
	// FallbackUnframeable: requests the SDK cannot frame (HTTP/2's preface,
	// a transfer coding other than chunked), so it cannot tell which bytes
	// net/http holds.
	FallbackUnframeable = "unframeable"
	// FallbackNotTaken: the new generation takes no connections, or not the
	// bytes one came with (it does not serve with Duck.Serve, or it is built
	// on an older SDK).
	FallbackNotTaken = "not_taken"
	// FallbackSendFailed: sending it to the new generation failed.
	FallbackSendFailed = "send_failed"
	// FallbackNotSocket: the listener gave a connection that is not a socket.
	FallbackNotSocket = "not_a_socket"
)

// FallbackReasons lists every reason in Connections.FellBack.
var FallbackReasons = []string{FallbackUnframeable, FallbackNotTaken, FallbackSendFailed, FallbackNotSocket}

// fellBackTotal is how many connections could not move.
func (c Connections) fellBackTotal() int {
	n := 0
	for _, v := range c.FellBack {
		n += v
	}
	return n
}

type connKey struct{}

// running is one request in the duck's handler, found by Detach in its context.
type running struct {
	s        *server
	detached bool // under s.mu
}

type runningKey struct{}

// Detach says that the request r will change the state no more: from here to its end its
// handler may call State.Read but not State.Update. A swap hands the state over once the
// requests running in the old generation have finished, so that none of their changes is lost
// or made twice; it does not wait for detached ones. They run to their end in the old
// generation, whose state, frozen as it was handed over, they can still read, while the new
// generation serves everyone else. Without it, a streaming response, a long poll or a
// download running when a swap begins holds every other client's requests until it ends.
//
// Call it in a long handler after its last Update, or first thing if it makes none. An
// Update after Detach, in a generation that has handed over, waits for ever, as every Update
// there does (the change would belong to the new generation): the request then hangs until
// the old generation exits. A detached request has DrainBound and 5 s more after the new
// generation is Ready to finish; its connection is closed then. Detach does nothing for a
// request not served by Duck.Serve, and calling it twice is harmless.
func Detach(r *http.Request) {
	rq, _ := r.Context().Value(runningKey{}).(*running)
	if rq == nil {
		return
	}
	s := rq.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !rq.detached {
		rq.detached = true
		s.inflight--
		s.detached++
		s.changed.Broadcast()
	}
}

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
	return w.s.adopt(c, nil), nil
}

// adopt wraps a connection and counts it before net/http does, so that a
// hand-over never misses one accepted or received a moment before.
// carried is what the previous generation had read of its next request.
func (s *server) adopt(nc net.Conn, carried []byte) *conn {
	c := newConn(nc, s)
	c.pending = carried
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
		s.moves.Hijacked++
	default:
		s.conns[c] = st
	}
	s.changed.Broadcast()
}

// snapshotConns lists the connections, for acting on each without s.mu
// (a conn's lock comes before the server's).
func (s *server) snapshotConns() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// holdsReads says whether a connection between requests should wait
// before reading, and waitWhileHolding waits until the swap is decided.
func (s *server) holdsReads() bool { return s.stopReads.Load() }

func (s *server) waitWhileHolding() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.mode == holding {
		s.changed.Wait()
	}
}

// leavingTo is the channel to the next generation once connections move.
func (s *server) leavingTo() *handoff { return s.out.Load() }

func (s *server) noteMoved(c *conn, midRequest bool) {
	s.mu.Lock()
	s.moves.Moved++
	if midRequest {
		s.moves.MidRequest++
	}
	s.mu.Unlock()
	s.log.Debug("connection handed to the new generation", "remote", c.RemoteAddr())
}

// fellBack notes a connection that stays: its next request is forwarded
// with "Connection: close", as before connections could move.
func (s *server) fellBack(c *conn) {
	s.mu.Lock()
	s.noteFellBack(c.staysKind, 1)
	s.mu.Unlock()
	s.log.Warn("connection stays with this generation; its next request is forwarded, then it closes", "remote", c.RemoteAddr(), "why", c.stays)
}

// noteFellBack counts n connections that stay for reason kind; under s.mu.
func (s *server) noteFellBack(kind string, n int) {
	if s.moves.FellBack == nil {
		s.moves.FellBack = map[string]int{}
	}
	s.moves.FellBack[kind] += n
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, _ := r.Context().Value(connKey{}).(*conn)
	s.mu.Lock()
	if c != nil {
		c.entered.Add(1)
	}
	// A request read before the hold began runs here while the hold waits
	// for running requests; after that it waits for the swap's outcome. So
	// does one whose body is still coming when it arrives during the hold:
	// run here, it would keep the hold (and every other client) waiting
	// for its client, and the old generation alive after the swap.
	for s.mode == holding && (s.frozen || c != nil && c.bodyComing()) {
		s.changed.Wait()
	}
	if s.mode == forwarding {
		s.mu.Unlock()
		// It moves with its bytes if it can, and runs whole in the new
		// generation; net/http then closes this generation's copy of the
		// socket, which tells the client nothing.
		if c != nil && c.leaveWithRequest() {
			panic(http.ErrAbortHandler)
		}
		s.mu.Lock()
		s.moves.Forwarded++
		s.mu.Unlock()
		// A request that came before its connection could move runs in the
		// new generation; the connection then moves too. One that cannot
		// move ends after this response, and the client opens its next
		// connection to the new generation.
		if c == nil || s.leavingTo() == nil || c.staysWhy() != "" {
			w.Header().Set("Connection", "close")
		}
		s.proxy.ServeHTTP(w, r)
		return
	}
	s.inflight++
	s.mu.Unlock()
	rq := &running{s: s}
	defer func() {
		s.mu.Lock()
		if rq.detached {
			s.detached--
		} else {
			s.inflight--
		}
		s.changed.Broadcast()
		s.mu.Unlock()
	}()
	s.h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), runningKey{}, rq)))
}

// hold stops accepting, holds new requests and waits until the requests
// already running have finished, or until timeout or abort closes.
//
// Connections between requests stop reading meanwhile: a request that
// comes now stays in the socket's kernel buffer and moves with the socket,
// to be answered by the new generation as if sent a moment later, instead
// of being read here, held and forwarded.
//
// A request already read when the hold begins runs here rather than being
// forwarded later: the hold first waits, briefly, for every request read
// whole to reach the handler, then for the running ones to finish.
func (s *server) hold(timeout time.Duration, abort <-chan struct{}) error {
	start := time.Now()
	s.mu.Lock()
	s.mode, s.frozen = holding, false
	s.changed.Broadcast()
	s.mu.Unlock()
	s.stopReads.Store(true)
	// Wait out any readNext that saw reads allowed: its request, if any,
	// is then one the hold waits for below.
	s.gate.Lock()
	s.gate.Unlock()
	s.ln.pause()
	for _, c := range s.snapshotConns() {
		c.wake()
	}
	s.waitUntil(time.Now().Add(unenteredWait), nil, func() bool {
		for c := range s.conns {
			if c.unentered() {
				return false
			}
		}
		return true
	})
	if !s.waitUntil(start.Add(timeout), abort, func() bool {
		if s.inflight == 0 {
			s.frozen = true
		}
		return s.frozen
	}) {
		s.mu.Lock()
		n := s.inflight
		s.mu.Unlock()
		return fmt.Errorf("%d HTTP requests still running on %s after %s", n, s.ln.Addr(), time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// runningNow is the number of requests the hold waits for, for the log.
func (s *server) runningNow() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight
}

// detachedNow is the number of detached requests still running, for the log.
func (s *server) detachedNow() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.detached
}

// unenteredWait bounds the hold's wait for requests read whole to reach the
// handler: net/http answers a few itself (OPTIONS *), and a wait that
// cannot end must not make the swap fail; a request it misses is forwarded.
const unenteredWait = 50 * time.Millisecond

// carryOn undoes hold after a failed swap: held requests run here.
func (s *server) carryOn() error {
	s.stopReads.Store(false)
	s.setMode(serving)
	return s.ln.resume()
}

// release is the first step of a hand-over, taken as soon as the new
// generation is Ready: it learns whether the new generation takes
// connections, before the held requests are let go so that none is told
// to close for want of it, and if it takes them in batches, sends the
// idle ones at once. handOver does the rest.
func (s *server) release(out *handoff) (taker bool) {
	taker = out != nil && out.heard()
	if taker && out.batches {
		s.moveIdle(out)
	}
	return taker
}

// handOver moves every connection to the next generation as soon as it is
// between requests, forwards the requests that come before that, and
// returns when no connection is left. Nothing waits for an idle client: an
// idle connection moves at once. Only connections that cannot move wait, for
// bound, to be closed while idle (see the package doc).
func (s *server) handOver(out *handoff, taker bool, bound time.Duration, stop <-chan struct{}) (m Connections) {
	if taker {
		s.out.Store(out)
	} else {
		s.stopReads.Store(false)
	}
	s.setMode(forwarding)
	s.ln.Close()
	conns := s.snapshotConns()
	if !taker && len(conns) > 0 {
		s.mu.Lock()
		s.noteFellBack(FallbackNotTaken, len(conns))
		s.mu.Unlock()
		s.log.Warn("connections stay with this generation; their next requests are forwarded, then they close",
			"connections", len(conns), "why", "the new generation does not take connections (no Duck.Serve, or an older SDK)")
	}
	for _, c := range conns {
		if !taker {
			continue
		}
		if why := c.staysWhy(); why != "" {
			s.fellBack(c)
		} else {
			c.wake()
		}
	}
	// A connection that has moved is done with, whether or not net/http
	// has closed this generation's descriptor yet: the process exits as
	// soon as nothing is left to serve here.
	done := func() bool {
		for c := range s.conns {
			if !c.gone.Load() {
				return false
			}
		}
		return !s.receiving
	}
	defer func() {
		if out != nil {
			out.close()
		}
		s.mu.Lock()
		m = s.moves
		s.mu.Unlock()
	}()
	if s.waitUntil(time.Now().Add(bound), stop, done) {
		return
	}
	conns = s.snapshotConns()
	idle := 0
	for _, c := range conns {
		if c.canClose() {
			c.Close()
			idle++
		}
	}
	s.log.Info("drain bound passed; closed idle connections that could not move", "bound", bound, "idle", idle, "open", len(conns))
	// Requests being forwarded finish quickly; don't cut them short.
	if !s.waitUntil(time.Now().Add(5*time.Second), stop, done) {
		s.srv.Close()
	}
	return
}

// moveIdle sends the connections that wait for their next request, none of
// it read, to the next generation in as few messages as it takes, before
// the hold lets any goroutine go: with reads stopped since the hold, none
// of them reads its socket, and each is locked until it has been sent.
// Their goroutines then find them gone and end. A connection whose batch
// could not be sent stays, and moves on its own like a busy one.
func (s *server) moveIdle(out *handoff) {
	var idle []*conn
	for _, c := range s.snapshotConns() {
		c.mu.Lock()
		if !c.left && c.stays == "" && c.between() && len(c.pending) == 0 && c.raw != nil {
			idle = append(idle, c) // unlocked once sent
			continue
		}
		c.mu.Unlock()
	}
	moved := 0
	var err error
	for len(idle) > 0 {
		batch := idle[:min(len(idle), maxBatch)]
		idle = idle[len(batch):]
		if err == nil {
			err = out.sendBatch(batch, make([]int, 0, len(batch)))
		}
		for _, c := range batch {
			if err == nil {
				c.left = true
				c.gone.Store(true)
				moved++
			}
			c.mu.Unlock()
		}
	}
	if err != nil {
		s.log.Warn("sending idle connections to the new generation in one go failed; each tries on its own", "err", err)
	}
	if moved > 0 {
		s.mu.Lock()
		s.moves.Moved += moved
		s.changed.Broadcast()
		s.mu.Unlock()
	}
}

// shutdown is the graceful stop when no generation follows: nothing can be
// forwarded, so idle connections are closed and running requests finish.
func (s *server) shutdown(timeout time.Duration) {
	s.ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(ctx) }()
	// net/http closes idle connections at once, but waits up to 5 s for one on which no request
	// has begun (StateNew): a connection moved here at a swap is one until its client sends
	// again, so a stop soon after a swap waited those 5 s, and its supervisor killed it before
	// it saved the state (found by TestStopAtSeededMomentsOfASwapLosesNothing). Closing one that
	// holds no request loses nothing, as net/http's own close of an idle one.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, c := range s.snapshotConns() {
			if c.canClose() {
				c.Close()
			}
		}
		select {
		case err := <-done:
			if err != nil {
				s.log.Warn("HTTP requests still running at stop; closing them", "timeout", timeout, "err", err)
				s.srv.Close()
			}
			return
		case <-tick.C:
		}
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
