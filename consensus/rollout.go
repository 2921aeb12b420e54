package consensus

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"
)

// Version is a committed code version: a source bundle named by its sha256, numbered in commit
// order.
type Version struct {
	N         int       `json:"n"`
	ID        string    `json:"id"`
	Message   string    `json:"message,omitempty"`
	Author    string    `json:"author,omitempty"`
	Committed time.Time `json:"committed"`
	// Bundle is the source itself. The log carries it (bundles are small); the state keeps the
	// newest keepBundles of them so snapshots stay small.
	Bundle []byte `json:"bundle,omitempty"`
}

// keepBundles is how many versions keep their bundle in the state: enough to undo a few steps.
const keepBundles = 5

// Phases of one node in a rollout.
const (
	PhasePending   = "pending"   // nothing yet
	PhaseBuilding  = "building"  // building the new version
	PhaseBuilt     = "built"     // built, waiting for its turn
	PhaseGranted   = "granted"   // its turn: swap every duck
	PhaseSwapping  = "swapping"  // swapping
	PhaseRunning   = "running"   // every duck runs the new version and stayed healthy
	PhaseFailed    = "failed"    // build or swap failed; the rollout halted here
	PhaseSkipped   = "skipped"   // down when its turn came; it catches up by itself
	PhaseReverting = "reverting" // its turn to go back to the previous version
	PhaseReverted  = "reverted"  // back on the previous version
)

// States of a rollout.
const (
	RolloutRolling   = "rolling"   // nodes upgrade one at a time
	RolloutPaused    = "paused"    // canary done or paused by hand; resume or undo
	RolloutDone      = "done"      // every node runs the version (or was skipped)
	RolloutHalted    = "halted"    // a node failed; nothing more happens
	RolloutReverting = "reverting" // upgraded nodes go back, in reverse order
	RolloutReverted  = "reverted"  // every upgraded node is back on the previous version
)

// NodeRollout is one node's part in a rollout.
type NodeRollout struct {
	Phase string    `json:"phase"`
	Since time.Time `json:"since"` // when Phase was entered
	// BuildStarted and Built time the node's build, Granted and Done its turn.
	BuildStarted time.Time `json:"build_started,omitzero"`
	Built        time.Time `json:"built,omitzero"`
	Granted      time.Time `json:"granted,omitzero"`
	Done         time.Time `json:"done,omitzero"`
	Error        string    `json:"error,omitempty"`
}

// Rollout is the rollout of one version across the cluster. The order is fixed when the version
// is committed, so every node, and every later leader, sees the same one.
type Rollout struct {
	Version    int                     `json:"version"`
	Target     string                  `json:"target"`         // bundle ID rolled out
	From       int                     `json:"from,omitempty"` // version the cluster ran before, 0 if none
	FromID     string                  `json:"from_id,omitempty"`
	Order      []string                `json:"order"`
	Nodes      map[string]*NodeRollout `json:"nodes"`
	State      string                  `json:"state"`
	Canary     bool                    `json:"canary,omitempty"`
	AutoRevert bool                    `json:"auto_revert"`
	Reason     string                  `json:"reason,omitempty"`
	Started    time.Time               `json:"started"`
	Ended      time.Time               `json:"ended,omitzero"`
}

// check refuses a rollout that no Apply could have made (a corrupt or hand-made snapshot): every
// node in the order has its entry, and no entry is missing.
func (r *Rollout) check() error {
	if r == nil {
		return nil
	}
	for _, name := range r.Order {
		if r.Nodes[name] == nil {
			return fmt.Errorf("rollout of version %d names %s in its order but has no entry for it", r.Version, name)
		}
	}
	for name, nr := range r.Nodes {
		if nr == nil {
			return fmt.Errorf("rollout of version %d has an empty entry for %s", r.Version, name)
		}
	}
	return nil
}

// Active reports whether the rollout still has work to do.
func (r *Rollout) Active() bool {
	return r != nil && (r.State == RolloutRolling || r.State == RolloutPaused || r.State == RolloutReverting)
}

