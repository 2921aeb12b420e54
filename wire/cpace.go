package wire

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"errors"

	"github.com/gtank/ristretto255"
)

// CPace (draft-irtf-cfrg-cpace, the CPace-RISTR255-SHA512 suite) is the balanced PAKE the cookie
// is proven with. Each side sends one random-looking group element; only a peer that used the
// same cookie (and the same TLS session, see sid) derives the same key. Someone who does not
// hold the cookie learns, per connection, whether one cookie guess of his was right, and nothing
// he can test further offline: that is what the cookie-derived public key this replaces gave
// to anyone who connected.
//
// The construction follows the draft's generator string, scalar multiplication with the
// identity check, and ISK derivation; its key confirmation is our own (role-separated HMACs over
// the ISK, see tag), and no interoperability with other CPace implementations is claimed.

const (
	cpaceDSI     = "CPaceRistretto255"
	cpaceCI      = "duckraft wire v2" // the channel identifier: duckraft's, on any port
	elementSize  = 32
	tagSize      = 32
	sidSize      = 32
	sInBytes     = 128 // SHA-512's block size, as the draft pads the generator string to
	exporterName = "EXPORTER-duckraft-cpace-sid"
)

var errInvalidElement = errors.New("the peer sent an invalid group element")

// cpace is one side of one exchange.
type cpace struct {
	y *ristretto255.Scalar
	// Y is our message: y times the cookie's generator for this session.
	Y []byte
}

// newCPace picks a fresh secret scalar for the session sid and the password prs.
func newCPace(prs, sid []byte) (*cpace, error) {
	g := generator(prs, sid)
	var r [64]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	y := ristretto255.NewScalar().FromUniformBytes(r[:])
	Y := ristretto255.NewElement().ScalarMult(y, g)
	return &cpace{y: y, Y: Y.Encode(nil)}, nil
}

// generator is the draft's calculate_generator: the one-way map of SHA-512 over the padded,
// length-prefixed DSI, password, channel and session ids. Nobody knows its discrete log, which is
// why a Y reveals nothing about the password it was made with.
func generator(prs, sid []byte) *ristretto255.Element {
	zpad := sInBytes - 1 - len(prependLen(prs)) - len(prependLen([]byte(cpaceDSI)))
	if zpad < 0 {
		zpad = 0
	}
	h := sha512.New()
	h.Write(lvCat([]byte(cpaceDSI), prs, make([]byte, zpad), []byte(cpaceCI), sid))
	return ristretto255.NewElement().FromUniformBytes(h.Sum(nil))
}

// isk derives the intermediate session key from the peer's element, refusing an invalid encoding
// and the identity (which a peer could send to force a known key). Ya is the dialer's element and
// Yb the listener's, so both sides hash the same transcript.
func (c *cpace) isk(sid, Ya, Yb []byte, peer []byte) ([]byte, error) {
	X := ristretto255.NewElement()
	if err := X.Decode(peer); err != nil {
		return nil, errInvalidElement
	}
	K := ristretto255.NewElement().ScalarMult(c.y, X)
	if K.Equal(ristretto255.NewElement()) == 1 {
		return nil, errInvalidElement
	}
	h := sha512.New()
	h.Write(lvCat([]byte(cpaceDSI+"_ISK"), sid, K.Encode(nil)))
	h.Write(lvCat(Ya, nil))
	h.Write(lvCat(Yb, nil))
	return h.Sum(nil), nil
}

// tag is a side's key confirmation. The role in the MAC keeps one side's tag from being replayed
// as the other's.
func tag(isk []byte, role string) []byte {
	m := hmac.New(sha512.New, isk)
	m.Write([]byte("duckraft key confirmation: " + role))
	return m.Sum(nil)[:tagSize]
}

// prependLen is the draft's prepend_len: a LEB128 length, then the bytes.
func prependLen(b []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(b))), b...)
}

func lvCat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, prependLen(p)...)
	}
	return out
}
