package wire

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// HandshakeTimeout bounds how long a connection may take, from accept, to complete TLS and prove
// the cookie; a peer that connects and says nothing must not hold a goroutine or a slot for long.
const HandshakeTimeout = 5 * time.Second

// MaxHandshakes bounds the connections of one listener that have not yet proven the cookie.
// When a new one arrives at the bound, the oldest is dropped: a flood of idle connections then
// gives each of them less time, instead of locking out the member that connects next, whose
// handshake takes milliseconds.
const MaxHandshakes = 256

// MaxConns bounds the connections of one listener that have proven the cookie. Only cookie
// holders can reach it; it guards against a leak in our own peers, not against strangers.
const MaxConns = 1024

// maxAcceptDelay is the longest pause after a failing accept (EMFILE, ENFILE, ENOBUFS): long
// enough not to spin, short enough that the node serves again soon after the pressure passes.
const maxAcceptDelay = time.Second

// Listener accepts only connections that proved the cookie, so a caller never sees a peer
// without it. Refused connections are logged, naming the cause, because the other side's
// message alone does not help the operator of this node; the lines are rate-limited, and every
// refusal is counted (see Refused), so a flood neither fills the disk nor goes unseen.
type Listener struct {
	inner       net.Listener
	id          *Identity
	explainHTTP bool
	conns       chan net.Conn
	done        chan struct{}
	once        sync.Once
	log         *slog.Logger
	logs        logLimiter
	config      *tls.Config

	mu        sync.Mutex
	pending   *list.List // of *pendingConn, oldest first
	connected int
}

type pendingConn struct {
	raw     net.Conn
	evicted atomic.Bool
}

// Listen listens on addr and authenticates every connection with the cookie. With explainHTTP
// (the API's listener), a client that speaks HTTP instead of proving the cookie, in clear or over
// TLS, gets a 401 naming the cookie and the connection is closed.
func (id *Identity) Listen(network, addr string, explainHTTP bool, log *slog.Logger) (*Listener, error) {
	inner, err := net.Listen(network, addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, explained{err.Error() + ": another process listens there, or an outgoing connection took the port as its own end (any port in net.ipv4.ip_local_port_range, 32768 to 60999 by default, can be taken that way, and a node restarted at once found its port gone); pick a free port below that range", err}
	}
	if err != nil {
		return nil, err
	}
	return id.NewListener(inner, explainHTTP, log), nil
}

// NewListener wraps an existing listener (one inherited or bound by the caller).
func (id *Identity) NewListener(inner net.Listener, explainHTTP bool, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.Default()
	}
	l := &Listener{
		inner:       inner,
		id:          id,
		explainHTTP: explainHTTP,
		conns:       make(chan net.Conn),
		done:        make(chan struct{}),
		log:         log,
		config:      id.serverConfig(),
		pending:     list.New(),
	}
	l.logs.init()
	go l.acceptLoop()
	return l
}

// acceptLoop never gives up while the listener is open: an accept error such as EMFILE says the
// process is short of something for now, and closing the listener would turn a moment's pressure
// (which anyone who can connect can cause) into a node that is off the network for good.
func (l *Listener) acceptLoop() {
	var delay time.Duration
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				l.Close()
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), maxAcceptDelay)
			acceptErrors.Add(1)
			if ok, skipped := l.logs.allow(); ok {
				l.log.Warn("accept failed; retrying", "error", err.Error(), "retry_in", delay.String(), "lines_suppressed", skipped)
			}
			select {
			case <-time.After(delay):
			case <-l.done:
				return
			}
			continue
		}
		delay = 0
		p := l.admit(raw)
		go l.handshake(p)
	}
}

// admit registers a connection that has yet to prove the cookie, dropping the oldest such one
// when there are MaxHandshakes already.
func (l *Listener) admit(raw net.Conn) *pendingConn {
	p := &pendingConn{raw: raw}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending.Len() >= MaxHandshakes {
		oldest := l.pending.Remove(l.pending.Front()).(*pendingConn)
		oldest.evicted.Store(true)
		oldest.raw.Close()
	}
	l.pending.PushBack(p)
	return p
}

func (l *Listener) settle(p *pendingConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for e := l.pending.Front(); e != nil; e = e.Next() {
		if e.Value.(*pendingConn) == p {
			l.pending.Remove(e)
			return
		}
	}
}

