// Command duck-crash is a bad version for tests: it receives the state like
// any duck, then dies with a non-zero status before it is Ready, so the
// generation it was meant to replace must carry on.
package main

import (
	"fmt"
	"os"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

type state struct {
	Lines int `json:"lines"`
	Count int `json:"count"`
}

func main() {
	err := hotswap.Run(hotswap.Config[state]{Schema: 1}, func(d *hotswap.Duck[state]) error {
		// Setup runs before the state has come, while the old generation serves on; reading
		// the state waits for it. DUCK_CRASH_BEFORE_STATE=1 crashes before that instead.
		if os.Getenv("DUCK_CRASH_BEFORE_STATE") != "1" {
			d.State.Read(func(state) {})
		}
		fmt.Fprintln(os.Stderr, "duck-crash: crashing before Ready on purpose")
		os.Exit(3)
		return nil
	})
	fmt.Fprintln(os.Stderr, "duck-crash:", err)
	os.Exit(1)
}
