// Command duck-migrate is duck at state schema 2, for the migration test:
// the POST count moved from an int "count" to a nested "posts.total" of type
// uint64, and a new field records which schema the state was migrated from.
// Its Migrate converts a schema 1 state handed over by duck, and its
// Downgrade renders its state as schema 1 for a swap back to duck.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

const quack = "Quack, migrated! #%d (%s)\n"

type state struct {
	Lines        int    `json:"lines"`
	Posts        posts  `json:"posts"`
	MigratedFrom int    `json:"migrated_from"` // new in schema 2
	Note         string `json:"note"`          // new in schema 2
}

type posts struct {
	Total uint64 `json:"total"`
}

// migrate is the code_change from duck's schema 1.
func migrate(from int, old json.RawMessage) (state, error) {
	if from != 1 {
		return state{}, fmt.Errorf("duck-migrate knows schema 1 only, got %d", from)
	}
	var v1 struct {
		Lines int `json:"lines"`
		Count int `json:"count"`
	}
	if err := json.Unmarshal(old, &v1); err != nil {
		return state{}, err
	}
	return state{Lines: v1.Lines, Posts: posts{Total: uint64(v1.Count)}, MigratedFrom: 1, Note: "migrated from schema 1"}, nil
}

// downgrade is the code_change({down, 1}) back to duck's schema 1: the
// fields new in schema 2 have no place there and are dropped.
func downgrade(to int, s state) (any, error) {
	if to != 1 {
		return nil, hotswap.ErrNoDowngrade
	}
	return struct {
		Lines int `json:"lines"`
		Count int `json:"count"`
	}{Lines: s.Lines, Count: int(s.Posts.Total)}, nil
}

func main() {
	interval, err := time.ParseDuration(envOr("DUCK_INTERVAL", "1s"))
	if err != nil || interval <= 0 {
		fmt.Fprintf(os.Stderr, "duck-migrate: DUCK_INTERVAL=%q is not a positive duration\n", os.Getenv("DUCK_INTERVAL"))
		os.Exit(2)
	}
	err = hotswap.Run(hotswap.Config[state]{Schema: 2, Migrate: migrate, Downgrade: downgrade}, func(d *hotswap.Duck[state]) error {
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
			var s state
			d.State.Read(func(cur state) { s = cur })
			reply(w, s, d.Version)
		})
		mux.HandleFunc("POST /quack", func(w http.ResponseWriter, r *http.Request) {
			var s state
			d.State.Update(func(cur *state) { cur.Posts.Total++; s = *cur })
			reply(w, s, d.Version)
		})
		return d.Serve(mux)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "duck-migrate:", err)
		os.Exit(1)
	}
}

// reply keeps duck's "count" and "version" and shows the whole state too,
// so a test can check the migration field by field.
func reply(w http.ResponseWriter, s state, version string) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"count": s.Posts.Total, "version": version, "state": s})
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
