package hotswap

import (
	"fmt"
	"net"
	"os"
	"sync"
)

// listener is an inherited listener the runtime can pause. Pausing closes
// the accepting socket descriptor but keeps a duplicate (as tableflip keeps
// its own), so the socket stays open and the kernel queues new connections
// for whichever process accepts next: the new generation, or this one again
// when a swap fails and resume makes a fresh listener from the duplicate.
// Accept waits while paused, so a server's accept loop never notices.
type listener struct {
	addr  net.Addr
	spare *os.File

	mu      sync.Mutex
	changed *sync.Cond
	ln      net.Listener // nil while paused
	closed  bool
}

type filer interface {
	File() (*os.File, error)
}

// newListener wraps ln, paused: a generation accepts only once it is Ready.
func newListener(ln net.Listener) (*listener, error) {
	fl, ok := ln.(filer)
	if !ok {
		return nil, fmt.Errorf("listener %T on %s cannot be duplicated; use a TCP or Unix listener", ln, ln.Addr())
	}
	spare, err := fl.File()
	if err != nil {
		return nil, fmt.Errorf("duplicating listener on %s: %w", ln.Addr(), err)
	}
	ln.Close()
	l := &listener{addr: ln.Addr(), spare: spare}
	l.changed = sync.NewCond(&l.mu)
	return l, nil
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		for l.ln == nil && !l.closed {
			l.changed.Wait()
		}
		if l.closed {
			l.mu.Unlock()
			return nil, net.ErrClosed
		}
		ln := l.ln
		l.mu.Unlock()

		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		l.mu.Lock()
		paused := l.ln != ln && !l.closed
		l.mu.Unlock()
		if !paused {
			return nil, err
		}
	}
}

func (l *listener) pause() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
}

func (l *listener) resume() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil || l.closed {
		return nil
	}
	ln, err := net.FileListener(l.spare)
	if err != nil {
		return fmt.Errorf("resuming listener on %s: %w", l.addr, err)
	}
	l.ln = ln
	l.changed.Broadcast()
	return nil
}

// Close stops accepting for good. The socket stays open while tableflip
// holds it, so connections queue for the next generation.
func (l *listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
	l.changed.Broadcast()
	return l.spare.Close()
}

func (l *listener) Addr() net.Addr { return l.addr }
