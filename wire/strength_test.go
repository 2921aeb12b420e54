package wire

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWeakCookiesAreEstimatedLow(t *testing.T) {
	for _, c := range []string{
		"duck", "password", "correct horse battery staple", "Password123456789",
		"12121212121212121212121212", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"0123456789abcdef0123",
	} {
		if b := CookieBits(c); b >= MinCookieBits {
			t.Errorf("CookieBits(%q) = %.0f, want under %d", c, b, MinCookieBits)
		}
	}
}

func TestGeneratedCookiesAreEstimatedStrong(t *testing.T) {
	for i := 0; i < 200; i++ {
		c, err := NewCookie()
		if err != nil {
			t.Fatal(err)
		}
		if b := CookieBits(c); b < MinCookieBits {
			t.Fatalf("CookieBits(%q) = %.0f for a generated cookie, want at least %d", c, b, MinCookieBits)
		}
	}
	// The test suites' cookies: 16 random bytes in hex.
	if b := CookieBits("3f9a1c0b7e2d4f6a8b9c0d1e2f3a4b5c"); b < MinCookieBits {
		t.Fatalf("a 128-bit hex cookie is estimated at %.0f bits", b)
	}
}

func TestWeakCookieIsRefusedOffLoopbackOnly(t *testing.T) {
	duck, _ := identities(t)
	for _, addrs := range [][]string{{"127.0.0.1:4370", "127.0.0.1:4371"}, {"localhost:1", "[::1]:2"}, {"127.0.0.1:0", ""}} {
		if err := duck.CheckReach(addrs...); err != nil {
			t.Errorf("duck on %v: %v", addrs, err)
		}
	}
	for _, addrs := range [][]string{{"0.0.0.0:4370"}, {"127.0.0.1:1", "10.0.0.7:4371"}, {"node-a.example:4370"}} {
		err := duck.CheckReach(addrs...)
		if err == nil || !strings.Contains(err.Error(), "too weak") || !strings.Contains(err.Error(), filepath.Base(os.Args[0])+" cookie >") {
			t.Errorf("duck on %v: err = %v, want a refusal saying how to make a cookie", addrs, err)
		}
	}
	c, _ := NewCookie()
	strong, _ := FromCookie(c)
	if err := strong.CheckReach("0.0.0.0:4370"); err != nil {
		t.Errorf("a generated cookie on 0.0.0.0: %v", err)
	}
}
