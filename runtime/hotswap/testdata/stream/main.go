// Command stream is the duck's HTTP API (schema 1: GET / and POST /quack,
// counted across swaps) plus GET /stream, a response written in parts over
// time, so tests can swap while one is in flight.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

type state struct {
	Lines int `json:"lines"`
	Count int `json:"count"`
}

func main() {
	err := hotswap.Run(hotswap.Config[state]{Schema: 1}, func(d *hotswap.Duck[state]) error {
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
		// GET /stream?parts=N&every=D writes N lines, one every D; with
		// &attached=1 it does not Detach, and holds a swap until it ends.
		mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
			parts, err1 := strconv.Atoi(r.URL.Query().Get("parts"))
			every, err2 := time.ParseDuration(r.URL.Query().Get("every"))
			if err1 != nil || err2 != nil {
				http.Error(w, "use /stream?parts=10&every=20ms", http.StatusBadRequest)
				return
			}
			// It changes no state: a swap need not wait for it.
			if r.URL.Query().Get("attached") != "1" {
				hotswap.Detach(r)
			}
			w.Header().Set("Content-Type", "text/plain")
			for i := range parts {
				fmt.Fprintf(w, "part %d of %d from %s\n", i+1, parts, d.Version)
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done(): // the client went away
					return
				case <-time.After(every):
				}
			}
		})
		return d.Serve(mux)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "stream:", err)
		os.Exit(1)
	}
}

func reply(w http.ResponseWriter, count int, version string) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"count": count, "version": version})
}
