package rollout

import (
	"fmt"
	"slices"
	"time"
)

// Op is what a Step changes.
type Op string

// The changes a leader commits to move a rollout on.
const (
	OpGrant  Op = "grant"  // a node's turn: Phase is Granted (forward) or Reverting (back)
	OpReport Op = "report" // a node's phase as the leader found it (skipped, failed)
	OpState  Op = "state"  // the rollout's state (paused, done, reverted)
)

// Step is what the leader should commit next to move a rollout on; Op is empty when it should
// wait, and Why says for what.
type Step struct {
	Op      Op
	Node    string
	Phase   Phase
	State   State
	Message string // the error of a report, the reason of a state
	Why     string
}

// Silence tells how long the leader has not heard from a node (0 while in contact). The leader
// answers from Raft's heartbeats; a node the leader does not replicate to (not in Raft's
// configuration) is silent for ever.
type Silence func(node string) time.Duration

// Next decides the leader's next move at time now. It is a pure function of the rollout and the
// leader's view of its members, so that any leader, old or new, makes the same move.
//
// Every phase has a way out: a node the leader has lost for Policy.DownAfter is skipped in
// whatever phase it is (it catches up when it returns); a node that stays silent or stuck while
// in contact meets the deadline of its phase (StartDeadline, BuildDeadline, ProgressDeadline).
// So a rollout always ends, done, halted or gone back, unless it is paused for the operator.
func (r *Rollout) Next(now time.Time, silent Silence) Step {
	if !r.Active() {
		return Step{}
	}
	p := r.Policy.WithDefaults()
	down := func(name string) bool { return silent != nil && silent(name) > p.DownAfter }
	lost := func(name string, what string) Step {
		return r.report(name, Skipped, fmt.Sprintf("lost contact for over %s %s: it catches up when the rollout ends", p.DownAfter, what))
	}

	// At most one node is in a turn at a time; it finishes first, whichever way the rollout
	// goes, so that going back never misses a node that was mid-swap.
	for _, name := range r.Order {
		nr := r.Nodes[name]
		in := now.Sub(nr.Since)
		switch nr.Phase {
		case Granted:
			switch {
			case r.State == GoingBack:
				return r.report(name, Skipped, "granted, but the rollout went back before it started")
			case down(name):
				return lost(name, "in its turn")
			case in > p.StartDeadline:
				return r.report(name, Skipped, fmt.Sprintf("no answer within %s of its turn: it catches up when the rollout ends", p.StartDeadline))
			}
			return Step{Why: "waiting for " + name + " to start"}
		case Swapping:
			switch {
			case down(name):
				return lost(name, "while swapping")
			case in > p.ProgressDeadline:
				return r.report(name, Failed, fmt.Sprintf("swap and healthy wait took over the progress deadline (%s)", p.ProgressDeadline))
			}
			return Step{Why: "waiting for " + name + " to swap"}
		case Reverting:
			switch {
			case down(name):
				return lost(name, "while going back")
			case in > p.ProgressDeadline:
				return r.report(name, Failed, fmt.Sprintf("going back took over the progress deadline (%s)", p.ProgressDeadline))
			}
			return Step{Why: "waiting for " + name + " to go back"}
		}
	}

	switch r.State {
	case Rolling:
		upgraded := 0
		for _, name := range r.Order {
			nr := r.Nodes[name]
			switch nr.Phase {
			case Running:
				upgraded++
			case Pending, Building, Built:
				if r.Canary && upgraded > 0 {
					return Step{Op: OpState, State: Paused, Message: "canary " + r.firstRunning() + " runs the version: resume to carry on, undo to go back"}
				}
				switch {
				case down(name):
					return lost(name, "before its turn")
				case nr.Phase == Built:
					// A node's turn comes once it has built, so the turn is the swap alone.
					return Step{Op: OpGrant, Node: name, Phase: Granted, Why: "grant " + name}
				case now.Sub(r.Started) > p.BuildDeadline:
					return r.report(name, Failed, fmt.Sprintf("not built within the build deadline (%s) of the commit", p.BuildDeadline))
				case nr.Phase == Pending && now.Sub(nr.Since) > p.StartDeadline:
					// In contact but never said it builds: granted anyway, it builds in its
					// turn, or is skipped when it does not answer.
					return Step{Op: OpGrant, Node: name, Phase: Granted, Why: "grant " + name + ", silent since the commit"}
				}
				return Step{Why: "waiting for " + name + " to build"}
			}
		}
		if upgraded == 0 {
			// Every node was skipped: nothing has shown the version works, so nobody should
			// catch up with it.
			return Step{Op: OpState, State: Halted, Message: "every node was skipped, so no node ran the version: deploy it again once the nodes are back"}
		}
		return Step{Op: OpState, State: Done}
	case GoingBack:
		for _, name := range slices.Backward(r.Order) {
			if r.Nodes[name].Phase != Running {
				continue
			}
			if down(name) {
				return lost(name, "before going back")
			}
			return Step{Op: OpGrant, Node: name, Phase: Reverting, Why: "revert " + name}
		}
		return Step{Op: OpState, State: WentBack}
	}
	return Step{Why: "paused: waiting for the operator"}
}

func (r *Rollout) report(name string, phase Phase, msg string) Step {
	return Step{Op: OpReport, Node: name, Phase: phase, Message: msg, Why: name + " " + string(phase)}
}

func (r *Rollout) firstRunning() string {
	for _, name := range r.Order {
		if r.Nodes[name].Phase == Running {
			return name
		}
	}
	return ""
}
