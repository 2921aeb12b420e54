// Command duck-slow is duck taking two seconds to become Ready: a swap to it
// stays in flight long enough for the fault tests to kill something in the
// middle of it. Same state (schema 1) and HTTP API as duck.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

// The line the duck prints every DUCK_INTERVAL: the quack number and version.
const quack = "Quack... #%d (%s)\n"

// state is handed from each version of the duck to the next.
type state struct {
	Lines int `json:"lines"` // quack lines printed
	Count int `json:"count"` // POST /quack requests served
}

func main() {
	interval, err := time.ParseDuration(envOr("DUCK_INTERVAL", "1s"))
	if err != nil || interval <= 0 {
		fmt.Fprintf(os.Stderr, "duck: DUCK_INTERVAL=%q is not a positive duration; use e.g. 1s\n", os.Getenv("DUCK_INTERVAL"))
		os.Exit(2)
	}
	err = hotswap.Run(hotswap.Config[state]{Schema: 1}, func(d *hotswap.Duck[state]) error {
		// The state first, then slow to start: the window the fault tests aim at, with the
		// state handed over and the old generation holding requests. (A setup that does not
		// read the state runs while the old generation still serves.)
		d.State.Read(func(state) {})
		time.Sleep(2 * time.Second)
		go func() {
			for range time.Tick(interval) {
				d.State.Update(func(s *state) {
					s.Lines++
					fmt.Printf(quack, s.Lines, d.Version)
				})
			}
		}()
		mux := http.NewServeMux()
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			var count int
			d.State.Read(func(s state) { count = s.Count })
			reply(w, count, d.Version)
		})
		mux.HandleFunc("POST /quack", func(w http.ResponseWriter, r *http.Request) {
			var count int
			d.State.Update(func(s *state) { s.Count++; count = s.Count })
			reply(w, count, d.Version)
		})
		return d.Serve(mux)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "duck:", err)
		os.Exit(1)
	}
}

func reply(w http.ResponseWriter, count int, version string) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"count": count, "version": version})
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
