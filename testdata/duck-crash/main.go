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
		fmt.Fprintln(os.Stderr, "duck-crash: crashing before Ready on purpose")
		os.Exit(3)
		return nil
	})
	fmt.Fprintln(os.Stderr, "duck-crash:", err)
	os.Exit(1)
}
