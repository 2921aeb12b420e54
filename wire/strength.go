package wire

import (
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"unicode"
)

// MinCookieBits is the strength a cookie needs before a node listens anywhere but loopback.
// CPace leaves a stranger one guess per connection; at even a million connections a second, 100
// bits outlast anyone. Below it, a cookie is for nodes on one machine.
const MinCookieBits = 100

// CookieBits estimates, conservatively, how many bits of a guesser's work a cookie is worth: its
// length times the bits of the smallest common alphabet holding all its characters, where a run
// of lowercase letters that could be a word counts as one word from a large list, and a cookie of
// few distinct characters counts for few. It is a heuristic that errs low: it refuses weak
// cookies, it cannot prove a strong one random.
func CookieBits(c string) float64 {
	if c == "" {
		return 0
	}
	perChar := math.Log2(float64(alphabet(c)))
	const wordBits = 16 // about a 65,000-word list
	bits := 0.0
	runes := []rune(c)
	hexOnly := alphabet(c) <= 16
	for i := 0; i < len(runes); {
		j := i
		for j < len(runes) && unicode.IsLower(runes[j]) {
			j++
		}
		// A capital before the run is part of the word ("Password").
		if n := j - i; n >= 4 && !hexOnly {
			bits += min(wordBits, float64(n)*perChar)
			i = j
			continue
		}
		if j == i && i+1 < len(runes) && unicode.IsUpper(runes[i]) {
			k := i + 1
			for k < len(runes) && unicode.IsLower(runes[k]) {
				k++
			}
			if k-i >= 4 && !hexOnly {
				bits += min(wordBits+1, float64(k-i)*perChar)
				i = k
				continue
			}
		}
		bits += perChar
		i++
	}
	distinct := map[rune]bool{}
	for _, r := range runes {
		distinct[r] = true
	}
	return min(bits, 2*float64(len(distinct))*perChar)
}

// alphabet is the size of the smallest usual alphabet that holds every character of c.
func alphabet(c string) int {
	for _, a := range []struct {
		chars string
		size  int
	}{
		{"0123456789", 10},
		{"0123456789abcdef", 16},
		{"0123456789ABCDEF", 16},
		{"abcdefghijklmnopqrstuvwxyz", 26},
		{"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567=", 32},
		{"abcdefghijklmnopqrstuvwxyz0123456789", 36},
		{"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 36},
		{"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", 52},
		{"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 62},
		{"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/=-_", 64},
	} {
		if strings.Trim(c, a.chars) == "" {
			return a.size
		}
	}
	return 95
}

// Bits is the estimated strength of the cookie this identity proves (see CookieBits).
func (id *Identity) Bits() float64 { return CookieBits(string(id.prs)) }

// CheckReach refuses a weak cookie (under MinCookieBits) for a node that listens or advertises
// anywhere but loopback: there, anyone who can reach a port may guess, and a dictionary cookie
// falls to guessing online too. On loopback only this machine's users can connect, which is why
// `--cookie duck` still works for a cluster on one machine.
func (id *Identity) CheckReach(addrs ...string) error {
	bits := id.Bits()
	if bits >= MinCookieBits {
		return nil
	}
	for _, a := range addrs {
		if a == "" || isLoopback(a) {
			continue
		}
		return fmt.Errorf("the cookie is too weak for a node other machines can reach (about %.0f bits, %d wanted; this node listens or advertises at %s): "+
			"make a strong one with `(umask 077; %s cookie > ~/.duckraft.cookie)` (or start without --cookie, --cookie-file and %s to have ~/.duckraft.cookie made), "+
			"then give every node and client that same file; a short cookie is for nodes on loopback only", bits, MinCookieBits, a, filepath.Base(os.Args[0]), CookieEnv)
	}
	return nil
}

// isLoopback says whether a host or host:port is loopback for certain; names other than
// localhost are not trusted to be, since they may resolve anywhere.
func isLoopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
