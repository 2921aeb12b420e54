package hotswap

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// conn is a connection served by Duck.Serve, watched so that it can move to
// the next generation between two requests. It moves from inside the read
// net/http makes while it waits for the next request: at that moment the
// server holds none of the connection's bytes (the framer says so), has
// flushed every response, and does nothing else with it; the read then
// returns io.EOF and the server closes its descriptor. Closing a descriptor
// while another process holds the same socket sends nothing to the client:
// no FIN, no reset. Bytes the client sent meanwhile wait in the socket's
// kernel buffer and move with it.
type conn struct {
	net.Conn
	s   *server
	raw syscall.RawConn // nil if it is not a socket

	aborted chan struct{} // net/http ended its background read

	// Mirrors of framer.complete and idles, and the requests that reached
	// the handler, read by a hold under the server's lock without ours.
	framed, finished, entered atomic.Int64

	mu        sync.Mutex
	framer    framer
	idles     int // times net/http went idle on it: requests it finished
	state     http.ConnState
	reading   bool
	woken     bool      // we set a past read deadline to end an idle read
	deadline  time.Time // the read deadline net/http asked for
	left      bool      // its socket belongs to the next generation
	stays     string    // why it cannot move; "" while it can
	staysKind string    // which of the Fallback reasons stays is
	// The bytes read of a request whose line or headers are not all here
	// yet, which net/http holds and which move with the socket; tooLong
	// when there are more than maxCarried (that request finishes here).
	partial []byte
	tooLong bool
	// req is every byte read since the oldest request not yet finished
	// began, while it is the only one begun (reqLost otherwise, or past
	// maxCarried): a request that waits in ServeHTTP for a swap's outcome
	// moves with them, its body whole or in part (leaveWithRequest).
	req     []byte
	reqLost bool
	// pending came with the connection from the previous generation: what
	// it had read of the next request. Read returns it before the socket's
	// bytes. Only net/http's reading goroutine touches it once adopted.
	pending []byte

	gone atomic.Bool // left, for Write without the lock
}

// aLongTimeAgo is a read deadline that ends a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// stay notes why c cannot move: kind is one of the Fallback reasons, why
// says it for the log.
func (c *conn) stay(kind, why string) { c.stays, c.staysKind = why, kind }

func newConn(c net.Conn, s *server) *conn {
	cn := &conn{Conn: c, s: s, aborted: make(chan struct{}, 1)}
	if sc, ok := c.(syscall.Conn); ok {
		cn.raw, _ = sc.SyscallConn()
	}
	if cn.raw == nil {
		cn.stay(FallbackNotSocket, fmt.Sprintf("%T is not a socket", c))
	}
	return cn
}

// between says whether the server is waiting for the next request with
// none of it read: every byte read belongs to a request it has finished.
// Call with c.mu held.
func (c *conn) between() bool {
	return c.framer.idle() && c.framer.complete == c.idles &&
		(c.state == http.StateNew || c.state == http.StateIdle)
}

// midHeaders says whether the server is waiting for the rest of a
// request's line or headers, holding nothing else: it has answered every
// request before it, and has not yet handed this one to a handler, which
// would run it here. The connection can then move with those bytes (the
// request runs whole in the next generation). Call with c.mu held.
func (c *conn) midHeaders() bool {
	return c.framer.inHeaders() && !c.tooLong && c.framer.complete == c.idles &&
		(c.state == http.StateNew || c.state == http.StateIdle)
}

// carried is what must move with the socket: the part of a request the
// server holds and the bytes from the previous generation it has not read.
// Call with c.mu held.
func (c *conn) carried() []byte {
	if len(c.partial) == 0 && len(c.pending) == 0 {
		return nil
	}
	return append(append([]byte(nil), c.partial...), c.pending...)
}

// keepPartial follows the bytes of a request whose headers are still
// coming, read being the bytes just fed to the framer. Call with c.mu held.
func (c *conn) keepPartial(read []byte) {
	switch {
	case !c.framer.inHeaders():
		c.partial, c.tooLong = c.partial[:0], false
	case c.framer.began >= 0:
		c.partial, c.tooLong = append(c.partial[:0], read[c.framer.began:]...), false
	case !c.tooLong:
		c.partial = append(c.partial, read...)
	}
	if len(c.partial) > maxCarried {
		c.partial, c.tooLong = c.partial[:0], true
	}
}