func (r *Rollout) clone() *Rollout {
	if r == nil {
		return nil
	}
	c := *r
	c.Order = slices.Clone(r.Order)
	c.Nodes = make(map[string]*NodeRollout, len(r.Nodes))
	for k, v := range r.Nodes {
		nv := *v
		c.Nodes[k] = &nv
	}
	return &c
}

// Desired is the version ID node should run as far as this rollout goes. Once it is done, every
// node runs the target, a skipped one (which catches up) or one that joined later included; once
// it went back, every node runs the previous version; while it rolls, a node runs the target
// from its turn on.
func (r *Rollout) Desired(node string) string {
	if r == nil {
		return ""
	}
	from := r.FromID
	if from == "" {
		from = r.Target // the first version: there is nothing else to run
	}
	phase := ""
	if nr, ok := r.Nodes[node]; ok {
		phase = nr.Phase
	}
	switch r.State {
	case RolloutDone:
		return r.Target
	case RolloutReverted:
		return from
	case RolloutHalted:
		if phase == PhaseRunning {
			return r.Target // left as it was: halted without going back
		}
		return from
	}
	switch phase {
	case PhaseRunning, PhaseGranted, PhaseSwapping:
		return r.Target
	case PhaseSkipped:
		if r.State != RolloutReverting {
			return r.Target
		}
	}
	return from
}

// Step is what the leader should commit next to move a rollout on; Command is empty when it
// should wait.
type Step struct {
	Command Command
	Why     string
}

// Timings of the leader's rollout driver.
type Timings struct {
	// AckTimeout is how long a granted node may take to say it started; a node that is down says
	// nothing and is skipped after it.
	AckTimeout time.Duration
	// SwapTimeout bounds a whole swap on one node (build included).
	SwapTimeout time.Duration
}

// Next decides the leader's next move for r at time now. It is a pure function of the rollout so
// that any leader, old or new, makes the same move, and a test can check every branch.
func (r *Rollout) Next(now time.Time, t Timings) Step {
	if r == nil {
		return Step{}
	}
	switch r.State {
	case RolloutRolling:
		for _, name := range r.Order {
			nr := r.Nodes[name]
			switch nr.Phase {
			case PhaseGranted:
				if now.Sub(nr.Since) > t.AckTimeout {
					return r.report(name, PhaseSkipped, fmt.Sprintf("no answer within %s of its turn: down? it catches up when it returns", t.AckTimeout), now)
				}
				return Step{Why: "waiting for " + name + " to start"}
			case PhaseSwapping:
				if now.Sub(nr.Since) > t.SwapTimeout {
					return r.report(name, PhaseFailed, fmt.Sprintf("swap took over %s", t.SwapTimeout), now)
				}
				return Step{Why: "waiting for " + name + " to swap"}
			}
		}
		upgraded := 0
		for _, name := range r.Order {
			nr := r.Nodes[name]
			switch nr.Phase {
			case PhaseRunning:
				upgraded++
			case PhasePending, PhaseBuilding, PhaseBuilt:
				if r.Canary && upgraded > 0 {
					return Step{Command: Command{Op: OpRolloutState, N: r.Version, State: RolloutPaused, Reason: "canary " + r.Order[0] + " runs the version: `rollout resume` to carry on, `rollout undo` to go back", Time: now}}
				}
				// A node's turn comes once it has built, so the turn is the swap alone. One that
				// never even started building is probably down: granted anyway, it is skipped
				// when it does not answer.
				waited := now.Sub(nr.Since)
				if nr.Phase == PhaseBuilt || nr.Phase == PhasePending && waited > t.AckTimeout || waited > t.SwapTimeout {
					return Step{Command: Command{Op: OpGrant, N: r.Version, Name: name, Phase: PhaseGranted, Time: now}, Why: "grant " + name}
				}
				return Step{Why: "waiting for " + name + " to build"}
			}
		}
		return Step{Command: Command{Op: OpRolloutState, N: r.Version, State: RolloutDone, Time: now}}
	case RolloutReverting:
		// A node still in its turn forward finishes it first (or is skipped if it never
		// answered), so that going back never misses a node that was mid-swap.
		for _, name := range r.Order {
			nr := r.Nodes[name]
			switch {
			case nr.Phase == PhaseGranted:
				// Not started yet: it never will, the rollout is going back.
				return r.report(name, PhaseSkipped, "granted, but the rollout went back before it started", now)
			case nr.Phase == PhaseSwapping:
				if now.Sub(nr.Since) > t.SwapTimeout {
					return r.report(name, PhaseFailed, fmt.Sprintf("swap took over %s", t.SwapTimeout), now)
				}
				return Step{Why: "waiting for " + name + " to finish its turn before going back"}
			}
		}
		for _, name := range slices.Backward(r.Order) {
			nr := r.Nodes[name]
			if nr.Phase == PhaseReverting {
				if now.Sub(nr.Since) > t.SwapTimeout {
					return r.report(name, PhaseFailed, fmt.Sprintf("going back took over %s", t.SwapTimeout), now)
				}
				return Step{Why: "waiting for " + name + " to go back"}
			}
		}
		for _, name := range slices.Backward(r.Order) {
			if r.Nodes[name].Phase == PhaseRunning {
				return Step{Command: Command{Op: OpGrant, N: r.Version, Name: name, Phase: PhaseReverting, Time: now}, Why: "revert " + name}
			}
		}
		return Step{Command: Command{Op: OpRolloutState, N: r.Version, State: RolloutReverted, Time: now}}
	}
	return Step{}
}

