// Package wire is the channel every duckraft connection travels on, node to node and CLI to node:
// TLS 1.3 from the standard library, then, inside the encrypted session, a password-authenticated
// key exchange (CPace) over the cluster cookie bound to that session. Nothing either side sends
// before the other has proven the cookie depends on the cookie: the certificate is a fresh random
// key made when the process starts, and a CPace message is a random group element. So an open
// port hands nobody an offline verifier; a peer without the cookie gets one guess per connection.
// Every byte after the handshake is encrypted and authenticated by TLS: nothing on the path can
// read a bundle, replay a call or inject a Raft entry. Erlang's cookie only guards the handshake;
// this guards the stream.
package wire

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ErrCookieMismatch means the peer proved a different cookie than ours.
var ErrCookieMismatch = errors.New("the cookies differ")

// ErrNoCookie means the peer did not attempt to prove a cookie at all (a plain TLS or HTTP
// client, or one that left in the middle of the exchange).
var ErrNoCookie = errors.New("the peer presented no cookie")

// Identity is what a cookie holder proves itself with: the cookie, kept only in this process's
// memory, and a TLS certificate made at random when the process started, which says nothing
// about the cookie.
type Identity struct {
	prs  []byte
	cert tls.Certificate
}

// FromCookie makes the identity for a cookie. It is cheap: the cookie is only ever used inside
// CPace, which needs no slow KDF because nothing it sends can be tested offline.
func FromCookie(cookie string) (*Identity, error) {
	if cookie == "" {
		return nil, errors.New("empty cookie: pass --cookie-file, DUCKRAFT_COOKIE or --cookie")
	}
	cert, err := randomCertificate()
	if err != nil {
		return nil, err
	}
	return &Identity{prs: []byte(cookie), cert: cert}, nil
}

// randomCertificate makes a self-signed certificate for a fresh Ed25519 key. TLS wants a server
// certificate; nobody checks this one, because what authenticates a peer is the CPace exchange
// bound to the session (see sessionID), not the certificate.
func randomCertificate() (tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("session key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "duckraft"},
		NotBefore:    time.Now().Add(-24 * time.Hour),
		NotAfter:     time.Now().Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-sign certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// serverConfig is the TLS configuration for accepting connections. It asks no client
// certificate: the client proves the cookie inside the session, and a client without one (curl)
// still reaches the point where it can be told so in words.
func (id *Identity) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   tls.NoClientCert,
	}
}

// clientConfig is the TLS configuration for dialing a node. InsecureSkipVerify is safe here, and
// not a shortcut: the server's certificate is a random key that proves nothing, and a
// man in the middle who terminates TLS holds a different session, so the CPace exchange bound to
// our session fails with him unless he holds the cookie.
func (id *Identity) clientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
	}
}
