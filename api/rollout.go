package api

import (
	"fmt"
	"time"

	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// CommitRequest is what a node sends the leader to commit a version.
type CommitRequest struct {
	Bundle   []byte `json:"bundle"`
	Message  string `json:"message,omitempty"`
	Author   string `json:"author,omitempty"`
	Canary   bool   `json:"canary,omitempty"`
	NoRevert bool   `json:"no_revert,omitempty"`
	// Policy is the rollout's rules; zero fields take rollout's defaults.
	Policy rollout.Policy `json:"policy,omitzero"`
}

// CommitResult names the version committed.
type CommitResult struct {
	N  rollout.Number `json:"n"`
	ID bundle.ID      `json:"id"`
	// Already: this bundle is the version rolling out now, committed before (by this call
	// before a leader change, or by another): nothing new was committed, and the message and
	// policy it was committed with stay.
	Already bool `json:"already,omitempty"`
}

// Committed is how the CLI says what a commit did.
func (c CommitResult) Committed() string {
	if c.Already {
		return fmt.Sprintf("version %d (%s) is this source, already committed and its rollout under way: nothing new committed; its message and policy stay as they were", c.N, LabelOf(c.ID))
	}
	return fmt.Sprintf("committed version %d (%s)", c.N, LabelOf(c.ID))
}

// VersionInfo is a committed version without its bundle.
type VersionInfo struct {
	N         rollout.Number `json:"n"`
	ID        bundle.ID      `json:"id"`
	Message   string         `json:"message,omitempty"`
	Author    string         `json:"author,omitempty"`
	Committed time.Time      `json:"committed"`
}

// RolloutView is the cluster's rollout picture, the same from every node that has caught up.
type RolloutView struct {
	Leader   string             `json:"leader"`
	Rollout  *rollout.Rollout   `json:"rollout,omitempty"`
	Past     []*rollout.Rollout `json:"past,omitempty"`
	Versions []VersionInfo      `json:"versions"`
	// Canaries is how each canary's ducks are, asked while the rollout waits after its canary
	// wave for `rollout resume` (a canary whose duck crash-loops after its healthy wait showed
	// only in `status`'s DUCKS column).
	Canaries []CanaryCheck `json:"canaries,omitempty"`
}

// CanaryCheck is one canary's answer: Healthy, or Why not; Unknown when it could not tell (no
// answer, a duck still starting).
type CanaryCheck struct {
	Node    string `json:"node"`
	Healthy bool   `json:"healthy"`
	Unknown bool   `json:"unknown,omitempty"`
	Why     string `json:"why,omitempty"`
}

// Grant is the leader telling a node of the turn it granted it, once the grant is committed:
// Rollout is the leader's rollout at log index Index. The node acts on it as on its own log,
// only sooner (see follower.Follower.Granted).
type Grant struct {
	Index   uint64           `json:"index"`
	Rollout *rollout.Rollout `json:"rollout"`
}

// RolloutAction is pause, resume or undo (to the previous version, or to version To).
type RolloutAction struct {
	Action string         `json:"action"`
	To     rollout.Number `json:"to,omitempty"`
	// NoRevert, with undo To: the rollout back to To does not go back itself if it fails (as
	// deploy --no-revert), so it may cross a state layout with no way back.
	NoRevert bool `json:"no_revert,omitempty"`
	// Wave, with pause: pause once the wave under way has ended; with resume: run the next wave
	// only, then pause again.
	Wave bool `json:"wave,omitempty"`
	// Force, with resume: carry on past canaries that are not healthy, or cannot say; with
	// undo: go back even though the versions' state layouts say it would fail.
	Force bool `json:"force,omitempty"`
}
