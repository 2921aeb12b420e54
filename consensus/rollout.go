package consensus

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"

	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// Version is a committed code version: a source bundle named by its sha256, numbered in commit
// order.
type Version struct {
	N         rollout.Number `json:"n"`
	ID        bundle.ID      `json:"id"`
	Message   string         `json:"message,omitempty"`
	Author    string         `json:"author,omitempty"`
	Committed time.Time      `json:"committed"`
	// Bundle is the source itself. The log carries it (bundles are small); the state keeps the
	// newest keepBundles of them so snapshots stay small.
	Bundle []byte `json:"bundle,omitempty"`
}

// keepBundles is how many versions keep their bundle in the state: enough to undo a few steps.
const keepBundles = 5

// commit records a new version and starts its rollout.
func (s *State) commit(c Commit) error {
	if len(c.Version.Bundle) == 0 {
		return fmt.Errorf("commit without a bundle")
	}
	if !validID.MatchString(string(c.Version.ID)) {
		// The ID names folders on every node: it must be the sha256 and nothing else.
		return fmt.Errorf("commit of %q: a version ID is the bundle's sha256 in 64 lowercase hex digits", c.Version.ID)
	}
	policy := c.Policy
	if err := policy.Validate(); err != nil {
		return err
	}
	if s.Rollout.Active() {
		if s.Rollout.Target == c.Version.ID {
			return nil // the same commit again (a retry after a lost leader): nothing new
		}
		return fmt.Errorf("version %d is still rolling out (%s): wait for it, or `rollout undo`", s.Rollout.Version, s.Rollout.State)
	}
	var from *Version
	if len(s.Versions) > 0 {
		from = &s.Versions[len(s.Versions)-1]
		// A rollout that halted with nodes on its target leaves two versions running: the
		// source of either is a new version then, not the one the cluster runs (a failed go-back
		// was refused a deploy of the previous source as "already running").
		if cur := s.current(); cur != nil && cur.ID == c.Version.ID && !s.Rollout.Mixed() {
			return fmt.Errorf("%w: this bundle is version %d, which the cluster already runs", ErrSameVersion, cur.N)
		}
	}
	v := c.Version
	v.N = 1
	if from != nil {
		v.N = from.N + 1
	}
	v.Committed = c.Time
	s.Versions = append(s.Versions, v)
	// Drop old bundles, but never the one the cluster runs (a revert needs it), nor those of the
	// newest keepGood versions that rolled out everywhere: failed versions counted among the
	// newest five, and after a few of them `undo --to` could not reach the last good one.
	cur := s.current()
	good := s.lastDone(keepGood)
	for i := 0; i < len(s.Versions)-keepBundles; i++ {
		if (cur == nil || s.Versions[i].N != cur.N) && !good[s.Versions[i].N] {
			s.Versions[i].Bundle = nil
		}
	}
	fromN, fromID := rollout.Number(0), bundle.ID("")
	if cur != nil {
		fromN, fromID = cur.N, cur.ID
	}
	var members []rollout.Member
	for _, name := range slices.Sorted(maps.Keys(s.Members)) {
		members = append(members, rollout.Member{Name: name, Labels: s.Members[name].Labels})
	}
	r := rollout.New(v.N, v.ID, fromN, fromID, members, c.Canary, !c.NoRevert, policy, c.Time)
	s.Rollout = r
	return nil
}

// keepGood is how many of the newest versions that rolled out everywhere keep their bundle
// whatever came after them.
const keepGood = 3

// lastDone is the newest n versions whose rollout ended done (the rollout under way, s.Rollout,
// is not yet in s.Past).
func (s *State) lastDone(n int) map[rollout.Number]bool {
	out := map[rollout.Number]bool{}
	rs := append(slices.Clone(s.Past), s.Rollout)
	for i := len(rs) - 1; i >= 0 && len(out) < n; i-- {
		if r := rs[i]; r != nil && r.State == rollout.Done {
			out[r.Version] = true
		}
	}
	return out
}

// current is the version the cluster runs: the last rollout's target once done (or while it
// rolls), its source after a revert or halt.
func (s *State) current() *Version {
	r := s.Rollout
	if r == nil {
		return nil
	}
	n := r.Version
	if (r.State == rollout.WentBack || r.State == rollout.Halted) && r.From != 0 && !r.HaltedOnTarget() {
		n = r.From
	}
	for i := range s.Versions {
		if s.Versions[i].N == n {
			return &s.Versions[i]
		}
	}
	return nil
}

var validID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// rolloutFor is rollout n, if it is the current one.
func (s *State) rolloutFor(n rollout.Number) (*rollout.Rollout, error) {
	r := s.Rollout
	if r == nil || r.Version != n {
		return nil, fmt.Errorf("%w: version %d is not the one rolling out", ErrStale, n)
	}
	return r, nil
}

func (s *State) grant(c Grant) error {
	r, err := s.rolloutFor(c.N)
	if err != nil {
		return err
	}
	return r.Grant(c.Node, c.Phase, c.Time)
}

func (s *State) report(c Report) error {
	r, err := s.rolloutFor(c.N)
	if err != nil {
		return err
	}
	if c.Phase == rollout.Built && c.Build != nil {
		return r.ReportBuilt(c.Node, *c.Build, c.States, c.Time)
	}
	return r.Report(c.Node, c.Phase, c.Error, c.Time)
}

func (s *State) setRolloutState(c SetState) error {
	r, err := s.rolloutFor(c.N)
	if err != nil {
		return err
	}
	return r.SetState(c.State, c.Reason, c.Time)
}

// steps applies the leader's moves of one round in order, all or none: a refused one leaves the
// rollout as it was before the first.
func (s *State) steps(c Steps) error {
	before := s.Rollout.Clone()
	for i, st := range c.Steps {
		var err error
		var node string
		switch st := st.(type) {
		case Grant:
			st.Time, node = c.Time, st.Node // one stamp for the round, the leader's
			err = s.grant(st)
		case Report:
			st.Time, node = c.Time, st.Node
			err = s.report(st)
		case SetState:
			st.Time = c.Time
			err = s.setRolloutState(st)
		}
		if err != nil {
			s.Rollout = before
			return fmt.Errorf("step %d of %d (%s %s): %w", i+1, len(c.Steps), st.op(), node, err)
		}
	}
	return nil
}

// RoundOf is the change that makes the leader's steps of one round in rollout r at time now:
// one log entry however many steps, so that a wave's grants cost one round trip.
func RoundOf(r *rollout.Rollout, steps []rollout.Step, now time.Time) Change {
	if len(steps) == 1 {
		return StepOf(r, steps[0], now)
	}
	c := Steps{N: r.Version, Time: now}
	for _, st := range steps {
		c.Steps = append(c.Steps, StepOf(r, st, now))
	}
	return c
}

// StepOf is the change that makes the leader's step st in rollout r at time now.
func StepOf(r *rollout.Rollout, st rollout.Step, now time.Time) Step {
	switch st.Op {
	case rollout.OpGrant:
		return Grant{N: r.Version, Node: st.Node, Phase: st.Phase, Time: now}
	case rollout.OpReport:
		return Report{N: r.Version, Node: st.Node, Phase: st.Phase, Error: st.Message, Time: now}
	default:
		return SetState{N: r.Version, State: st.State, Reason: st.Message, Time: now}
	}
}