// keepRequest follows the bytes of the oldest unfinished request, read
// being the bytes just read and fresh whether no request was begun before
// them. Call with c.mu held.
func (c *conn) keepRequest(read []byte, fresh bool) {
	switch {
	case fresh:
		c.req, c.reqLost = append(c.req[:0], read...), false
	case !c.reqLost:
		c.req = append(c.req, read...)
	}
	if len(c.req) > maxCarried {
		c.req, c.reqLost = c.req[:0], true
	}
}

// leaveWithRequest moves the connection to the next generation with the
// request that is in ServeHTTP but has not reached the duck's handler,
// carrying every byte read of it (and of any after it), so that the next
// generation runs it whole: a request whose body is still coming need not
// keep this generation alive, nor be forwarded. It reports whether the
// connection left; the caller then abandons the request without a word.
// Only to a next generation that takes carried bytes, when no read of the
// socket is under way (net/http reads no body a handler has not asked
// for; its background read only peeks) and all the bytes fit in one
// message.
func (c *conn) leaveWithRequest() bool {
	out := c.s.leavingTo()
	if out == nil || !out.carries {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.left || c.stays != "" || c.reqLost || c.reading || len(c.req) == 0 ||
		c.framer.unsure != "" || c.state != http.StateActive || len(c.req)+len(c.pending) > maxCarried {
		return false
	}
	// Held under c.mu while it is sent: no read of this connection starts.
	if err := out.send(c.Conn, append(append([]byte(nil), c.req...), c.pending...)); err != nil {
		c.stay(FallbackSendFailed, "sending it to the new generation failed: "+err.Error())
		c.s.fellBack(c)
		return false
	}
	c.left = true
	c.gone.Store(true)
	c.s.noteMoved(c, true)
	return true
}

// errMoved ends net/http's read of a request whose first bytes moved to
// the next generation with the socket. Wrapped in a *net.OpError of a read,
// it makes net/http close its side without answering: the "400 Bad
// Request" it writes for a request cut short would reach the client.
var errMoved = errors.New("the connection moved to the next generation")

func (c *conn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.left {
			c.mu.Unlock()
			return 0, io.EOF
		}
		between := c.stays == "" && c.between()
		partway := c.stays == "" && !between && c.midHeaders()
		if out := c.s.leavingTo(); out != nil && (between || partway) {
			carried := c.carried()
			switch {
			case len(carried) == 0 || out.carries && len(carried) <= maxCarried:
				c.mu.Unlock()
				if !c.leave(out, carried) {
					continue
				}
				if partway {
					return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errMoved}
				}
				return 0, io.EOF
			case between:
				// Bytes from the previous generation, unread, that the next
				// one cannot take (an older SDK; or more than a message
				// holds, which the sender never sends): the request runs here.
				c.stay(FallbackNotTaken, "the new generation does not take the bytes it came with (an older SDK)")
				c.s.fellBack(c)
				c.mu.Unlock()
				continue
			}
			// partway to an older SDK: the request finishes here.
		}
		if between {
			if c.s.holdsReads() {
				c.mu.Unlock()
				c.s.waitWhileHolding()
				continue
			}
		}
		if len(p) == 1 && c.state == http.StateActive && c.framer.idle() && c.framer.complete == c.idles+1 && c.stays == "" {
			c.mu.Unlock()
			return c.watch()
		}
		c.reading = true
		fresh := c.framer.idle() && c.framer.complete == c.idles
		c.mu.Unlock()

		var n int
		var err error
		switch {
		case len(c.pending) > 0:
			n, err = c.readPending(p, between)
		case between:
			n, err = c.readNext(p)
		default:
			n, err = c.Conn.Read(p)
		}

		c.mu.Lock()
		c.reading = false
		if n > 0 {
			c.framer.feed(p[:n])
			c.keepPartial(p[:n])
			c.keepRequest(p[:n], fresh)
			c.framed.Store(int64(c.framer.complete))
			if c.framer.unsure != "" && c.stays == "" {
				c.stay(FallbackUnframeable, "cannot frame its requests: "+c.framer.unsure)
				if c.s.leavingTo() != nil {
					c.s.fellBack(c)
				}
			}
		}
		woken := c.woken
		if woken {
			c.woken = false
			c.Conn.SetReadDeadline(c.deadline)
		}
		ours := err == errHolding || woken && n == 0 && errors.Is(err, os.ErrDeadlineExceeded) &&
			(c.deadline.IsZero() || time.Now().Before(c.deadline))
		c.mu.Unlock()
		if ours {
			// A swap stopped the read, not the server's deadline: go round
			// and wait for its outcome, or leave.
			continue
		}
		return n, err
	}
}

