// Command duck-forker is a duck that starts helper processes, for the supervisor's tests: at
// each generation's setup it starts `sleep` twice, one child it keeps and one it leaves to run
// on its own (a daemon, double-forked: the supervisor, as subreaper, becomes its parent). Each
// helper's argument carries DUCK_FORKER_TAG and the generation, so a test finds them.
package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

type state struct {
	Count int `json:"count"`
}

func main() {
	tag := os.Getenv("DUCK_FORKER_TAG")
	err := hotswap.Run(hotswap.Config[state]{Schema: 1}, func(d *hotswap.Duck[state]) error {
		// sleep takes a number of seconds: the tag and generation ride in its fraction.
		kept := exec.Command("sleep", fmt.Sprintf("1000.%s%d1", tag, d.Generation))
		if err := kept.Start(); err != nil {
			return err
		}
		go kept.Wait()
		daemon := exec.Command("sh", "-c", fmt.Sprintf("(sleep 1000.%s%d2 &)", tag, d.Generation))
		if err := daemon.Run(); err != nil {
			return err
		}
		return d.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d.State.Update(func(s *state) { s.Count++ })
			fmt.Fprintln(w, "ok")
		}))
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "duck-forker:", err)
		os.Exit(1)
	}
}
