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
	// skipped if it stays silent.
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
}

// Defaults for a Policy's zero fields.
const (
	DefaultStartDeadline    = 5 * time.Second
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
	q := p.WithDefaults()
	if q.Healthy >= q.ProgressDeadline {
		return fmt.Errorf("rollout policy: the healthy time (%s) must be shorter than the progress deadline (%s), which includes it; raise --progress-deadline", q.Healthy, q.ProgressDeadline)
	}
	return nil
}
