// Package wire is the channel every duckraft connection travels on, node to node and CLI to node:
// TLS 1.3 from the standard library, mutually authenticated by one Ed25519 key pair that only
// holders of the cluster cookie can derive. Each side pins the other's public key to the key it
// derived itself, so the cookie never crosses the wire, and every byte after the handshake is
// encrypted and authenticated: nothing on the path can read a bundle, replay a call or inject a
// Raft entry. Erlang's cookie only guards the handshake; this guards the stream.
package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// kdfIterations makes guessing a cookie from a captured public key slow: about 0.1 s per guess
// on the machines this was measured on (PBKDF2-SHA256, the figure OWASP recommends).
const kdfIterations = 600_000

// kdfSalt is fixed rather than random because both ends must derive the same key from the cookie
// alone; it still separates duckraft's keys from any other use of the same secret.
const kdfSalt = "duckraft wire v1: cookie to ed25519 seed"

// ErrCookieMismatch means the peer proved a different cookie than ours.
var ErrCookieMismatch = errors.New("the cookies differ")

// ErrNoCookie means the peer proved no cookie at all (a plain TLS or HTTP client).
var ErrNoCookie = errors.New("the peer presented no cookie")

// Identity is what a cookie holder proves itself with: the key derived from the cookie and a
// self-signed certificate carrying it. It holds no copy of the cookie.
type Identity struct {
	public ed25519.PublicKey
	cert   tls.Certificate
}

// FromCookie derives the identity for a cookie. It is deliberately slow (see kdfIterations):
// derive once per process.
func FromCookie(cookie string) (*Identity, error) {
	if cookie == "" {
		return nil, errors.New("empty cookie: pass --cookie-file, DUCKRAFT_COOKIE or --cookie")
	}
	seed, err := pbkdf2.Key(sha256.New, cookie, []byte(kdfSalt), kdfIterations, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("derive key from cookie: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	// The certificate is only a carrier for the public key: nobody checks its name or chain, both
	// sides compare the key itself. A random serial keeps two processes' certificates distinct.
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "duckraft"},
		NotBefore:    time.Now().Add(-24 * time.Hour),
		NotAfter:     time.Now().Add(100 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("self-sign certificate: %w", err)
	}
	return &Identity{
		public: pub,
		cert:   tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv},
	}, nil
}

// verify pins the peer's key to ours: the only certificate accepted is one carrying the key the
// shared cookie derives. No chain, name or time is checked, because none of them prove anything
// here.
func (id *Identity) verify(rawCerts [][]byte, required bool) error {
	if len(rawCerts) == 0 {
		if required {
			return ErrNoCookie
		}
		return nil
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("peer certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || !bytes.Equal(pub, id.public) {
		return ErrCookieMismatch
	}
	return nil
}

// ServerConfig is the TLS configuration for accepting connections. With requireCookie false a
// client without a certificate still completes the handshake, so that an HTTP server can answer
// it with a 401 naming the cookie instead of an opaque TLS failure; HasCookie tells the two apart.
// A client proving a different cookie is always refused in the handshake.
func (id *Identity) ServerConfig(requireCookie bool) *tls.Config {
	auth := tls.RequestClientCert
	if requireCookie {
		auth = tls.RequireAnyClientCert
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   auth,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return id.verify(raw, requireCookie)
		},
	}
}

// ClientConfig is the TLS configuration for dialing a node. InsecureSkipVerify only turns off the
// web PKI checks, which mean nothing for a self-signed key; VerifyPeerCertificate does the real
// check, pinning the server's key to the cookie's.
func (id *Identity) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{id.cert},
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return id.verify(raw, true)
		},
	}
}

// HasCookie reports whether a completed handshake proved the cookie. Only a server built with
// ServerConfig(false) can see a state where it did not.
func (id *Identity) HasCookie(cs *tls.ConnectionState) bool {
	return cs != nil && len(cs.PeerCertificates) > 0 && id.verify([][]byte{cs.PeerCertificates[0].Raw}, true) == nil
}