// errHolding says readNext did not read because a swap stops reads.
var errHolding = errors.New("reads stopped by a swap")

// readNext reads the start of the next request unless a swap has stopped
// such reads, deciding in the same step as the read: a plain read that was
// already woken by the request's arrival would take it even after the swap
// began, and the request would have to be forwarded instead of moving with
// its connection. hold waits for any readNext that saw reads allowed.
func (c *conn) readNext(p []byte) (int, error) {
	var n int
	var rerr error
	held := false
	err := c.raw.Read(func(fd uintptr) bool {
		c.s.gate.RLock()
		defer c.s.gate.RUnlock()
		if c.s.holdsReads() {
			held = true
			return true
		}
		for {
			n, rerr = syscall.Read(int(fd), p)
			if rerr != syscall.EINTR {
				break
			}
		}
		// Only EAGAIN may wait for the poller: it reports new data, not
		// data left unread.
		return rerr != syscall.EAGAIN
	})
	switch {
	case held:
		return 0, errHolding
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readPending reads the bytes that came with the connection before the
// socket's, and like readNext not while a swap stops reads.
func (c *conn) readPending(p []byte, between bool) (int, error) {
	c.s.gate.RLock()
	defer c.s.gate.RUnlock()
	if between && c.s.holdsReads() {
		return 0, errHolding
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// watch is net/http's background read, the one-byte read it makes while a
// handler runs, with the request read whole, to learn if the client goes
// away. Done as a plain read, it would take the first byte of the
// client's next request into net/http's memory, and the connection could
// not move until that request was answered, here, during a swap by
// forwarding it. So watch only peeks: it reports the client gone (EOF or
// an error) as the read would, and leaves a next request's bytes in the
// socket, waiting until net/http ends the read (abortPendingRead sets a
// past deadline).
func (c *conn) watch() (int, error) {
	select {
	case <-c.aborted: // a stale signal from an earlier request
	default:
	}
	if len(c.pending) > 0 {
		// The next request is here already: the client has not gone.
		<-c.aborted
		return 0, os.ErrDeadlineExceeded
	}
	var n int
	var perr error
	err := c.raw.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if perr != syscall.EINTR {
				break
			}
		}
		return perr != syscall.EAGAIN
	})
	switch {
	case err != nil: // the deadline net/http set to end the read
		return 0, err
	case perr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("recvfrom", perr)}
	case n == 0:
		return 0, io.EOF
	}
	<-c.aborted
	return 0, os.ErrDeadlineExceeded
}

// wake ends a read that waits for a next request, so that the connection
// leaves now rather than when the client next speaks.
func (c *conn) wake() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reading && !c.left && c.stays == "" && (c.between() || c.midHeaders()) {
		c.woken = true
		c.Conn.SetReadDeadline(aLongTimeAgo)
	}
}

// leave sends the socket, with carried, to the next generation and reports
// whether it went.
func (c *conn) leave(out *handoff, carried []byte) bool {
	err := out.send(c.Conn, carried)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.stay(FallbackSendFailed, "sending it to the new generation failed: "+err.Error())
		c.s.fellBack(c)
		return false
	}
	c.left = true
	c.gone.Store(true)
	c.s.noteMoved(c, len(carried) > 0)
	return true
}

// staysWhy returns why the connection cannot move, or "".
func (c *conn) staysWhy() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stays
}

func (c *conn) setState(st http.ConnState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state = st
	if st == http.StateIdle {
		c.idles++
		c.finished.Store(int64(c.idles))
		// The bytes kept were of the request just finished; any read
		// since belong to the next, whose start among them is unknown.
		c.req, c.reqLost = c.req[:0], !(c.framer.idle() && c.framer.complete == c.idles)
	}
}

// bodyComing says whether the request being served has not been read
// whole: its body is still coming. Lock-free, for ServeHTTP under the
// server's lock.
func (c *conn) bodyComing() bool {
	return c.framed.Load() <= c.finished.Load()
}

