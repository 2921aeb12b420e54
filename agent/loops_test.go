package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
)

func TestDucksHealthTellsACrashSinceTheTurnFromOneBefore(t *testing.T) {
	turn := time.Minute // the canary's turn ended a minute ago
	for _, c := range []struct {
		name    string
		duck    api.DuckInfo
		why     string // "" healthy
		unknown bool
	}{
		{"up since its swap", api.DuckInfo{ID: "duck-1", State: "running", UpFor: turn + time.Second}, "", false},
		{"restarted before the rollout, swapped since", api.DuckInfo{ID: "duck-1", State: "running", Restarts: 2, UpFor: turn + time.Second}, "", false},
		{"spawned by hand since", api.DuckInfo{ID: "duck-2", State: "running", UpFor: time.Second}, "", false},
		{"stopped by hand", api.DuckInfo{ID: "duck-1", State: "stopped"}, "", false},
		{"crashed since and running again", api.DuckInfo{ID: "duck-1", State: "running", Restarts: 1, UpFor: 20 * time.Second, LastError: "exit status 3"}, "duck-1 crashed and was restarted since the turn ended (1 restarts, the last 40s after the turn; last error: exit status 3)", false},
		{"crash looping", api.DuckInfo{ID: "duck-1", State: "restarting", Restarts: 3}, "duck-1 is restarting", false},
		{"given up on", api.DuckInfo{ID: "duck-1", State: "failed", Restarts: 6}, "duck-1 is failed", false},
		{"mid-swap", api.DuckInfo{ID: "duck-1", State: "swapping"}, "", true},
	} {
		why, err := api.DucksHealth([]api.DuckInfo{{ID: "duck-0", State: "running", UpFor: 2 * turn}, c.duck}, turn)
		if (err != nil) != c.unknown {
			t.Errorf("%s: err %v, want unknown=%v", c.name, err, c.unknown)
		}
		if c.why == "" && why != "" || c.why != "" && !strings.HasPrefix(why, c.why) {
			t.Errorf("%s: %q, want %q", c.name, why, c.why)
		}
	}
}
