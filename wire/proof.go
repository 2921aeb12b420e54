package wire

import (
	"crypto/hmac"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The exchange inside a fresh TLS session, after which a connection counts as a cookie holder's:
//
//	dialer   → listener: "DRK2" Ya                (4 + 32 bytes)
//	listener → dialer:   Yb tag(listener)         (32 + 32 bytes)
//	dialer   → listener: 0x00 tag(dialer)         (1 + 32 bytes; 0x01 and zeros: "your tag was wrong")
//
// The listener proves first, so a dialer without the cookie gets one tag, keyed by a CPace
// session key that he can compute only for the one cookie he guessed when he made Ya. A listener
// without the cookie (someone who took over a member's address) gets no tag from an honest dialer,
// which refuses it on the listener's wrong tag. The dialer's status byte only lets the listener
// log the cause of a refusal in words.
const dialerMagic = "DRK2"

const (
	statusProven  byte = 0
	statusRefused byte = 1
)

// errNotDuckraft is a peer that spoke something else than the exchange: often HTTP.
var errNotDuckraft = errors.New("the peer does not speak duckraft's cookie exchange")

// errLeftMidway is a peer that left, or stalled, before finishing the exchange: a scanner, or
// someone who learned whether one guess of his was right and went to try the next.
var errLeftMidway = errors.New("the peer left before proving the cookie")

// sessionID binds the exchange to this TLS session: a man in the middle holds two sessions with
// two different exporters, so he cannot relay one side's CPace messages to the other.
func sessionID(c *tls.Conn) ([]byte, error) {
	cs := c.ConnectionState()
	sid, err := cs.ExportKeyingMaterial(exporterName, nil, sidSize)
	if err != nil {
		return nil, fmt.Errorf("TLS exporter: %w", err)
	}
	return sid, nil
}

// proveAsDialer runs the dialer's side on a completed TLS session.
func (id *Identity) proveAsDialer(c *tls.Conn) error {
	sid, err := sessionID(c)
	if err != nil {
		return err
	}
	cp, err := newCPace(id.prs, sid)
	if err != nil {
		return err
	}
	if _, err := c.Write(append([]byte(dialerMagic), cp.Y...)); err != nil {
		return fmt.Errorf("send the cookie exchange: %w", err)
	}
	var answer [elementSize + tagSize]byte
	if _, err := io.ReadFull(c, answer[:]); err != nil {
		return fmt.Errorf("the node closed the connection in the cookie exchange (it may be at its connection limit, or not a duckraft node): %w", err)
	}
	Yb := answer[:elementSize]
	isk, err := cp.isk(sid, cp.Y, Yb, Yb)
	if err != nil || !hmac.Equal(tag(isk, "listener"), answer[elementSize:]) {
		// Telling the listener lets its operator read why in its log; it learns nothing else.
		c.Write(append([]byte{statusRefused}, make([]byte, tagSize)...))
		return ErrCookieMismatch
	}
	if _, err := c.Write(append([]byte{statusProven}, tag(isk, "dialer")...)); err != nil {
		return fmt.Errorf("send the cookie exchange: %w", err)
	}
	return nil
}

// proveAsListener runs the listener's side on a completed TLS session. A peer that opens with
// something else gets errNotDuckraft, with its first bytes, so that an HTTP client can be told
// what it needs.
func (id *Identity) proveAsListener(c *tls.Conn) (first []byte, err error) {
	var hello [len(dialerMagic) + elementSize]byte
	n, err := io.ReadFull(c, hello[:len(dialerMagic)])
	if err != nil {
		return hello[:n], errLeftMidway
	}
	if string(hello[:len(dialerMagic)]) != dialerMagic {
		return hello[:n], errNotDuckraft
	}
	if _, err := io.ReadFull(c, hello[len(dialerMagic):]); err != nil {
		return nil, errLeftMidway
	}
	sid, err := sessionID(c)
	if err != nil {
		return nil, err
	}
	cp, err := newCPace(id.prs, sid)
	if err != nil {
		return nil, err
	}
	Ya := hello[len(dialerMagic):]
	isk, err := cp.isk(sid, Ya, cp.Y, Ya)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(append(append([]byte(nil), cp.Y...), tag(isk, "listener")...)); err != nil {
		return nil, errLeftMidway
	}
	var proof [1 + tagSize]byte
	if _, err := io.ReadFull(c, proof[:]); err != nil {
		return nil, errLeftMidway
	}
	if proof[0] != statusProven || !hmac.Equal(tag(isk, "dialer"), proof[1:]) {
		return nil, ErrCookieMismatch
	}
	return nil, nil
}

func looksLikeHTTP(hdr []byte) bool {
	s := string(hdr)
	if s == "" {
		return false
	}
	for _, m := range []string{"GET ", "POST ", "PUT ", "HEAD ", "DELET", "OPTIO", "PATCH"} {
		if strings.HasPrefix(m, s) || strings.HasPrefix(s, m) {
			return true
		}
	}
	return false
}
