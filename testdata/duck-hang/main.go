// Command duck-hang is a bad version for tests: its setup never returns, so
// it never becomes Ready and the ready timeout must kill it while the
// generation it was meant to replace carries on.
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
		fmt.Fprintln(os.Stderr, "duck-hang: never becoming Ready on purpose")
		select {}
	})
	fmt.Fprintln(os.Stderr, "duck-hang:", err)
	os.Exit(1)
}
