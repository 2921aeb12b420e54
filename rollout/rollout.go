// Package rollout is the rolling upgrade as a state machine: the phases a node goes through, the
// states of a rollout, the policy committed with each version, and the two decisions that move
// it: the leader's next step (Next) and a node's next duty (Follow). Everything here is a pure
// function of the rollout and the inputs passed in, so that any leader, old or new, makes the
// same move, every node reads the same picture, and a simulation (sim_test.go) can drive the
// whole protocol under a seeded clock and network.
//
// The consensus package stores a Rollout in the Raft log and applies the changes this package
// defines (Grant, Report, SetState); the agent acts on Next and Follow; the CLI shows it. Nothing
// here starts a build, a swap or a process.
package rollout

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/duckraft/duckraft/runtime/bundle"
)

// Phase is where one node is in a rollout.
type Phase string

// The phases of one node.
const (
	Pending   Phase = "pending"   // nothing yet
	Building  Phase = "building"  // building the new version
	Built     Phase = "built"     // built, waiting for its turn
	Granted   Phase = "granted"   // its turn: swap every duck
	Swapping  Phase = "swapping"  // swapping, then staying healthy for Policy.Healthy
	Running   Phase = "running"   // every duck runs the new version and stayed healthy
	Failed    Phase = "failed"    // build or swap failed, or a deadline passed
	Skipped   Phase = "skipped"   // down or silent in its turn; it catches up by itself
	Reverting Phase = "reverting" // its turn to go back to the previous version
	Reverted  Phase = "reverted"  // back on the previous version
)

// Ended reports whether a node is done with its part (forward or back).
func (p Phase) Ended() bool {
	return p == Running || p == Failed || p == Skipped || p == Reverted
}

// State is where a whole rollout is.
type State string

// The states of a rollout. Rolling and Reverting have work left; Paused waits for the operator;
// Done, Halted and WentBack are the ends.
const (
	Rolling   State = "rolling"   // nodes upgrade one at a time
	Paused    State = "paused"    // canary done or paused by hand: resume or undo
	Done      State = "done"      // every node runs the version (or was skipped)
	Halted    State = "halted"    // a node failed and auto-revert was off: nothing more happens
	GoingBack State = "reverting" // upgraded nodes go back, in reverse order
	WentBack  State = "reverted"  // every upgraded node is back on the previous version
)

// ErrStale means a change was about a turn or phase the rollout has moved past; the node that
// sent it should look at the log again rather than retry.
var ErrStale = errors.New("stale rollout command")

// Node is one node's part in a rollout.
type Node struct {
	Phase Phase     `json:"phase"`
	Since time.Time `json:"since"` // when Phase was entered
	// BuildStarted and Built time the node's build, Granted and Done its turn.
	BuildStarted time.Time `json:"build_started,omitzero"`
	Built        time.Time `json:"built,omitzero"`
	Granted      time.Time `json:"granted,omitzero"`
	Done         time.Time `json:"done,omitzero"`
	Error        string    `json:"error,omitempty"`
	// Wave is the node's wave: waves go one after the other, in order.
	Wave int `json:"wave,omitempty"`
	// Binary is what the node's build made, once built.
	Binary *BuildInfo `json:"binary,omitempty"`
	// State is what the node's build of the target, and the binary it ran before, say of the
	// ducks' state: whether the state can go back (nil when the ducks could not say).
	State *StateInfo `json:"state,omitempty"`
}

// NoWayBack says why the state of version (the target) does not reach version from's layout,
// as WayBack judges it.
func (s StateInfo) NoWayBack(version, from Number) string {
	if s.Schema < s.FromSchema {
		return fmt.Sprintf("version %d keeps its ducks' state in schema %d, and version %d (schema %d) has no Config.Migrate to read it back", version, s.Schema, from, s.FromSchema)
	}
	return fmt.Sprintf("version %d keeps its ducks' state in schema %d and cannot hand it back to version %d's schema %d (no Config.Downgrade to it)", version, s.Schema, from, s.FromSchema)
}