// unentered says whether a request has been read whole but has not yet
// reached the handler (nor been answered by net/http itself).
func (c *conn) unentered() bool {
	return c.framed.Load() > max(c.entered.Load(), c.finished.Load())
}

// canClose says whether closing the connection loses nothing: no request
// is partly read or running on it.
func (c *conn) canClose() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.framer.idle() && c.framer.complete == c.idles && c.state != http.StateActive
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	if !t.IsZero() && t.Before(time.Now()) {
		select {
		case c.aborted <- struct{}{}:
		default:
		}
	}
	if c.woken {
		// The read we woke restores it when it returns.
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *conn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetWriteDeadline(t)
}

// Write refuses once the socket has moved: the next generation answers
// its client now.
func (c *conn) Write(p []byte) (int, error) {
	if c.gone.Load() {
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errMoved}
	}
	return c.Conn.Write(p)
}

// ReadFrom keeps net/http's sendfile path: writing is never in the way of
// a move.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if c.gone.Load() {
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errMoved}
	}
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(c.Conn, r)
}

// CloseWrite is net/http's half-close before it closes a connection; a
// socket that has moved is not this generation's to shut.
func (c *conn) CloseWrite() error {
	c.mu.Lock()
	left := c.left
	c.mu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok && !left {
		return cw.CloseWrite()
	}
	return nil
}

// handoff is this generation's end of the channel to the next one: a Unix
// socket pair whose other end the next generation inherits through
// tableflip. Each message carries one connection's descriptor
// (SCM_RIGHTS); the kernel holds the socket open while it travels.
type handoff struct {
	mu sync.Mutex
	uc *net.UnixConn
	// carries: the next generation takes a connection with the bytes this
	// one has read of its next request. batches: it takes many descriptors
	// in one message (sendMany). Known once heard.
	carries, batches bool
}

// Names of the bytes on the channel. A message is one byte and nothing
// else, but for carryByte's: an SDK from before bytes were carried reads
// one byte of each message, which drops the rest of a hello and would drop
// a connection's bytes, so those go only to a receiver that announced it.
const (
	helloByte = 'h' // the new generation receives connections
	connByte  = 'c' // one descriptor rides with it
	// After helloByte: the receiver takes carried bytes. As a message's
	// first byte: one descriptor rides with it, and the bytes read of the
	// connection's next request follow.
	carryByte = 'b'
	// After helloByte: the receiver takes up to maxBatch descriptors in one
	// connByte message. An SDK from before batches has room for one
	// descriptor per message, and the kernel would close the others.
	batchByte = 'n'
)

// maxBatch is the most descriptors sent in one message (the kernel takes
// up to 253).
const maxBatch = 64

// maxCarried bounds the bytes a connection carries when it moves in the
// middle of a request's line or headers; a request with longer headers
// finishes in the old generation, forwarded, as before bytes were carried.
const maxCarried = 16 << 10

// sendTimeout bounds a send to a new generation that has stopped receiving;
// the connection then stays here.
const sendTimeout = 2 * time.Second

// passedPair makes a Unix socket pair of messages, registers its far end with tableflip as name
// (the next generation inherits it) and returns the near end; what names it in errors.
func passedPair(add func(name string, f *os.File) error, name, what string) (*net.UnixConn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("making %s: %w", what, err)
	}
	near, far := os.NewFile(uintptr(fds[0]), what), os.NewFile(uintptr(fds[1]), what)
	defer far.Close() // tableflip passes on a copy of its own
	defer near.Close()
	if err := add(name, far); err != nil {
		return nil, fmt.Errorf("passing %s on: %w", what, err)
	}
	c, err := net.FileConn(near)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", what, err)
	}
	return c.(*net.UnixConn), nil
}

// newHandoff makes the channel and registers its far end with tableflip,
// so the next generation inherits it.
func newHandoff(add func(name string, f *os.File) error) (*handoff, error) {
	uc, err := passedPair(add, connsFD, "the connection channel")
	if err != nil {
		return nil, err
	}
	return &handoff{uc: uc}, nil
}