func (l *Listener) handshake(p *pendingConn) {
	raw := p.raw
	conn := tls.Server(raw, l.config)
	raw.SetDeadline(time.Now().Add(HandshakeTimeout))
	err := conn.Handshake()
	var first []byte
	if err == nil {
		first, err = l.id.proveAsListener(conn)
	}
	l.settle(p)
	if err == nil {
		raw.SetDeadline(time.Time{})
		l.deliver(conn)
		return
	}
	switch {
	case p.evicted.Load():
		err = errEvicted
	case l.explainHTTP && errors.Is(err, errNotDuckraft) && looksLikeHTTP(first):
		// An HTTP client over TLS (curl -k, a browser) gets an answer it can show.
		unauthorized(conn, raw)
		err = ErrNoCookie
	default:
		var rh tls.RecordHeaderError
		if errors.As(err, &rh) && rh.Conn != nil && l.explainHTTP && looksLikeHTTP(rh.RecordHeader[:]) {
			// A plain HTTP client (curl without TLS) too.
			unauthorized(rh.Conn, raw)
			err = ErrNoCookie
		}
	}
	raw.Close()
	kind, why := describeRefusal(err)
	refused[kind].Add(1)
	if ok, skipped := l.logs.allow(); ok {
		l.log.Warn("refused connection", "from", raw.RemoteAddr().String(), "reason", why, "lines_suppressed", skipped)
	}
}

// deliver hands a proven connection to Accept, unless the listener holds MaxConns already.
func (l *Listener) deliver(conn *tls.Conn) {
	l.mu.Lock()
	full := l.connected >= MaxConns
	if !full {
		l.connected++
	}
	l.mu.Unlock()
	if full {
		conn.Close()
		refused[RefusedOverload].Add(1)
		if ok, skipped := l.logs.allow(); ok {
			l.log.Warn("refused connection", "from", conn.RemoteAddr().String(), "reason", fmt.Sprintf("%d connections from cookie holders are open already", MaxConns), "lines_suppressed", skipped)
		}
		return
	}
	c := &Conn{Conn: conn, release: l.release}
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *Listener) release() {
	l.mu.Lock()
	l.connected--
	l.mu.Unlock()
}

// Conn is a connection that proved the cookie. It counts against its listener's MaxConns until
// closed.
type Conn struct {
	*tls.Conn
	once    sync.Once
	release func()
}

// Close closes the connection and frees its place.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// unauthorized answers an HTTP client in its own words, then closes the connection: keeping it
// open would let a client without the cookie hold a connection as long as it likes. The rest of
// the request is read (briefly, and up to a bound) so that closing does not reset the connection
// before the client has read the answer.
func unauthorized(w io.ReadWriter, raw net.Conn) {
	raw.SetDeadline(time.Now().Add(time.Second))
	io.WriteString(w, "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"+
		"duckraft: this API only answers cookie holders; use the node CLI with --cookie-file or DUCKRAFT_COOKIE\n")
	if cw, ok := w.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(w, 4<<20))
}

var errEvicted = errors.New("evicted")

// describeRefusal says in an operator's words why a connection this side accepted was refused.
func describeRefusal(err error) (kind RefusalKind, why string) {
	var ne net.Error
	switch {
	case errors.Is(err, ErrCookieMismatch):
		return RefusedWrongCookie, "the cookies differ: the peer was started with another cookie; start every node and client with the same --cookie-file or DUCKRAFT_COOKIE"
	case errors.Is(err, ErrNoCookie), errors.Is(err, errNotDuckraft):
		return RefusedNoCookie, "the peer presented no cookie"
	case errors.Is(err, errEvicted):
		return RefusedOverload, fmt.Sprintf("%d connections were proving the cookie already; the oldest was dropped", MaxHandshakes)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return RefusedTimeout, fmt.Sprintf("no cookie proven within %s", HandshakeTimeout)
	case errors.Is(err, errLeftMidway):
		return RefusedNoCookie, "the peer left before proving the cookie"
	case errors.Is(err, errInvalidElement):
		return RefusedOther, "the peer sent an invalid cookie exchange"
	}
	return RefusedOther, "TLS handshake failed: " + err.Error()
}

// RefusalKind classifies refused connections for the metrics.
type RefusalKind int

