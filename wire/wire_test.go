package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/duckraft/duckraft/internal/waitfor"
)

var (
	idsOnce        sync.Once
	duckID, goosID *Identity
)

// identities makes the two test identities once.
func identities(t *testing.T) (*Identity, *Identity) {
	t.Helper()
	idsOnce.Do(func() {
		var err error
		if duckID, err = FromCookie("duck"); err != nil {
			panic(err)
		}
		if goosID, err = FromCookie("goose"); err != nil {
			panic(err)
		}
	})
	return duckID, goosID
}

// syncBuffer collects log output written from the listener's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// echoServer accepts authenticated connections and echoes what they send.
func echoServer(t *testing.T, id *Identity, explainHTTP bool) (*Listener, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	l, err := id.Listen("tcp", "127.0.0.1:0", explainHTTP, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return l, logs
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.Until(t, what, 10*time.Second, cond)
}

func TestSameCookieConnects(t *testing.T) {
	duck, _ := identities(t)
	l, _ := echoServer(t, duck, true)
	c, err := duck.Dial(context.Background(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.ConnectionState().Version != tls.VersionTLS13 {
		t.Fatalf("negotiated TLS version %x, want 1.3", c.ConnectionState().Version)
	}
	msg := []byte("quack")
	c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

func TestWrongCookieIsRefusedOnBothSides(t *testing.T) {
	duck, goose := identities(t)
	l, logs := echoServer(t, duck, true)
	_, err := goose.Dial(context.Background(), "tcp", l.Addr().String())
	if !errors.Is(err, ErrCookieMismatch) {
		t.Fatalf("dial with another cookie: err = %v, want ErrCookieMismatch", err)
	}
	if !strings.Contains(err.Error(), "cookies differ") || !strings.Contains(err.Error(), "--cookie-file") {
		t.Fatalf("client error does not say what to do: %v", err)
	}
	waitFor(t, "the server to log the refusal", func() bool { return strings.Contains(logs.String(), "cookies differ") })
}

func TestPeerWithoutCookieIsRefused(t *testing.T) {
	duck, _ := identities(t)
	l, logs := echoServer(t, duck, false)
	// A TLS client that does not know the exchange, as curl -k speaking something else would be.
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "hello, anyone?\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("a client without the cookie was answered (%d bytes)", n)
	}
	waitFor(t, "the server to log the refusal", func() bool { return strings.Contains(logs.String(), "no cookie") })
}

func TestPlainHTTPClientGets401NamingTheCookie(t *testing.T) {
	duck, _ := identities(t)
	l, _ := echoServer(t, duck, true)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(got), "HTTP/1.1 401") || !strings.Contains(string(got), "cookie") {
		t.Fatalf("plain HTTP answer = %q, want a 401 naming the cookie", got)
	}
}

// tamperProxy relays between a client and addr, letting fault rewrite each chunk going to the
// server; a nil chunk from fault cuts the stream.
func tamperProxy(t *testing.T, addr string, fault func(n int, b []byte) []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", addr)
			if err != nil {
				client.Close()
				continue
			}
			go func() { io.Copy(client, server); client.Close() }()
			go func() {
				defer server.Close()
				buf := make([]byte, 64<<10)
				total := 0
				for {
					n, err := client.Read(buf)
					if n > 0 {
						out := fault(total, append([]byte(nil), buf[:n]...))
						total += n
						if out == nil {
							return
						}
						if _, werr := server.Write(out); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// receivedBy runs a server that reads one whole message and reports what it read.
func receivedBy(t *testing.T, id *Identity) (string, chan []byte, chan error) {
	t.Helper()
	l, err := id.Listen("tcp", "127.0.0.1:0", false, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got, errs := make(chan []byte, 1), make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			errs <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err != nil {
			errs <- err
			return
		}
		got <- b
	}()
	return l.Addr().String(), got, errs
}

func TestFlippedByteOnTheWayIsDetected(t *testing.T) {
	duck, _ := identities(t)
	addr, got, errs := receivedBy(t, duck)
	const handshakeDone = 4096 // well past the client's handshake flight
	flipped := false
	proxy := tamperProxy(t, addr, func(n int, b []byte) []byte {
		if n+len(b) > handshakeDone && !flipped && n >= 1000 {
			b[len(b)/2] ^= 0x01
			flipped = true
		}
		return b
	})
	c, err := duck.Dial(context.Background(), "tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("append entry: run duck v2\n"), 4000)
	c.Write(payload)
	c.Close()
	select {
	case b := <-got:
		t.Fatalf("a tampered stream was accepted (%d bytes, flipped=%v)", len(b), flipped)
	case err := <-errs:
		if !strings.Contains(err.Error(), "authentication failed") && !strings.Contains(err.Error(), "bad record MAC") {
			t.Fatalf("tampering reported as %v, want a record authentication failure", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server neither accepted nor refused the tampered stream")
	}
}

func TestStreamCutShortIsDetected(t *testing.T) {
	duck, _ := identities(t)
	addr, got, errs := receivedBy(t, duck)
	// Cut inside a record, past the handshake. (A cut that falls exactly between two records
	// reads as a clean end in TLS; the protocols on top, HTTP and Raft's, frame their messages
	// by length and refuse a short one.)
	const cutAt = 20000
	cut := false
	proxy := tamperProxy(t, addr, func(n int, b []byte) []byte {
		if cut {
			return nil
		}
		if n+len(b) > cutAt {
			cut = true
			return b[:cutAt-n]
		}
		return b
	})
	c, err := duck.Dial(context.Background(), "tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), 100000)
	c.Write(payload)
	c.Close()
	select {
	case b := <-got:
		t.Fatalf("a truncated stream read as complete: %d of %d bytes", len(b), len(payload))
	case err := <-errs:
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("truncation reported as %v, want unexpected EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server neither accepted nor refused the truncated stream")
	}
}

func TestDialNothingListeningSaysSo(t *testing.T) {
	duck, _ := identities(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	_, err := duck.Dial(context.Background(), "tcp", addr)
	if err == nil || !strings.Contains(err.Error(), "nothing listens") {
		t.Fatalf("dial of a closed port: %v", err)
	}
}

func TestCookieFileReadableByOthersIsRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cookie")
	os.WriteFile(path, []byte("duck\n"), 0o644)
	_, err := CookieSource{File: path}.Load()
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("loose cookie file: err = %v", err)
	}
	os.Chmod(path, 0o600)
	c, err := CookieSource{File: path}.Load()
	if err != nil || c != "duck" {
		t.Fatalf("cookie = %q, %v", c, err)
	}
}

func TestDefaultCookieIsMadeOnceWithMode0600(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv(CookieEnv, "")
	if _, err := (CookieSource{}).Load(); err == nil {
		t.Fatal("a client without any cookie got one made up")
	}
	first, err := CookieSource{Create: true}.Load()
	if err != nil {
		t.Fatal(err)
	}
	path, _ := DefaultCookieFile()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("default cookie file: %v, mode %v", err, fi.Mode())
	}
	again, err := CookieSource{}.Load()
	if err != nil || again != first {
		t.Fatalf("second load = %q, %v; want the same cookie", again, err)
	}
}

// A cookie file reached through a symbolic link is refused: whoever made the link chooses which
// cookie this node proves.
func TestCookieFileThroughSymlinkIsRefused(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.WriteFile(real, []byte("duck\n"), 0o600)
	link := filepath.Join(dir, "cookie")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := (CookieSource{File: link}).Load(); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("cookie file through a link: %v", err)
	}
}

// A port in use says what else may hold it: an outgoing connection can take a port of the
// ephemeral range as its own end, and a node restarted at once found its port gone.
func TestAPortInUseSaysWhatMayHoldIt(t *testing.T) {
	id, err := FromCookie("duck")
	if err != nil {
		t.Fatal(err)
	}
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, err = id.Listen("tcp", held.Addr().String(), false, nil)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "ip_local_port_range") {
		t.Fatalf("listening on a port in use: %v", err)
	}
}
