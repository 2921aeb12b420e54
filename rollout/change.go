package rollout

import (
	"fmt"
	"time"
)

// The changes below are what the log applies to a rollout. Each one is deterministic (the time
// is the leader's stamp, never the clock) and refuses, leaving the rollout as it was, what no
// well-behaved node would send in the rollout's present state.

// Grant gives node its turn: Granted to swap forward, Reverting to go back.
func (r *Rollout) Grant(node string, phase Phase, now time.Time) error {
	nr, err := r.node(node)
	if err != nil {
		return err
	}
	switch {
	case phase == Granted && r.State == Rolling && !nr.Phase.Ended() && nr.Phase != Granted && nr.Phase != Swapping:
	case phase == Reverting && r.State == GoingBack && nr.Phase == Running:
	default:
		return fmt.Errorf("%w: %s cannot be granted %s (it is %s, the rollout %s)", ErrStale, node, phase, nr.Phase, r.State)
	}
	nr.Phase, nr.Since, nr.Granted, nr.Error = phase, now, now, ""
	return nil
}

// ReportBuilt records that node built the target, what its build made and, when the node could
// ask the binaries, what they say of the state (st may be nil).
func (r *Rollout) ReportBuilt(node string, b BuildInfo, st *StateInfo, now time.Time) error {
	nr, err := r.node(node)
	if err != nil {
		return err
	}
	if nr.Binary == nil {
		nr.Binary = &b
	}
	if nr.State == nil && st != nil {
		nr.State = st
	}
	return r.Report(node, Built, "", now)
}

// Report records a node's progress, or what the leader found about it (skipped, failed).
func (r *Rollout) Report(node string, phase Phase, msg string, now time.Time) error {
	nr, err := r.node(node)
	if err != nil {
		return err
	}
	switch phase {
	case Building, Built:
		// A build report never undoes a later phase: builds run beside the rollout.
		if nr.Phase != Pending && nr.Phase != Building {
			return nil
		}
		if phase == Building {
			nr.BuildStarted = now
		} else {
			nr.Built = now
		}
	case Swapping:
		if nr.Phase == Swapping {
			// Said again: a node restarted mid-turn replays the log, sees its grant before its
			// own report and reports once more. The turn goes on.
			return nil
		}
		// A turn starts only while the rollout goes forward: a node granted before a halt or
		// a revert must not swap to a version already known to fail.
		if nr.Phase != Granted || !r.forward() {
			return fmt.Errorf("%w: %s may not start a swap (it is %s, the rollout %s)", ErrStale, node, nr.Phase, r.State)
		}
	case Running:
		if nr.Phase == Running {
			// Said again: a retry of a report the log took, whose answer was lost. Refused, it
			// would tell the node that the log did not take its turn, and the node would go back.
			return nil
		}
		if nr.Phase != Granted && nr.Phase != Swapping {
			return fmt.Errorf("%w: %s reports running but was not in its turn (it is %s)", ErrStale, node, nr.Phase)
		}
	case Reverted:
		if nr.Phase != Reverting {
			return fmt.Errorf("%w: %s reports going back but was not asked to (it is %s)", ErrStale, node, nr.Phase)
		}
	case Failed, Skipped:
		// Once a node's part has ended, a late word about it (a build that failed after the
		// leader skipped the node) changes nothing.
		// A node running the target still has a part while the rollout goes back.
		if nr.Phase.Ended() && !(nr.Phase == Running && r.State == GoingBack) {
			return fmt.Errorf("%w: %s is already %s", ErrStale, node, nr.Phase)
		}
	default:
		return fmt.Errorf("unknown phase %q", phase)
	}
	nr.Phase, nr.Since, nr.Error = phase, now, msg
	if phase.Ended() {
		nr.Done = now
	}
	if phase == Failed && r.forward() && r.failed() > r.Policy.FailureBudget {
		// The first failure stops the rollout where it is; the cluster keeps serving the old
		// version on every node not yet upgraded.
		r.Reason = fmt.Sprintf("%s failed: %s", node, msg)
		if r.Policy.FailureBudget > 0 {
			r.Reason = fmt.Sprintf("%d nodes failed, over the failure budget of %d; the last, %s: %s", r.failed(), r.Policy.FailureBudget, node, msg)
		}
		r.State = Halted
		if r.AutoRevert && r.FromID != "" {
			r.State = GoingBack
		} else {
			r.Ended = now
		}
	}
	return nil
}

// SetWaveState works wave by wave: Paused has a rolling rollout pause once the wave under way
// has ended (`rollout pause --after-wave`); Rolling resumes a paused one for its next wave only,
// to pause again at that wave's end (`rollout resume --one-wave`).
func (r *Rollout) SetWaveState(state State, now time.Time) error {
	wave := r.waveUnderWay()
	if wave < 0 {
		return fmt.Errorf("version %d has no wave left to run", r.Version)
	}
	switch state {
	case Paused:
		if r.State != Rolling {
			return fmt.Errorf("version %d is %s, not rolling: nothing to pause", r.Version, r.State)
		}
		r.PauseAfter = wave + 1
		return nil
	case Rolling:
		if err := r.SetState(Rolling, "", now); err != nil {
			return err
		}
		r.PauseAfter = wave + 1
		return nil
	}
	return fmt.Errorf("wave by wave, a rollout pauses or resumes; not %q", state)
}

// waveUnderWay is the first wave with a node whose turn has not ended, -1 when none has.
func (r *Rollout) waveUnderWay() int {
	for _, name := range r.Order {
		if nr := r.Nodes[name]; !nr.Phase.Ended() {
			return nr.Wave
		}
	}
	return -1
}

// SetState pauses, resumes, undoes or ends the rollout.
func (r *Rollout) SetState(state State, reason string, now time.Time) error {
	switch state {
	case Paused:
		if r.State != Rolling {
			return fmt.Errorf("version %d is %s, not rolling: nothing to pause", r.Version, r.State)
		}
		r.PausedAt = now
	case Rolling:
		if r.State != Paused {
			return fmt.Errorf("version %d is %s, not paused: nothing to resume", r.Version, r.State)
		}
		r.Canary = false // resume carries on to every node
		r.PauseAfter = 0
	case GoingBack:
		if !r.Active() && r.State != Done && r.State != Halted {
			return fmt.Errorf("version %d is %s: nothing to undo", r.Version, r.State)
		}
		if r.FromID == "" {
			return fmt.Errorf("version %d is the first version: there is nothing to go back to", r.Version)
		}
		r.Ended = time.Time{}
	case Done, WentBack, Halted:
		r.Ended = now
	default:
		return fmt.Errorf("unknown rollout state %q", state)
	}
	r.State = state
	if reason != "" {
		r.Reason = reason
	}
	return nil
}

func (r *Rollout) node(name string) (*Node, error) {
	nr, ok := r.Nodes[name]
	if !ok {
		return nil, fmt.Errorf("%s is not in version %d's rollout", name, r.Version)
	}
	return nr, nil
}

func (r *Rollout) failed() int {
	n := 0
	for _, nr := range r.Nodes {
		if nr.Phase == Failed {
			n++
		}
	}
	return n
}
