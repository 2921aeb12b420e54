// Package driver is the leader's side of a rolling upgrade: at every look at the log it commits
// whatever rollout.Steps says, with Raft's view of which members the leader still reaches. Only
// the leader acts, and since the next steps are a function of the log and that view alone, a new
// leader continues where the old one stopped.
package driver

import (
	"context"
	"log/slog"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

// Log is the replicated log as the leader sees it.
type Log interface {
	IsLeader() bool
	// Rollout is the current rollout, nil before the first commit.
	Rollout() *rollout.Rollout
	// Silence is how long each member has not answered the leader.
	Silence() rollout.Silence
	// Changed is closed at the next change of the applied state.
	Changed() <-chan struct{}
	// CommitSteps appends the steps of one round to the log as one entry: all apply or none.
	CommitSteps(r *rollout.Rollout, steps []rollout.Step, now time.Time) error
}

// MaxSteps bounds the leader's moves committed in one log entry (a wave's grants, skips): a
// hundred steps make an entry of about 20 kB.
const MaxSteps = 100

// Driver moves rollouts forward while its node leads.
type Driver struct {
	Log    Log
	Logger *slog.Logger
}

// Run drives rollouts until ctx ends: woken by the log (a report) at once, while a ticker
// catches what the log does not announce (deadlines, a leader change, a Raft reset).
func (d *Driver) Run(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.Log.Changed():
		}
		d.Round(time.Now().UTC())
	}
}

// Round commits the steps the rollout can take at now, if this node leads, and returns them;
// none when it does not lead, nothing is rolling out, or the log did not take them.
func (d *Driver) Round(now time.Time) []rollout.Step {
	if !d.Log.IsLeader() {
		return nil
	}
	r := d.Log.Rollout()
	if !r.Active() {
		return nil
	}
	steps := r.Steps(now, d.Log.Silence(), MaxSteps)
	if len(steps) == 0 {
		return nil
	}
	if err := d.Log.CommitSteps(r, steps, now); err != nil {
		d.logger().Warn("rollout steps", "first", steps[0].Why, "steps", len(steps), "err", err)
		return nil
	}
	for _, step := range steps {
		d.logger().Info("rollout", "version", r.Version, "step", step.Op, "node", step.Node, "phase", step.Phase, "state", step.State, "why", step.Message)
	}
	return steps
}

func (d *Driver) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.Default()
	}
	return d.Logger
}
