package consensus

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

// Change is what one log entry does. Each kind of change is a type of its own with only the
// fields it needs; the log holds it as JSON with an "op" naming the kind (Encode and Decode),
// the format every node since the first has written, so an old log still applies.
type Change interface{ op() string }

// Register records a member's addresses: a node joining, or one that moved.
type Register struct{ Member Member }

// Unregister takes a member out, and its ducks with it.
type Unregister struct{ Name string }

// Commit records a new version and starts its rollout under Policy.
type Commit struct {
	Version  Version
	Canary   bool
	NoRevert bool
	Policy   rollout.Policy
	// Time is stamped by the leader when it proposes the change, so every node applies the
	// same time: applying must not read the clock. The same holds for every Time below.
	Time time.Time
}

// Grant gives a node its turn in rollout N: to swap forward (rollout.Granted) or back
// (rollout.Reverting).
type Grant struct {
	N     rollout.Number
	Node  string
	Phase rollout.Phase
	Time  time.Time
}

// Report is a node's progress in rollout N, or the leader's finding about one (skipped).
// A report of rollout.Built carries what the build produced and what the binaries say of the
// ducks' state.
type Report struct {
	N      rollout.Number
	Node   string
	Phase  rollout.Phase
	Error  string
	Build  *rollout.BuildInfo
	States *rollout.StateInfo
	Time   time.Time
}

// SetState moves rollout N to State (pause, resume, go back, done), saying why.
type SetState struct {
	N      rollout.Number
	State  rollout.State
	Reason string
	Time   time.Time
}

// WaveState pauses rollout N at the end of the wave under way, or resumes it for one wave
// (rollout.Rollout.SetWaveState). An op of its own, not a flag of SetState: a node of an older
// duckraft does not know it and leaves its state as it was, instead of pausing at once; the
// pause the leader commits at the wave's end is a SetState every node applies alike.
type WaveState struct {
	N     rollout.Number
	State rollout.State
	Time  time.Time
}

// Steps are the leader's moves of one round in rollout N, applied in order, all or none, at
// one time: a wave's grants cost one round trip.
type Steps struct {
	N     rollout.Number
	Steps []Step
	Time  time.Time
}

// Step is a change that may be one of a round's Steps.
type Step interface {
	Change
	step()
}

// Noop changes nothing: it measures a commit's round trip.
type Noop struct{}

// NameCluster names the cluster, once (State.Cluster): the first name applied stays.
type NameCluster struct{ Name string }

// Place records a duck started on a node.
type Place struct{ Placement Placement }

// Unplace drops the record of a stopped duck; Key is NODE/ID (Placement.Key).
type Unplace struct{ Key string }

// The ops the log's JSON names the changes by. They are the format on disk: never rename one.
const (
	opRegister   = "register"
	opUnregister = "unregister"
	opCommit     = "commit"
	opGrant      = "grant"
	opReport     = "report"
	opSetState   = "rollout-state"
	opWaveState  = "rollout-wave-state"
	opCluster    = "name-cluster"
	opSteps      = "steps"
	opNoop       = "noop"
	opPlace      = "place"
	opUnplace    = "unplace"
)

func (Register) op() string    { return opRegister }
func (Unregister) op() string  { return opUnregister }
func (Commit) op() string      { return opCommit }
func (Grant) op() string       { return opGrant }
func (Report) op() string      { return opReport }
func (SetState) op() string    { return opSetState }
func (WaveState) op() string   { return opWaveState }
func (NameCluster) op() string { return opCluster }
func (Steps) op() string       { return opSteps }
func (Noop) op() string        { return opNoop }
func (Place) op() string       { return opPlace }
func (Unplace) op() string     { return opUnplace }

func (Grant) step()    {}
func (Report) step()   {}
func (SetState) step() {}

// command is a change as the log's JSON holds it: one object whose "op" says which of the
// other fields mean something. Only Encode and Decode see it.
type command struct {
	Op        string             `json:"op"`
	Member    *Member            `json:"member,omitempty"`
	Name      string             `json:"name,omitempty"`
	Time      time.Time          `json:"time,omitzero"`
	Placement *Placement         `json:"placement,omitempty"`
	Version   *Version           `json:"version,omitempty"`
	Canary    bool               `json:"canary,omitempty"`
	NoRevert  bool               `json:"no_revert,omitempty"`
	N         rollout.Number     `json:"n,omitempty"`
	Phase     rollout.Phase      `json:"phase,omitempty"`
	State     rollout.State      `json:"state,omitempty"`
	Policy    *rollout.Policy    `json:"policy,omitempty"`
	Build     *rollout.BuildInfo `json:"build,omitempty"`
	States    *rollout.StateInfo `json:"states,omitempty"`
	Error     string             `json:"error,omitempty"`
	Reason    string             `json:"reason,omitempty"`
	Steps     []command          `json:"steps,omitempty"`
}