// RanCanaries is the canaries (the first wave of a rollout with Canary) whose turn ended
// running: the nodes the leader asks about before a promotion, automatic or by hand.
func (r *Rollout) RanCanaries() []string {
	var out []string
	for _, name := range r.Order {
		if nr := r.Nodes[name]; nr.Wave == 0 && nr.Phase == Running {
			out = append(out, name)
		}
	}
	return out
}

// CouldNotGoBack reports whether the node's turn back failed: the node reports such a turn as
// Reverted with the reason (see the agent's follower), and its ducks stay on the target.
func (n *Node) CouldNotGoBack() bool { return n != nil && n.Phase == Reverted && n.Error != "" }

// OnTarget is the nodes that run the target as far as the rollout knows: those whose turn ended
// Running, and those a failed turn back left on it.
func (r *Rollout) OnTarget() []string {
	var out []string
	for _, name := range r.Order {
		if nr := r.Nodes[name]; nr.Phase == Running || nr.CouldNotGoBack() {
			out = append(out, name)
		}
	}
	return out
}

// Mixed reports whether the rollout ended halted with some nodes on the target and some on the
// previous version: the cluster runs two versions, neither of which it can be said to run.
func (r *Rollout) Mixed() bool {
	return r != nil && r.State == Halted && r.FromID != "" && len(r.OnTarget()) > 0 && r.anyOnFrom()
}

// HaltedOnTarget reports whether the rollout halted with every node that took part on the
// target: its going back failed at the first node, say. The cluster runs the target then, and
// the next version goes back to it, not to the version before (which sent every node into a
// catch-up to a version whose state they could not take, again and again).
func (r *Rollout) HaltedOnTarget() bool {
	return r != nil && r.State == Halted && len(r.OnTarget()) > 0 && !r.anyOnFrom()
}

// anyOnFrom reports whether some node runs the previous version: it never swapped, its swap
// failed, or it went back. A skipped node is not known to run either.
func (r *Rollout) anyOnFrom() bool {
	for _, name := range r.Order {
		switch nr := r.Nodes[name]; nr.Phase {
		case Pending, Building, Built, Failed:
			return true
		case Reverted:
			if !nr.CouldNotGoBack() {
				return true
			}
		}
	}
	return false
}

// StateInfo is what a node learned of the state's layout from the binaries it holds.
type StateInfo struct {
	Schema     int   `json:"schema"`               // the target's
	Downgrades []int `json:"downgrades,omitempty"` // older schemas the target renders its state in
	FromSchema int   `json:"from_schema"`          // the version the node ran before
	// FromMigrates: the version the node ran before has a Config.Migrate, so it reads the
	// state of an older schema back (a version whose Migrate read schema 1 on the way up
	// reads it again when a schema 1 version hands its state back).
	FromMigrates bool `json:"from_migrates,omitempty"`
}

// WayBack reports whether state handed over by the target reaches the previous version: the
// same schema; a newer one that the target's Downgrade renders in the previous schema; or an
// older one that the previous version's Migrate reads. A binary says only that it has a Migrate,
// not which schemas it reads: one that reads only the schema just before its own passes here
// and fails the revert at its first node, which halts there (the state stays with the version
// that holds it). A Migrate that reads a newer schema may exist too, but a binary cannot say so
// of itself; that case needs --no-revert.
func (s StateInfo) WayBack() bool {
	switch {
	case s.Schema > s.FromSchema:
		return slices.Contains(s.Downgrades, s.FromSchema)
	case s.Schema < s.FromSchema:
		return s.FromMigrates
	}
	return true
}

// BuildInfo is what a node's build of the target made: every node builds from source with its
// own toolchain, and the builds are reproducible, so one sum across the cluster shows that every
// node runs the same program.
type BuildInfo struct {
	Sum       string `json:"sum"`       // sha256 of the binary, hex
	Toolchain string `json:"toolchain"` // the go command's GOVERSION
}