func (r *Rollout) report(name, phase, msg string, now time.Time) Step {
	return Step{Command: Command{Op: OpReport, N: r.Version, Name: name, Phase: phase, Error: msg, Time: now}, Why: name + " " + phase}
}

// commit records a new version and starts its rollout.
func (s *State) commit(c Command) error {
	if c.Version == nil || len(c.Version.Bundle) == 0 {
		return fmt.Errorf("commit without a bundle")
	}
	if !validID.MatchString(c.Version.ID) {
		// The ID names folders on every node: it must be the sha256 and nothing else.
		return fmt.Errorf("commit of %q: a version ID is the bundle's sha256 in 64 lowercase hex digits", c.Version.ID)
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
		if cur := s.current(); cur != nil && cur.ID == c.Version.ID {
			return fmt.Errorf("%w: this bundle is version %d, which the cluster already runs", ErrSameVersion, cur.N)
		}
	}
	v := *c.Version
	v.N = 1
	if from != nil {
		v.N = from.N + 1
	}
	v.Committed = c.Time
	s.Versions = append(s.Versions, v)
	// Drop old bundles, but never the one the cluster runs: a revert needs it.
	cur := s.current()
	for i := 0; i < len(s.Versions)-keepBundles; i++ {
		if cur == nil || s.Versions[i].N != cur.N {
			s.Versions[i].Bundle = nil
		}
	}
	r := &Rollout{
		Version: v.N, Target: v.ID, Order: slices.Sorted(maps.Keys(s.Members)),
		Nodes: map[string]*NodeRollout{}, State: RolloutRolling, Canary: c.Canary,
		AutoRevert: !c.NoRevert, Started: c.Time,
	}
	if cur != nil {
		r.From, r.FromID = cur.N, cur.ID
	}
	for _, name := range r.Order {
		r.Nodes[name] = &NodeRollout{Phase: PhasePending, Since: c.Time}
	}
	s.Rollout = r
	return nil
}

