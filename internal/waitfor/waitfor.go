// Package waitfor is the tests' one way to wait for a condition: polled, bounded, and failing
// the test with what it waited for.
package waitfor

import (
	"testing"
	"time"
)

// Until polls cond every 10 ms until it holds, and fails t saying what it waited for once
// timeout has passed.
func Until(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
