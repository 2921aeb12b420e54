package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HandshakeTimeout bounds how long a connection may take to prove the cookie; a peer that
// connects and says nothing must not hold a goroutine forever.
const HandshakeTimeout = 5 * time.Second

// Listener accepts only connections whose TLS handshake completed, so a caller never sees a peer
// with a different cookie. Refused handshakes are logged, naming the cause, because the other
// side's message alone does not help the operator of this node.
type Listener struct {
	inner  net.Listener
	conns  chan net.Conn
	done   chan struct{}
	once   sync.Once
	log    *slog.Logger
	config *tls.Config
}

// Listen listens on addr and authenticates every connection with the cookie. With
// requireCookie false, clients without any certificate are let through (see ServerConfig); a
// plain-text HTTP client gets a 401 naming the cookie.
func (id *Identity) Listen(network, addr string, requireCookie bool, log *slog.Logger) (*Listener, error) {
	inner, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return id.NewListener(inner, requireCookie, log), nil
}

// NewListener wraps an existing listener (one inherited or bound by the caller).
func (id *Identity) NewListener(inner net.Listener, requireCookie bool, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.Default()
	}
	l := &Listener{
		inner:  inner,
		conns:  make(chan net.Conn),
		done:   make(chan struct{}),
		log:    log,
		config: id.ServerConfig(requireCookie),
	}
	go l.acceptLoop()
	return l
}

func (l *Listener) acceptLoop() {
	for {
		raw, err := l.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.Close()
			return
		}
		go l.handshake(raw)
	}
}

func (l *Listener) handshake(raw net.Conn) {
	conn := tls.Server(raw, l.config)
	ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		var rh tls.RecordHeaderError
		if errors.As(err, &rh) && rh.Conn != nil && looksLikeHTTP(rh.RecordHeader[:]) {
			// A plain HTTP client (curl without TLS, a browser) gets an answer it can show.
			fmt.Fprint(rh.Conn, "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"+
				"duckraft: this API only answers cookie holders over TLS; use the node CLI with --cookie-file or DUCKRAFT_COOKIE\n")
		}
		kind, why := describeRefusal(err)
		refused[kind].Add(1)
		l.log.Warn("refused connection", "from", raw.RemoteAddr().String(), "reason", why)
		raw.Close()
		return
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		conn.Close()
	}
}

func looksLikeHTTP(hdr []byte) bool {
	s := string(hdr)
	for _, m := range []string{"GET ", "POST ", "PUT ", "HEAD ", "DELET", "OPTIO", "PATCH"} {
		if strings.HasPrefix(m, s) || strings.HasPrefix(s, m) {
			return true
		}
	}
	return false
}

// describeRefusal says in an operator's words why a handshake this side accepted failed.
func describeRefusal(err error) (kind RefusalKind, why string) {
	msg := err.Error()
	switch {
	case errors.Is(err, ErrCookieMismatch), strings.Contains(msg, "bad certificate"):
		// Both ends derive a key from their cookie; the client compares first and aborts with
		// bad_certificate when ours is not the key its cookie gives.
		return RefusedWrongCookie, "the cookies differ: the peer was started with another cookie; start every node and client with the same --cookie-file or DUCKRAFT_COOKIE"
	case errors.Is(err, ErrNoCookie), strings.Contains(msg, "certificate required"), strings.Contains(msg, "didn't provide a certificate"):
		return RefusedNoCookie, "the peer presented no cookie"
	case errors.Is(err, context.DeadlineExceeded):
		return RefusedOther, fmt.Sprintf("no TLS handshake within %s", HandshakeTimeout)
	}
	return RefusedOther, "TLS handshake failed: " + msg
}

// RefusalKind classifies refused connections for the metrics.
type RefusalKind int

// The kinds of refusal.
const (
	RefusedWrongCookie RefusalKind = iota
	RefusedNoCookie
	RefusedOther
	refusalKinds
)

func (k RefusalKind) String() string {
	return [...]string{"wrong_cookie", "no_cookie", "other"}[k]
}

// refused counts refused connections by kind, for the whole process: every listener of a node
// (API, Raft) adds to the same counts, which is what its metrics report.
var refused [refusalKinds]atomic.Uint64

// Refused is how many connections this process refused for the given reason.
func Refused(k RefusalKind) uint64 { return refused[k].Load() }

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

// Dial connects to addr and completes the handshake before returning, so a wrong cookie or a
// dead address is reported here, in words, rather than on the first read.
func (id *Identity) Dial(ctx context.Context, network, addr string) (*tls.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 3 * time.Second}, Config: id.ClientConfig()}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, Explain(addr, err)
	}
	return c.(*tls.Conn), nil
}

// Explain turns a dial or handshake error into one that says what happened and what to do next.
// Errors it does not recognise pass through unchanged.
func Explain(addr string, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch {
	case errors.Is(err, ErrCookieMismatch), strings.Contains(msg, "bad certificate"):
		return fmt.Errorf("cookie refused by %s: %w; start both sides with the same --cookie-file or DUCKRAFT_COOKIE", addr, ErrCookieMismatch)
	case strings.Contains(msg, "connection refused"):
		return fmt.Errorf("nothing listens at %s (connection refused): is the node running, and is that its --api-addr?", addr)
	case errors.Is(err, context.DeadlineExceeded), strings.Contains(msg, "i/o timeout"):
		return fmt.Errorf("no answer from %s within the time limit: is the node up and the address reachable? (%w)", addr, err)
	}
	return err
}
