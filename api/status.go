package api

import (
	"time"

	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// Local is what one node says of itself for `status`: the version its ducks run and the ducks.
type Local struct {
	Name    string     `json:"name"`
	Role    string     `json:"role"`
	Version bundle.ID  `json:"version,omitempty"` // bundle ID
	Label   Label      `json:"label,omitempty"`   // vN if committed, else the short ID and "(local)"
	Ducks   []DuckInfo `json:"ducks"`
	// DuckUser says whose authority ducks run with: a user of their own on a root node, else
	// "shared with the node (uid N)". See docs/SECURITY.md for what a duck can and cannot reach.
	DuckUser string `json:"duck_user,omitempty"`
	// UpFor is how long the node's process has run, by its own clock: a canary restarted since
	// its turn restarted its ducks with it, and their restart counts went with the old process.
	UpFor time.Duration `json:"up_for_ns,omitempty"`
}

// NodeStatus is one row of `status`.
type NodeStatus struct {
	Member    MemberStatus  `json:"member"`
	Local     *Local        `json:"local,omitempty"` // nil when unreachable
	Rollout   *rollout.Node `json:"rollout,omitempty"`
	Reachable bool          `json:"reachable"`
}

// Status is the cluster as `status` shows it.
type Status struct {
	Nodes   []NodeStatus `json:"nodes"`
	Rollout RolloutView  `json:"rollout"`
	// Voters is how many members vote; Tolerates how many of them the cluster can lose and
	// still commit.
	Voters    int `json:"voters"`
	Tolerates int `json:"tolerates"`
	// VotersReachable is how many voters answered this status; with fewer than a majority of
	// Voters the cluster cannot commit.
	VotersReachable int `json:"voters_reachable"`
	// Removed, from a node taken out of its cluster while it was down, says so and what to do:
	// the rest of the answer is what that node last knew.
	Removed string `json:"removed,omitempty"`
}
