package wire

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// stranger is someone without the cookie who connects to a node, runs the exchange committed to
// one guess of the cookie, and keeps everything he saw, as a cracker would.
type stranger struct {
	cert   []byte // the certificate the node showed
	sid    []byte
	cp     *cpace // his side, made with his guess
	answer []byte // the node's element and tag
}

func connectAsStranger(t *testing.T, addr, guess string) *stranger {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sid, err := sessionID(c)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := newCPace([]byte(guess), sid)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(append([]byte(dialerMagic), cp.Y...))
	answer := make([]byte, elementSize+tagSize)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, answer); err != nil {
		t.Fatalf("the node did not answer the exchange: %v", err)
	}
	return &stranger{cert: c.ConnectionState().PeerCertificates[0].Raw, sid: sid, cp: cp, answer: answer}
}

// crack tries every candidate against what the stranger saw, offline. A cookie could leak in
// two ways: a value that is a function of the cookie and public data (the old wire's public key;
// a plain MAC of the session under the cookie, the design CPace replaces), which crack tests for
// each candidate; or the CPace key, which a candidate enters only through the generator, whose
// discrete log nobody knows: the only key the stranger can compute is his own scalar times the
// node's element, and that matches the node's tag only if the guess he committed to online was
// right.
func (s *stranger) crack(candidates []string) (found string, ok bool) {
	Yb, tagB := s.answer[:elementSize], s.answer[elementSize:]
	seen := append(append([]byte(nil), s.cert...), s.answer...)
	for _, c := range candidates {
		for _, key := range [][]byte{[]byte(c), generator([]byte(c), s.sid).Encode(nil)} {
			for _, msg := range [][]byte{s.sid, s.cp.Y, append(append([]byte(nil), s.cp.Y...), Yb...)} {
				m := hmac.New(sha512.New, key)
				m.Write(msg)
				if bytes.Contains(seen, m.Sum(nil)[:16]) {
					return c, true
				}
			}
			if len(key) >= 16 && bytes.Contains(seen, key) { // shorter ones match by chance ("duck" in "duckraft")
				return c, true
			}
		}
	}
	isk, err := s.cp.isk(s.sid, s.cp.Y, Yb, Yb)
	if err == nil && hmac.Equal(tag(isk, "listener"), tagB) {
		return "(the guess made online)", true
	}
	return "", false
}

var dictionary = []string{"password", "goose", "duck", "quack", "123456", "duckraft"}

// The README's old cookie, `duck`, fell to an offline dictionary attack in 8 guesses: the node
// showed a public key derived from it. Now a stranger who connects learns nothing he can test
// offline: after a connection committed to a wrong guess, the whole dictionary (which holds the
// right cookie) fails against what he saw. Only the one guess he made online, per connection, is
// decided, as the check with the right guess shows (so the cracker is not blind).
func TestStrangerLearnsNothingToTestOffline(t *testing.T) {
	duck, _ := identities(t)
	l, logs := echoServer(t, duck, false)

	wrong := connectAsStranger(t, l.Addr().String(), "goose")
	if c, ok := wrong.crack(dictionary); ok {
		t.Fatalf("offline cracking after a wrong online guess found %q", c)
	}
	right := connectAsStranger(t, l.Addr().String(), "duck")
	if _, ok := right.crack(dictionary); !ok {
		t.Fatal("the cracker did not even confirm a right online guess: this test would not see a leak")
	}
	// Both strangers left without proving anything; the node says so.
	waitFor(t, "the node to log the strangers", func() bool { return strings.Count(logs.String(), "refused connection") >= 2 })
}

// The certificate is the only thing TLS shows before the exchange. It is a fresh key per
// process, so two nodes with the same cookie show different keys, and two nodes with different
// cookies cannot be told apart by theirs: it is no function of the cookie.
func TestCertificateSaysNothingOfTheCookie(t *testing.T) {
	a, err := FromCookie("duck")
	if err != nil {
		t.Fatal(err)
	}
	b, err := FromCookie("duck")
	if err != nil {
		t.Fatal(err)
	}
	la, _ := echoServer(t, a, false)
	lb, _ := echoServer(t, b, false)
	sa := connectAsStranger(t, la.Addr().String(), "x")
	sb := connectAsStranger(t, lb.Addr().String(), "x")
	ca, _ := x509.ParseCertificate(sa.cert)
	cb, _ := x509.ParseCertificate(sb.cert)
	if bytes.Equal(ca.RawSubjectPublicKeyInfo, cb.RawSubjectPublicKeyInfo) {
		t.Fatal("two processes with the same cookie show the same key: it is derived from the cookie")
	}
	// And the node's element is fresh on every connection, so no two transcripts share anything
	// a stranger could correlate.
	again := connectAsStranger(t, la.Addr().String(), "x")
	if bytes.Equal(sa.answer[:elementSize], again.answer[:elementSize]) {
		t.Fatal("the node sent the same element twice")
	}
}

// A man in the middle who terminates TLS on both sides and relays the exchange fails: the two
// sessions have different exporters, so the CPace keys differ, even though the bytes he relays
// come from cookie holders.
func TestRelayedExchangeFails(t *testing.T) {
	duck, _ := identities(t)
	l, logs := echoServer(t, duck, false)
	front, err := tls.Listen("tcp", "127.0.0.1:0", duck.serverConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	go func() {
		c, err := front.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		back, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			return
		}
		defer back.Close()
		go io.Copy(back, c)
		io.Copy(c, back)
	}()
	_, err = duck.Dial(context.Background(), "tcp", front.Addr().String())
	if err == nil {
		t.Fatal("a cookie holder accepted an exchange relayed across two TLS sessions")
	}
	if !strings.Contains(err.Error(), "cookies differ") {
		t.Fatalf("relayed exchange: %v", err)
	}
	waitFor(t, "the node to refuse the relay", func() bool { return strings.Contains(logs.String(), "cookies differ") })
}

// An invalid element (the identity, which would force a known key) is refused.
func TestIdentityElementIsRefused(t *testing.T) {
	duck, _ := identities(t)
	l, logs := echoServer(t, duck, false)
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(append([]byte(dialerMagic), make([]byte, elementSize)...)) // all zeros encodes the identity
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the node answered an identity element (%d bytes)", n)
	}
	waitFor(t, "the node to log the invalid exchange", func() bool { return strings.Contains(logs.String(), "invalid cookie exchange") })
}

var _ net.Conn = (*Conn)(nil)