// Binaries groups the nodes that reported a build by the binary they made, largest group first.
func (r *Rollout) Binaries() []BinaryGroup {
	var out []BinaryGroup
	for _, name := range r.Order {
		b := r.Nodes[name].Binary
		if b == nil {
			continue
		}
		i := slices.IndexFunc(out, func(g BinaryGroup) bool { return g.BuildInfo == *b })
		if i < 0 {
			out = append(out, BinaryGroup{BuildInfo: *b})
			i = len(out) - 1
		}
		out[i].Nodes = append(out[i].Nodes, name)
	}
	slices.SortStableFunc(out, func(a, b BinaryGroup) int { return len(b.Nodes) - len(a.Nodes) })
	return out
}

// BinaryGroup is the nodes that built one binary with one toolchain.
type BinaryGroup struct {
	BuildInfo
	Nodes []string `json:"nodes"`
}

// Number is a version's place in the log: 1 for the first version committed, then 2, 3 and on;
// a rollout is named by the number of the version it rolls out. 0 means none.
type Number int

// Label is how users see a committed version: v3.
func (n Number) Label() string { return "v" + strconv.Itoa(int(n)) }

// Rollout is the rollout of one version across the cluster. The order is fixed when the version
// is committed, so every node, and every later leader, sees the same one.
type Rollout struct {
	Version    Number           `json:"version"`
	Target     bundle.ID        `json:"target"`         // bundle ID rolled out
	From       Number           `json:"from,omitempty"` // version the cluster ran before, 0 if none
	FromID     bundle.ID        `json:"from_id,omitempty"`
	Order      []string         `json:"order"`
	Nodes      map[string]*Node `json:"nodes"`
	State      State            `json:"state"`
	Canary     bool             `json:"canary,omitempty"`
	AutoRevert bool             `json:"auto_revert"`
	// Policy is the rules every leader applies to this rollout; a rollout from before policies
	// were recorded has the zero Policy, which means the defaults.
	Policy  Policy    `json:"policy,omitzero"`
	Reason  string    `json:"reason,omitempty"`
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	// PausedAt is when the rollout last paused (auto-promotion counts from it).
	PausedAt time.Time `json:"paused_at,omitzero"`
	// PauseAfter is 1 + the wave at whose end the rollout pauses by itself (`rollout pause
	// --after-wave`, `rollout resume --one-wave`); 0: none.
	PauseAfter int `json:"pause_after,omitempty"`
}

// Member is what a rollout's plan needs of a node.
type Member struct {
	Name   string
	Labels map[string]string
}

// Plan is the order of nodes and the wave of each: canaries first (a wave of their own), then
// one wave per value of the WaveBy label in natural order (nodes without it last), or one wave
// of all; inside a wave, names in natural order (n2 before n10). Every node computes the same
// plan from the same members.
func Plan(members []Member, p Policy) (order []string, wave map[string]int) {
	byName := map[string]Member{}
	var names []string
	for _, m := range members {
		byName[m.Name] = m
		names = append(names, m.Name)
	}
	names = Order(names)
	wave = map[string]int{}
	first := 0
	if p.Canaries > 0 {
		for _, name := range names[:min(p.Canaries, len(names))] {
			wave[name] = 0
			order = append(order, name)
		}
		names = names[min(p.Canaries, len(names)):]
		first = 1
	}
	values := []string{}
	if p.WaveBy != "" {
		seen := map[string]bool{}
		var unlabelled bool
		for _, name := range names {
			v, ok := byName[name].Labels[p.WaveBy]
			if !ok {
				unlabelled = true
				continue
			}
			if !seen[v] {
				seen[v] = true
				values = append(values, v)
			}
		}
		values = Order(values)
		if unlabelled {
			values = append(values, "\x00none") // last
		}
	} else {
		values = []string{""}
	}
	for i, v := range values {
		for _, name := range names {
			lv, ok := byName[name].Labels[p.WaveBy]
			if p.WaveBy != "" && (ok && lv != v || !ok && v != "\x00none") {
				continue
			}
			wave[name] = first + i
			order = append(order, name)
		}
	}
	return order, wave
}

