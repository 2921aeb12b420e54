package rollout

import (
	"fmt"
	"slices"
	"strings"
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

// NotAMember is the silence of a node the leader's Raft configuration no longer has: it left,
// or was forgotten, and will not catch up.
const NotAMember = time.Duration(1<<63 - 1)

// LeftMessage begins the error of a node skipped because it is no longer a member.
const LeftMessage = "no longer a member of the cluster"

// end is the step that ends a rollout whose every turn has ended: done when a node runs the
// version, else halted saying why.
func (r *Rollout) end() Step {
	for _, name := range r.Order {
		if r.Nodes[name].Phase == Running {
			return Step{Op: OpState, State: Done}
		}
	}
	// Every node was skipped or failed: nothing has shown the version works, so
	// nobody should catch up with it.
	failed, skipped := 0, 0
	for _, name := range r.Order {
		switch r.Nodes[name].Phase {
		case Failed:
			failed++
		case Skipped:
			skipped++
		}
	}
	msg := fmt.Sprintf("no node ran the version: %d failed and %d were skipped (down); deploy it again once the nodes are back", failed, skipped)
	switch {
	case skipped == 0:
		msg = fmt.Sprintf("no node ran the version: all %d failed (`rollout status` has each one's error); the cluster keeps the version it ran", failed)
	case failed == 0:
		msg = "no node ran the version (every node was skipped: down or silent); deploy it again once the nodes are back"
	}
	return Step{Op: OpState, State: Halted, Message: msg}
}

// Next decides the leader's next move at time now. It is a pure function of the rollout and the
// leader's view of its members, so that any leader, old or new, makes the same move.
//
// Every phase has a way out: a node the leader has lost for Policy.DownAfter is skipped in
// whatever phase it is (it catches up when the rollout ends); a node that stays silent or stuck
// while in contact meets the deadline of its phase (StartDeadline, BuildDeadline,
// ProgressDeadline). So a rollout always ends, done, halted or gone back, unless it is paused
// for the operator.
//
// Waves go one after the other; inside a wave up to Policy.MaxParallel nodes take their turn at
// once, in order. Going back takes the waves in reverse, the same number at once.
func (r *Rollout) Next(now time.Time, silent Silence) Step {
	if !r.Active() {
		return Step{}
	}
	p := r.Policy.WithDefaults()
	down := func(name string) bool { return silent != nil && silent(name) > p.DownAfter }
	lost := func(name string, what string) Step {
		if silent(name) == NotAMember {
			// Not "it catches up": it will not come back (found by an outside probe).
			return r.report(name, Skipped, fmt.Sprintf("%s (it left, or was forgotten) %s", LeftMessage, what))
		}
		return r.report(name, Skipped, fmt.Sprintf("lost contact for over %s %s: it catches up when the rollout ends", p.DownAfter, what))
	}
	par := p.parallel(len(r.Order))

	// The nodes in a turn first, whichever way the rollout goes, so that going back never
	// misses a node that was mid-swap.
	forwardTurns, backTurns := 0, 0
	for _, name := range r.Order {
		nr := r.Nodes[name]
		in := now.Sub(nr.Since)
		switch nr.Phase {
		case Granted:
			switch {
			case r.State == GoingBack:
				// It may have begun its swap (the start is said beside it): the log will refuse
				// its end, and it goes back by itself.
				return r.report(name, Skipped, "granted, but the rollout went back before it reported its turn")
			case down(name):
				return lost(name, "in its turn")
			case in > p.StartDeadline:
				return r.report(name, Skipped, fmt.Sprintf("no answer within %s of its turn: it catches up when the rollout ends", p.StartDeadline))
			}
			forwardTurns++
		case Swapping:
			switch {
			case down(name):
				return lost(name, "while swapping")
			case in > p.ProgressDeadline:
				return r.report(name, Failed, fmt.Sprintf("swap and healthy wait took over the progress deadline (%s)", p.ProgressDeadline))
			}
			forwardTurns++
		case Reverting:
			switch {
			case down(name):
				return lost(name, "while going back")
			case in > p.ProgressDeadline:
				return r.report(name, Failed, fmt.Sprintf("going back took over the progress deadline (%s)", p.ProgressDeadline))
			}
			backTurns++
		}
	}

	// Before anyone swaps: with auto-revert, a version whose state cannot go back to the
	// previous one's is refused, as a revert would fail on every node it reached.
	if r.State == Rolling && r.AutoRevert && r.FromID != "" && !r.anyTurnTaken() {
		for _, name := range r.Order {
			if st := r.Nodes[name].State; st != nil && !st.WayBack() {
				if st.Schema < st.FromSchema {
					return Step{Op: OpState, State: Halted, Message: st.NoWayBack(r.Version, r.From) +
						" if this rollout went back: nothing was swapped; deploy with --no-revert (or undo with --no-revert) if you accept no way back"}
				}
				return Step{Op: OpState, State: Halted, Message: st.NoWayBack(r.Version, r.From) +
					": nothing was swapped; give it a Downgrade, or deploy with --no-revert if the older version's Migrate reads the newer state or you accept no way back"}
			}
		}
	}
	if p.SameBinary && r.forward() {
		if groups := r.Binaries(); len(groups) > 1 {
			// The first node whose binary differs from the most common one fails, saying which
			// nodes built what with which toolchain.
			var parts []string
			for _, g := range groups {
				parts = append(parts, fmt.Sprintf("%s built %.12s with %s", strings.Join(g.Nodes, ", "), g.Sum, g.Toolchain))
			}
			odd := groups[1].Nodes[0]
			if !r.Nodes[odd].Phase.Ended() {
				return r.report(odd, Failed, "its binary differs from the other nodes' (toolchain drift?): "+strings.Join(parts, "; "))
			}
			// A failure budget lets the rollout carry on past that node, and the other nodes of
			// a drifted build with it: drift is not a failure to budget for, the policy halts.
			state := Halted
			if r.AutoRevert && r.FromID != "" {
				state = GoingBack
			}
			return Step{Op: OpState, State: state, Message: fmt.Sprintf("%d distinct binaries with --same-binary (toolchain drift?): %s", len(groups), strings.Join(parts, "; "))}
		}
	}

	switch r.State {
	case Paused:
		if r.AutoPromoting() && forwardTurns == 0 && now.Sub(r.PausedAt) >= p.AutoPromoteAfter && r.canariesHealthy() {
			return Step{Op: OpState, State: Rolling, Message: fmt.Sprintf("the canaries stayed healthy for %s: promoted", p.AutoPromoteAfter)}
		}
		if forwardTurns == 0 && r.waveUnderWay() < 0 {
			// Paused by hand during the last turns, which have all ended: nothing is left to
			// hold, and a rollout that waits for the operator with every node done refused the
			// next deploy until someone resumed it (found by an outside probe).
			return r.end()
		}
		return Step{Why: "paused: waiting for the operator"}
	case Rolling:
		wave := r.waveUnderWay()
		if wave < 0 {
			return r.end()
		}
		if r.Canary && wave > 0 && !r.anyRunning(0) {
			return Step{Op: OpState, State: Halted, Message: "no canary ran the version (each was skipped or failed): deploy it again once they are back"}
		}
		// After the check that a canary ran: a pause asked for at the canary wave's end must not
		// let a resume carry a version no canary ran to every node.
		if r.PauseAfter > 0 && wave >= r.PauseAfter {
			return Step{Op: OpState, State: Paused, Message: fmt.Sprintf("wave %d ended: paused as asked; resume to carry on (--one-wave: wave %d only), undo to go back", r.PauseAfter, wave+1)}
		}
		if r.Canary && wave > 0 {
			msg := "the canaries run the version: resume to carry on, undo to go back"
			if p.AutoPromoteAfter > 0 {
				msg = fmt.Sprintf("the canaries run the version: promoted by itself once they stay healthy for %s; resume to carry on now, undo to go back", p.AutoPromoteAfter)
			}
			return Step{Op: OpState, State: Paused, Message: msg}
		}
		for _, name := range r.Order {
			nr := r.Nodes[name]
			if nr.Wave != wave || nr.Phase != Pending && nr.Phase != Building && nr.Phase != Built {
				continue
			}
			switch {
			case down(name):
				return lost(name, "before its turn")
			case forwardTurns >= par:
				// The wave's slots are taken; the rest wait their turn (a later node may still
				// be skipped above, once it is down).
				continue
			case nr.Phase == Built:
				return Step{Op: OpGrant, Node: name, Phase: Granted, Why: "grant " + name}
			case now.Sub(r.Started) > p.BuildDeadline:
				return r.report(name, Failed, fmt.Sprintf("not built within the build deadline (%s) of the commit", p.BuildDeadline))
			case nr.Phase == Pending && now.Sub(nr.Since) > p.StartDeadline:
				// In contact but never said it builds: granted anyway, it builds in its
				// turn, or is skipped when it does not answer.
				return Step{Op: OpGrant, Node: name, Phase: Granted, Why: "grant " + name + ", silent since the commit"}
			}
			// Turns go in order: nobody overtakes a node still building.
			return Step{Why: "waiting for " + name + " to build"}
		}
		return Step{Why: "waiting for the turns under way"}
	case GoingBack:
		if forwardTurns > 0 {
			return Step{Why: "waiting for the turns under way to end before going back"}
		}
		// A node that could not go back stops the going back where it is, as a failure stops
		// a rollout going forward: the others would fail the same way, and the cluster must
		// not be told it runs the previous version while some nodes still run this one.
		var stuck []string
		for _, name := range r.Order {
			if r.Nodes[name].CouldNotGoBack() {
				stuck = append(stuck, name)
			}
		}
		if len(stuck) > 0 {
			if backTurns > 0 {
				return Step{Why: "waiting for the turns back under way to end before halting"}
			}
			why := r.Nodes[stuck[0]].Error
			msg := fmt.Sprintf("going back failed on %s (%s); version %d still runs on %s: deploy a version that can take over their ducks' state, or fix version %d and deploy it again",
				strings.Join(stuck, ", "), why, r.Version, strings.Join(r.OnTarget(), ", "), r.Version)
			switch {
			case strings.Contains(r.Reason, "going back failed on"):
				msg = r.Reason // an undo tried again: the reason says it already
			case r.Reason != "":
				msg = r.Reason + "; then " + msg
			}
			return Step{Op: OpState, State: Halted, Message: msg}
		}
		// The highest wave that still runs the target, or is on its way back, goes back first.
		wave := -1
		for _, name := range r.Order {
			if ph := r.Nodes[name].Phase; ph == Running || ph == Reverting {
				wave = max(wave, r.Nodes[name].Wave)
			}
		}
		if wave < 0 {
			return Step{Op: OpState, State: WentBack}
		}
		for _, name := range slices.Backward(r.Order) {
			nr := r.Nodes[name]
			if nr.Wave != wave || nr.Phase != Running {
				continue
			}
			if down(name) {
				return lost(name, "before going back")
			}
			if backTurns < par {
				return Step{Op: OpGrant, Node: name, Phase: Reverting, Why: "revert " + name}
			}
		}
		return Step{Why: "waiting for nodes to go back"}
	}
	return Step{}
}

// AutoPromoting reports whether the rollout waits for its canaries' automatic promotion
// (--auto-promote-after): paused at the end of the canary wave, not by hand. A pause asked for
// at a wave's end is the operator's; so is one made while a canary was in its turn, which came
// before that canary's turn ended (the promotion overrode it, and deploy waited for ever).
func (r *Rollout) AutoPromoting() bool {
	if r == nil || r.State != Paused || !r.Canary || r.Policy.AutoPromoteAfter <= 0 || r.PauseAfter != 0 {
		return false
	}
	for _, name := range r.Order {
		if nr := r.Nodes[name]; nr.Wave == 0 && (!nr.Phase.Ended() || nr.Done.After(r.PausedAt)) {
			return false
		}
	}
	return true
}

// anyRunning reports whether a node of the wave runs the version.
func (r *Rollout) anyRunning(wave int) bool {
	for _, name := range r.Order {
		if nr := r.Nodes[name]; nr.Wave == wave && nr.Phase == Running {
			return true
		}
	}
	return false
}

// canariesHealthy reports whether every canary that took its turn still runs the version.
func (r *Rollout) canariesHealthy() bool {
	ran := false
	for _, name := range r.Order {
		nr := r.Nodes[name]
		if nr.Wave != 0 {
			continue
		}
		switch nr.Phase {
		case Running:
			ran = true
		case Skipped:
		default:
			return false
		}
	}
	return ran
}

func (r *Rollout) report(name string, phase Phase, msg string) Step {
	return Step{Op: OpReport, Node: name, Phase: phase, Message: msg, Why: name + " " + string(phase)}
}

// anyTurnTaken reports whether any node was granted its turn in this rollout.
func (r *Rollout) anyTurnTaken() bool {
	for _, nr := range r.Nodes {
		if !nr.Granted.IsZero() {
			return true
		}
	}
	return false
}

// Apply makes step st at time now: the change the log applies when the leader commits it.
func (r *Rollout) Apply(st Step, now time.Time) error {
	switch st.Op {
	case OpGrant:
		return r.Grant(st.Node, st.Phase, now)
	case OpReport:
		return r.Report(st.Node, st.Phase, st.Message, now)
	case OpState:
		return r.SetState(st.State, st.Message, now)
	}
	return fmt.Errorf("a step that waits (%s) changes nothing", st.Why)
}

// Steps is every move the leader can make at time now, at most limit of them: Next, made on a
// copy, then Next again on the result, until it says wait. They are the moves one round after
// another would make with the clock stopped, so committing them in one log entry changes
// nothing but the time they take: a wave of twenty grants is one round trip through the log,
// not twenty (at a hundred members a round trip is tens of milliseconds).
func (r *Rollout) Steps(now time.Time, silent Silence, limit int) []Step {
	if !r.Active() {
		return nil
	}
	c := r.Clone()
	var steps []Step
	for len(steps) < limit {
		st := c.Next(now, silent)
		if st.Op == "" || c.Apply(st, now) != nil {
			break
		}
		steps = append(steps, st)
	}
	return steps
}

// SameWave keeps steps, computed after reports were applied to r, up to the first grant into a
// wave none of the reports' nodes is in: the leader commits a report that ends a turn with the
// grants it frees in its wave (agent/driver), and a grant that starts a wave waits for a round
// computed from the log with the wave's end applied. The operator's pause at the end of a wave
// (`pause --after-wave`), committed while the entry was on its way, saw the wave still under way
// and let it end, and the entry had granted the next wave already (found by a review).
func (r *Rollout) SameWave(reports, steps []Step) []Step {
	waves := map[int]bool{}
	for _, rep := range reports {
		if nr := r.Nodes[rep.Node]; nr != nil {
			waves[nr.Wave] = true
		}
	}
	for i, st := range steps {
		if nr := r.Nodes[st.Node]; st.Op == OpGrant && nr != nil && !waves[nr.Wave] {
			return steps[:i]
		}
	}
	return steps
}
