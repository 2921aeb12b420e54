// Command oneway is a duck at state schema 3 with a Migrate from
// duck-migrate's schema 2 and no Downgrade: a swap back from it to schema 2
// must be refused, and oneway carry on with its state.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

type state struct {
	Lines int    `json:"lines"`
	Total uint64 `json:"total"` // posts.total in schema 2
}

func migrate(from int, old json.RawMessage) (state, error) {
	if from != 2 {
		return state{}, fmt.Errorf("oneway knows schema 2 only, got %d", from)
	}
	var v2 struct {
		Lines int `json:"lines"`
		Posts struct {
			Total uint64 `json:"total"`
		} `json:"posts"`
	}
	if err := json.Unmarshal(old, &v2); err != nil {
		return state{}, err
	}
	return state{Lines: v2.Lines, Total: v2.Posts.Total}, nil
}

func main() {
	err := hotswap.Run(hotswap.Config[state]{Schema: 3, Migrate: migrate}, func(d *hotswap.Duck[state]) error {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			var total uint64
			d.State.Read(func(s state) { total = s.Total })
			reply(w, total, d.Version)
		})
		mux.HandleFunc("POST /quack", func(w http.ResponseWriter, r *http.Request) {
			var total uint64
			d.State.Update(func(s *state) { s.Total++; total = s.Total })
			reply(w, total, d.Version)
		})
		return d.Serve(mux)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "oneway:", err)
		os.Exit(1)
	}
}

func reply(w http.ResponseWriter, total uint64, version string) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"count": total, "version": version})
}