// heard says whether the new generation announced that it receives
// connections. It does so before Ready, so the byte is here by the time
// the swap has succeeded; a version that does not serve HTTP with Duck.Serve,
// or an SDK from before connections moved, never sends it.
func (h *handoff) heard() bool {
	h.uc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var b [16]byte
	n, err := h.uc.Read(b[:])
	if err != nil || n == 0 || b[0] != helloByte {
		return false
	}
	h.carries = bytes.IndexByte(b[1:n], carryByte) >= 0
	h.batches = bytes.IndexByte(b[1:n], batchByte) >= 0
	return true
}

// sendBatch sends the sockets of conns, at most maxBatch, which carry no
// bytes, in one message: a generation's idle connections leave in one
// system call rather than one each, and from one goroutine rather than
// from each connection's own. Only for a receiver that said it takes
// batches. Each descriptor is held open (RawConn.Control, one inside the
// other) while the message is written.
func (h *handoff) sendBatch(conns []*conn, fds []int) error {
	if len(conns) > 0 {
		var inner error
		err := conns[0].raw.Control(func(fd uintptr) { inner = h.sendBatch(conns[1:], append(fds, int(fd))) })
		return errors.Join(err, inner)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.uc.SetWriteDeadline(time.Now().Add(sendTimeout))
	_, _, err := h.uc.WriteMsgUnix([]byte{connByte}, syscall.UnixRights(fds...), nil)
	return err
}

func (h *handoff) send(c net.Conn, carried []byte) error {
	msg := []byte{connByte}
	if len(carried) > 0 {
		msg = append([]byte{carryByte}, carried...)
	}
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.uc.SetWriteDeadline(time.Now().Add(sendTimeout))
		_, _, serr = h.uc.WriteMsgUnix(msg, syscall.UnixRights(int(fd)), nil)
	})
	return errors.Join(err, serr)
}

func (h *handoff) close() { h.uc.Close() }

// openReceiver opens this generation's end of the channel from the
// previous one and announces that it takes connections.
func openReceiver(f *os.File) (*net.UnixConn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("opening the connection channel from the previous generation: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("the connection channel from the previous generation is a %T, not a Unix socket", c)
	}
	if _, err := uc.Write([]byte{helloByte, carryByte, batchByte}); err != nil {
		uc.Close()
		return nil, fmt.Errorf("answering the previous generation: %w", err)
	}
	return uc, nil
}

// receive gives each connection the previous generation sends to deliver,
// with the bytes it carries, until it closes its end.
func receive(uc *net.UnixConn, deliver func(net.Conn, []byte)) error {
	defer uc.Close()
	buf := make([]byte, 1+maxCarried)
	oob := make([]byte, syscall.CmsgSpace(4*maxBatch))
	for {
		n, oobn, flags, _, err := uc.ReadMsgUnix(buf, oob)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("receiving connections from the previous generation: %w", err)
		}
		var carried []byte
		if n > 1 && buf[0] == carryByte {
			carried = bytes.Clone(buf[1:n])
		}
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return fmt.Errorf("reading a handed-over connection: %w", err)
		}
		for _, m := range msgs {
			fds, err := syscall.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				cf := os.NewFile(uintptr(fd), "handed-over connection")
				nc, err := net.FileConn(cf)
				cf.Close()
				if err != nil {
					return fmt.Errorf("taking a handed-over connection: %w", err)
				}
				deliver(nc, carried)
			}
		}
		if flags&syscall.MSG_CTRUNC != 0 {
			// The kernel closed the descriptors that did not fit; the
			// sender sends no more than maxBatch, so this is a bug.
			return fmt.Errorf("receiving connections from the previous generation: more than %d descriptors in one message", maxBatch)
		}
	}
}

// handedListener gives the HTTP server the connections received from the
// previous generation, as if it had accepted them.
type handedListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func newHandedListener(addr net.Addr) *handedListener {
	return &handedListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: addr}
}

func (l *handedListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// deliver returns the function that gives a received connection, made
// ours by adopt, to the server; once the server has stopped taking them,
// it closes it.
func (l *handedListener) deliver(adopt func(net.Conn, []byte) *conn) func(net.Conn, []byte) {
	return func(nc net.Conn, carried []byte) {
		c := adopt(nc, carried)
		select {
		case l.conns <- c:
		case <-l.done:
			c.Close()
		}
	}
}

func (l *handedListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *handedListener) Addr() net.Addr { return l.addr }