// The kinds of refusal.
const (
	RefusedWrongCookie RefusalKind = iota
	RefusedNoCookie
	RefusedTimeout
	RefusedOverload
	RefusedOther
	refusalKinds
)

// RefusalKinds lists every kind, for metrics that report each.
func RefusalKinds() []RefusalKind {
	ks := make([]RefusalKind, refusalKinds)
	for i := range ks {
		ks[i] = RefusalKind(i)
	}
	return ks
}

func (k RefusalKind) String() string {
	return [...]string{"wrong_cookie", "no_cookie", "timeout", "overload", "other"}[k]
}

// refused counts refused connections by kind, for the whole process: every listener of a node
// (API, Raft) adds to the same counts, which is what its metrics report.
var refused [refusalKinds]atomic.Uint64

// acceptErrors and suppressed are process-wide too.
var acceptErrors, suppressed atomic.Uint64

// Refused is how many connections this process refused for the given reason.
func Refused(k RefusalKind) uint64 { return refused[k].Load() }

// AcceptErrors is how many times accepting a connection failed (and was retried).
func AcceptErrors() uint64 { return acceptErrors.Load() }

// SuppressedLogLines is how many refusal and accept-error log lines were left out to keep a
// flood from flooding the log.
func SuppressedLogLines() uint64 { return suppressed.Load() }

// logLimiter lets through a burst of lines, then one per interval, and reports how many it held
// back since the last line it let through.
type logLimiter struct {
	mu      sync.Mutex
	tokens  float64
	last    time.Time
	skipped int
}

const (
	logBurst    = 20
	logInterval = time.Second
)

func (g *logLimiter) init() { g.tokens = logBurst }

func (g *logLimiter) allow() (ok bool, skipped int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if !g.last.IsZero() {
		g.tokens = min(logBurst, g.tokens+now.Sub(g.last).Seconds()/logInterval.Seconds())
	}
	g.last = now
	if g.tokens < 1 {
		g.skipped++
		suppressed.Add(1)
		return false, 0
	}
	g.tokens--
	skipped, g.skipped = g.skipped, 0
	return true, skipped
}

// Accept returns the next connection that proved the cookie.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops listening; connections already accepted stay open.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
	})
	return err
}

// Addr is the address bound.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Dial connects to addr and proves the cookie before returning, so a wrong cookie or a dead
// address is reported here, in words, rather than on the first read.
func (id *Identity) Dial(ctx context.Context, network, addr string) (*tls.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 3 * time.Second}, Config: id.clientConfig()}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, Explain(addr, err)
	}
	conn := c.(*tls.Conn)
	deadline := time.Now().Add(HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	err = id.proveAsDialer(conn)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, Explain(addr, err)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// explained is an error said for a user that still is the error it explains (errors.Is finds
// syscall.ECONNREFUSED in it).
type explained struct {
	msg string
	err error
}

func (e explained) Error() string { return e.msg }
func (e explained) Unwrap() error { return e.err }

// Explain turns a dial or handshake error into one that says what happened and what to do next.
// Errors it does not recognise pass through unchanged.
func Explain(addr string, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case errors.Is(err, ErrCookieMismatch):
		return fmt.Errorf("cookie refused by %s: %w; start both sides with the same --cookie-file or DUCKRAFT_COOKIE", addr, ErrCookieMismatch)
	case strings.Contains(msg, "connection refused"):
		return explained{fmt.Sprintf("nothing listens at %s (connection refused): is the node running, and is that its --api-addr?", addr), err}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		// The handshake passed and the far end closed without an answer: most often a node's
		// Raft port, which speaks the same wire but not HTTP.
		return fmt.Errorf("%s closed the connection without answering: is that the node's --api-addr? (its --raft-addr answers only other nodes) If it is, the node may have stopped mid-request: check that it runs (%w)", addr, err)
	case strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		// A duck's address, most often: ducks serve plain HTTP, nodes only over the wire.
		return explained{fmt.Sprintf("%s answers plain HTTP, not as a duckraft node: is it a duck's address? --addr takes a node's --api-addr (`ducks` lists the ducks' addresses, `members` the nodes')", addr), err}
	case errors.Is(err, context.DeadlineExceeded), strings.Contains(msg, "i/o timeout"):
		return fmt.Errorf("no answer from %s within the time limit: is the node up and the address reachable? (%w)", addr, err)
	}
	return err
}
