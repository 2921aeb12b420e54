package wire

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// failingListener fails its first accepts the way a process out of descriptors does.
type failingListener struct {
	net.Listener
	failures atomic.Int32
}

func (f *failingListener) Accept() (net.Conn, error) {
	if f.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return f.Listener.Accept()
}

// EMFILE (or ENFILE, ENOBUFS) on accept is pressure, which anyone who can connect can cause; the
// listener waits and tries again rather than closing for good.
func TestAcceptErrorsAreRetried(t *testing.T) {
	duck, _ := identities(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &failingListener{Listener: inner}
	fl.failures.Store(5)
	before := AcceptErrors()
	logs := &syncBuffer{}
	l := duck.NewListener(fl, false, slog.New(slog.NewTextHandler(logs, nil)))
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := duck.Dial(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("after %d failed accepts the listener no longer serves: %v", 5, err)
	}
	c.Close()
	if n := AcceptErrors() - before; n != 5 {
		t.Errorf("accept errors counted: %d, want 5", n)
	}
	if !strings.Contains(logs.String(), "accept failed; retrying") {
		t.Errorf("the retries were not logged:\n%s", logs.String())
	}
}

// Connections that never prove the cookie, more of them than MaxHandshakes, idle in clear or
// silent after TLS, neither lock out a cookie holder nor fill the log.
func TestIdleStrangersDoNotLockOutMembers(t *testing.T) {
	duck, _ := identities(t)
	l, logs := echoServer(t, duck, false)
	addr := l.Addr().String()
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	before := Refused(RefusedOverload)
	for i := 0; i < MaxHandshakes+150; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("stranger %d: %v", i, err)
		}
		held = append(held, c)
	}
	for i := 0; i < 50; i++ {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatalf("TLS stranger %d: %v", i, err)
		}
		held = append(held, c)
	}
	for i := 0; i < 3; i++ {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, err := duck.Dial(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Fatalf("a cookie holder among %d idle strangers: %v", len(held), err)
		}
		c.Write([]byte("q"))
		b := make([]byte, 1)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("echo among strangers: %v", err)
		}
		c.Close()
		t.Logf("cookie holder served in %s among %d strangers", time.Since(start).Round(time.Millisecond), len(held))
	}
	waitFor(t, "the oldest strangers to be dropped", func() bool { return Refused(RefusedOverload)-before >= 150 })
	if n := strings.Count(logs.String(), "refused connection"); n > logBurst+5 {
		t.Errorf("%d refusal lines logged for a flood, want at most about %d", n, logBurst)
	}
}

// An HTTP client over TLS without the cookie (curl -k) is told why in a 401, and the connection
// is closed after it: a keep-alive connection would let it hold a place for ever.
func TestHTTPSClientGets401AndIsHungUpOn(t *testing.T) {
	duck, _ := identities(t)
	l, _ := echoServer(t, duck, true)
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /v1/members HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the connection was not closed after the 401: %v (read %q)", err, got)
	}
	if !strings.HasPrefix(string(got), "HTTP/1.1 401") || !strings.Contains(string(got), "cookie") {
		t.Fatalf("answer = %q, want a 401 naming the cookie", got)
	}
}
