package main

import "testing"

func TestDuckURLIsOneAUserCanOpen(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8396": "http://127.0.0.1:8396",
		":8396":          "http://127.0.0.1:8396 (every interface)",
		"0.0.0.0:8396":   "http://127.0.0.1:8396 (every interface)",
		"[::]:8396":      "http://127.0.0.1:8396 (every interface)",
		"[::1]:8396":     "http://[::1]:8396",
		"duck.local:80":  "http://duck.local:80",
	} {
		if got := duckURL(addr); got != want {
			t.Errorf("duckURL(%q) = %q, want %q", addr, got, want)
		}
	}
}
