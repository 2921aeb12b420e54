// Command duck-flaky is a bad version for supervisor tests: it becomes
// Ready like any duck, then dies DUCK_CRASH_AFTER later (default 100ms), so
// a supervisor restarting it sees a crash loop.
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

type state struct {
	Count int `json:"count"`
}

func main() {
	after, err := time.ParseDuration(envOr("DUCK_CRASH_AFTER", "100ms"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "duck-flaky: DUCK_CRASH_AFTER:", err)
		os.Exit(2)
	}
	err = hotswap.Run(hotswap.Config[state]{Schema: 1}, func(d *hotswap.Duck[state]) error {
		time.AfterFunc(after, func() {
			fmt.Fprintln(os.Stderr, "duck-flaky: crashing after Ready on purpose")
			os.Exit(4)
		})
		return d.Serve(http.NotFoundHandler())
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "duck-flaky:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