// WithCanary is p as a rollout records it when committed with the older canary flag: one canary
// unless p names how many.
func (p Policy) WithCanary(canary bool) Policy {
	if canary && p.Canaries == 0 {
		p.Canaries = 1
	}
	return p
}

// New starts the rollout of version n (bundle target) from version from (bundle fromID; 0 and ""
// for the first version) over members, in the order and waves Plan gives them. canary is the
// older way of asking for one canary.
func New(n Number, target bundle.ID, from Number, fromID bundle.ID, members []Member, canary, autoRevert bool, p Policy, now time.Time) *Rollout {
	p = p.WithCanary(canary)
	order, wave := Plan(members, p)
	r := &Rollout{
		Version: n, Target: target, From: from, FromID: fromID, Order: order,
		Nodes: make(map[string]*Node, len(order)), State: Rolling, Canary: p.Canaries > 0,
		AutoRevert: autoRevert, Policy: p, Started: now,
	}
	for _, name := range order {
		r.Nodes[name] = &Node{Phase: Pending, Since: now, Wave: wave[name]}
	}
	return r
}

// Members is a list of plain names, for a plan without labels.
func Members(names ...string) []Member {
	out := make([]Member, len(names))
	for i, n := range names {
		out[i] = Member{Name: n}
	}
	return out
}

// Check refuses a rollout that no sequence of changes could have made (a corrupt or hand-made
// snapshot): every node in the order has its entry, and no entry is empty.
func (r *Rollout) Check() error {
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
	return r.Policy.Validate()
}

// Active reports whether the rollout still has work to do or waits for the operator.
func (r *Rollout) Active() bool {
	return r != nil && (r.State == Rolling || r.State == Paused || r.State == GoingBack)
}

// forward reports whether the rollout goes forward (or waits to).
func (r *Rollout) forward() bool { return r.State == Rolling || r.State == Paused }

// Clone is a deep copy a reader may keep.
func (r *Rollout) Clone() *Rollout {
	if r == nil {
		return nil
	}
	c := *r
	c.Order = slices.Clone(r.Order)
	c.Nodes = make(map[string]*Node, len(r.Nodes))
	for k, v := range r.Nodes {
		nv := *v
		c.Nodes[k] = &nv
	}
	return &c
}

// Desired is the version ID node should run as far as this rollout goes. Once it is done, every
// node runs the target, a skipped one (which catches up) or one that joined later included; once
// it went back, every node runs the previous version; while it rolls, a node runs the target
// from its turn on, and a node that was skipped keeps what it had.
func (r *Rollout) Desired(node string) bundle.ID {
	if r == nil {
		return ""
	}
	from := r.FromID
	if from == "" {
		from = r.Target // the first version: there is nothing else to run
	}
	var phase Phase
	if nr, ok := r.Nodes[node]; ok {
		phase = nr.Phase
	}
	switch r.State {
	case Done:
		if phase == Failed {
			return from // within the failure budget: it stays on what it could run
		}
		return r.Target
	case WentBack:
		return from
	case Halted:
		if phase == Running || r.Nodes[node].CouldNotGoBack() || r.HaltedOnTarget() {
			// Left as it was: halted without going back, or unable to; and a node that was
			// away joins the others where every one of them stayed.
			return r.Target
		}
		return from
	}
	// A skipped node waits for the end: it catches up then, so that no node swaps out of turn
	// while the rollout may still find the version bad.
	switch phase {
	case Running, Granted, Swapping:
		return r.Target
	}
	return from
}