// current is the version the cluster runs: the last rollout's target once done (or while it
// rolls), its source after a revert or halt.
func (s *State) current() *Version {
	r := s.Rollout
	if r == nil {
		return nil
	}
	n := r.Version
	if (r.State == RolloutReverted || r.State == RolloutHalted) && r.From != 0 {
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

// rolloutFor checks that a command is about the current rollout.
func (s *State) rolloutFor(c Command) (*Rollout, error) {
	r := s.Rollout
	if r == nil || r.Version != c.N {
		return nil, fmt.Errorf("%w: version %d is not the one rolling out", ErrStale, c.N)
	}
	return r, nil
}

// nodeFor finds the current rollout and the commanded node's part in it.
func (s *State) nodeFor(c Command) (*Rollout, *NodeRollout, error) {
	r, err := s.rolloutFor(c)
	if err != nil {
		return nil, nil, err
	}
	nr, ok := r.Nodes[c.Name]
	if !ok {
		return nil, nil, fmt.Errorf("%s is not in version %d's rollout", c.Name, c.N)
	}
	return r, nr, nil
}

func (s *State) grant(c Command) error {
	_, nr, err := s.nodeFor(c)
	if err != nil {
		return err
	}
	if c.Phase != PhaseGranted && c.Phase != PhaseReverting {
		return fmt.Errorf("cannot grant %q", c.Phase)
	}
	nr.Phase, nr.Since, nr.Granted, nr.Error = c.Phase, c.Time, c.Time, ""
	return nil
}

func (s *State) report(c Command) error {
	r, nr, err := s.nodeFor(c)
	if err != nil {
		return err
	}
	switch c.Phase {
	case PhaseBuilding, PhaseBuilt:
		// A build report never undoes a later phase: builds run in parallel with the rollout.
		if nr.Phase != PhasePending && nr.Phase != PhaseBuilding {
			return nil
		}
		if c.Phase == PhaseBuilding {
			nr.BuildStarted = c.Time
		} else {
			nr.Built = c.Time
		}
	case PhaseSwapping:
		if nr.Phase == PhaseSwapping {
			// Said again: a node restarted mid-turn replays the log, sees its grant before its
			// own report and reports once more. The turn goes on.
			return nil
		}
		// A turn starts only while the rollout goes forward: a node granted before a halt or
		// a revert must not swap to a version already known to fail.
		if nr.Phase != PhaseGranted || r.State != RolloutRolling && r.State != RolloutPaused {
			return fmt.Errorf("%w: %s may not start a swap (it is %s, the rollout %s)", ErrStale, c.Name, nr.Phase, r.State)
		}
	case PhaseRunning:
		if nr.Phase != PhaseGranted && nr.Phase != PhaseSwapping {
			return fmt.Errorf("%w: %s reports running but was not in its turn (it is %s)", ErrStale, c.Name, nr.Phase)
		}
	case PhaseReverted:
		if nr.Phase != PhaseReverting {
			return fmt.Errorf("%w: %s reports going back but was not asked to (it is %s)", ErrStale, c.Name, nr.Phase)
		}
	case PhaseFailed, PhaseSkipped:
	default:
		return fmt.Errorf("unknown phase %q", c.Phase)
	}
	nr.Phase, nr.Since, nr.Error = c.Phase, c.Time, c.Error
	if c.Phase == PhaseRunning || c.Phase == PhaseReverted || c.Phase == PhaseFailed || c.Phase == PhaseSkipped {
		nr.Done = c.Time
	}
	if c.Phase == PhaseFailed && (r.State == RolloutRolling || r.State == RolloutPaused) {
		// The first failure stops the rollout where it is; the cluster keeps serving the old
		// version on every node not yet upgraded.
		r.Reason = fmt.Sprintf("%s failed: %s", c.Name, c.Error)
		r.State = RolloutHalted
		if r.AutoRevert && r.FromID != "" {
			r.State = RolloutReverting
		} else {
			r.Ended = c.Time
		}
	}
	return nil
}

func (s *State) setRolloutState(c Command) error {
	r, err := s.rolloutFor(c)
	if err != nil {
		return err
	}
	switch c.State {
	case RolloutPaused:
		if r.State != RolloutRolling {
			return fmt.Errorf("version %d is %s, not rolling: nothing to pause", r.Version, r.State)
		}
	case RolloutRolling:
		if r.State != RolloutPaused {
			return fmt.Errorf("version %d is %s, not paused: nothing to resume", r.Version, r.State)
		}
		r.Canary = false // resume carries on to every node
	case RolloutReverting:
		if !r.Active() && r.State != RolloutDone && r.State != RolloutHalted {
			return fmt.Errorf("version %d is %s: nothing to undo", r.Version, r.State)
		}
		if r.FromID == "" {
			return fmt.Errorf("version %d is the first version: there is nothing to go back to", r.Version)
		}
	case RolloutDone, RolloutReverted, RolloutHalted:
		r.Ended = c.Time
	default:
		return fmt.Errorf("unknown rollout state %q", c.State)
	}
	r.State = c.State
	if c.Reason != "" {
		r.Reason = c.Reason
	}
	return nil
}
