package rollout

import (
	"fmt"
	"time"
)

// Policy is the rules of one rollout, committed with its version so that every node and every
// later leader applies the same ones (Nomad's update stanza is the model). Each phase a node can
// be in has a bound here, so that a rollout always ends: done, halted and gone back, or paused
// for the operator.
type Policy struct {
	// StartDeadline is how long a granted node may take to say it started its turn, and how long
	// a node may stay pending (never saying it builds) before it is granted anyway, to be
	// skipped if it stays silent. A node that is down is skipped sooner, after DownAfter: this
	// bound is for one in contact but slow, as a node is on a busy host (5s skipped nodes of a
	// hundred on two cores).
	StartDeadline time.Duration `json:"start_deadline,omitempty"`
	// BuildDeadline bounds a node's build, from the commit: a node still building past it fails
	// the rollout, as a version that takes that long to build is not fit to roll out.
	BuildDeadline time.Duration `json:"build_deadline,omitempty"`
	// ProgressDeadline bounds one node's turn, swap and healthy wait together, forward or back.
	ProgressDeadline time.Duration `json:"progress_deadline,omitempty"`
	// Healthy is how long each new duck must stay up after Ready for its swap to count.
	Healthy time.Duration `json:"healthy,omitempty"`
	// DownAfter is how long the leader may lose contact with a node (Raft's heartbeats) before
	// the node counts as down: a down node is skipped in whatever phase it is and catches up
	// when it returns.
	DownAfter time.Duration `json:"down_after,omitempty"`

	// MaxParallel is how many nodes of a wave may be in their turn at once (0: one), or, with
	// MaxParallelPercent, that share of the members (at least one).
	MaxParallel        int `json:"max_parallel,omitempty"`
	MaxParallelPercent int `json:"max_parallel_percent,omitempty"`
	// Canaries is how many nodes go first, as a wave of their own; the rollout then pauses for
	// the operator, or carries on by itself once they stayed healthy for AutoPromoteAfter.
	Canaries         int           `json:"canaries,omitempty"`
	AutoPromoteAfter time.Duration `json:"auto_promote_after,omitempty"`
	// WaveBy is a label key: the nodes that share its value form a wave, waves go one after the
	// other in the natural order of the values (nodes without the label last).
	WaveBy string `json:"wave_by,omitempty"`
	// FailureBudget is how many nodes may fail before the rollout halts (0: the first halts it).
	FailureBudget int `json:"failure_budget,omitempty"`
	// SameBinary halts the rollout when a node's build differs from the others' (toolchain
	// drift): the error names the nodes and their toolchains.
	SameBinary bool `json:"same_binary,omitempty"`
}

// parallel is how many nodes of size may be in their turn at once.
func (p Policy) parallel(size int) int {
	if p.MaxParallelPercent > 0 {
		return max(1, (size*p.MaxParallelPercent+99)/100)
	}
	return max(1, p.MaxParallel)
}

// Defaults for a Policy's zero fields.
const (
	DefaultStartDeadline    = 30 * time.Second
	DefaultBuildDeadline    = 5 * time.Minute
	DefaultProgressDeadline = 2 * time.Minute
	DefaultHealthy          = 500 * time.Millisecond
	DefaultDownAfter        = 3 * time.Second
)

// WithDefaults fills the zero fields.
func (p Policy) WithDefaults() Policy {
	or := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	or(&p.StartDeadline, DefaultStartDeadline)
	or(&p.BuildDeadline, DefaultBuildDeadline)
	or(&p.ProgressDeadline, DefaultProgressDeadline)
	or(&p.Healthy, DefaultHealthy)
	or(&p.DownAfter, DefaultDownAfter)
	return p
}

// Validate refuses a policy no rollout can keep: a negative bound, or a turn too short for the
// healthy wait it includes.
func (p Policy) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"start deadline", p.StartDeadline}, {"build deadline", p.BuildDeadline},
		{"progress deadline", p.ProgressDeadline}, {"healthy time", p.Healthy}, {"down-after", p.DownAfter},
	} {
		if f.d < 0 {
			return fmt.Errorf("rollout policy: the %s is %s; give a positive duration such as 30s", f.name, f.d)
		}
	}
	for _, f := range []struct {
		name string
		n    int
	}{
		{"max-parallel", p.MaxParallel}, {"canary count", p.Canaries}, {"failure budget", p.FailureBudget},
	} {
		if f.n < 0 {
			return fmt.Errorf("rollout policy: the %s is %d; give 0 or more", f.name, f.n)
		}
	}
	if p.MaxParallelPercent < 0 || p.MaxParallelPercent > 100 {
		return fmt.Errorf("rollout policy: max-parallel %d%% is not a share of the nodes; give 1%% to 100%%", p.MaxParallelPercent)
	}
	if p.AutoPromoteAfter < 0 {
		return fmt.Errorf("rollout policy: auto-promote-after is %s; give a positive duration such as 1m", p.AutoPromoteAfter)
	}
	if p.AutoPromoteAfter > 0 && p.Canaries == 0 {
		return fmt.Errorf("rollout policy: auto-promote-after without canaries promotes nothing; add --canary N")
	}
	q := p.WithDefaults()
	if q.Healthy >= q.ProgressDeadline {
		return fmt.Errorf("rollout policy: the healthy time (%s) must be shorter than the progress deadline (%s), which includes it; raise --progress-deadline", q.Healthy, q.ProgressDeadline)
	}
	return nil
}