// Encode is change c as a log entry.
func Encode(c Change) ([]byte, error) {
	w, err := toCommand(c)
	if err != nil {
		return nil, err
	}
	return json.Marshal(w)
}

func toCommand(c Change) (command, error) {
	w := command{Op: c.op()}
	switch c := c.(type) {
	case Register:
		w.Member = &c.Member
	case Unregister:
		w.Name = c.Name
	case Commit:
		w.Version, w.Canary, w.NoRevert, w.Policy, w.Time = &c.Version, c.Canary, c.NoRevert, &c.Policy, c.Time
	case Grant:
		w.N, w.Name, w.Phase, w.Time = c.N, c.Node, c.Phase, c.Time
	case Report:
		w.N, w.Name, w.Phase, w.Error, w.Build, w.States, w.Time = c.N, c.Node, c.Phase, c.Error, c.Build, c.States, c.Time
	case SetState:
		w.N, w.State, w.Reason, w.Time = c.N, c.State, c.Reason, c.Time
	case WaveState:
		w.N, w.State, w.Time = c.N, c.State, c.Time
	case NameCluster:
		w.Name = c.Name
	case Steps:
		w.N, w.Time = c.N, c.Time
		for _, st := range c.Steps {
			sw, err := toCommand(st)
			if err != nil {
				return w, err
			}
			// One stamp for the round, the leader's: a step's own is not written.
			sw.Time = time.Time{}
			w.Steps = append(w.Steps, sw)
		}
	case Noop:
	case Place:
		w.Placement = &c.Placement
	case Unplace:
		w.Name = c.Key
	default:
		return w, fmt.Errorf("%T is not a change the log knows", c)
	}
	return w, nil
}

// Decode reads a log entry back into its change. It checks only the shape (an op this node
// knows, the steps of a round being steps); whether the change applies to the state is the
// state's to say.
func Decode(b []byte) (Change, error) {
	var w command
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, err
	}
	return w.change()
}

func (w command) change() (Change, error) {
	switch w.Op {
	case opRegister:
		var m Member
		if w.Member != nil {
			m = *w.Member
		}
		return Register{Member: m}, nil
	case opUnregister:
		return Unregister{Name: w.Name}, nil
	case opCommit:
		c := Commit{Canary: w.Canary, NoRevert: w.NoRevert, Time: w.Time}
		if w.Version != nil {
			c.Version = *w.Version
		}
		if w.Policy != nil {
			c.Policy = *w.Policy
		}
		return c, nil
	case opGrant:
		return Grant{N: w.N, Node: w.Name, Phase: w.Phase, Time: w.Time}, nil
	case opReport:
		return Report{N: w.N, Node: w.Name, Phase: w.Phase, Error: w.Error, Build: w.Build, States: w.States, Time: w.Time}, nil
	case opSetState:
		return SetState{N: w.N, State: w.State, Reason: w.Reason, Time: w.Time}, nil
	case opWaveState:
		return WaveState{N: w.N, State: w.State, Time: w.Time}, nil
	case opCluster:
		return NameCluster{Name: w.Name}, nil
	case opSteps:
		s := Steps{N: w.N, Time: w.Time}
		for i, sw := range w.Steps {
			c, err := sw.change()
			if err != nil {
				return nil, fmt.Errorf("step %d of %d: %w", i+1, len(w.Steps), err)
			}
			st, ok := c.(Step)
			if !ok {
				return nil, fmt.Errorf("step %d of %d: %q is not a rollout step", i+1, len(w.Steps), sw.Op)
			}
			s.Steps = append(s.Steps, st)
		}
		return s, nil
	case opNoop:
		return Noop{}, nil
	case opPlace:
		var p Placement
		if w.Placement != nil {
			p = *w.Placement
		}
		return Place{Placement: p}, nil
	case opUnplace:
		return Unplace{Key: w.Name}, nil
	}
	// A newer node may write changes this one does not know; refusing them loudly beats
	// silently diverging.
	return nil, fmt.Errorf("unknown operation %q: this node is older than the one that wrote it; upgrade it", w.Op)
}
