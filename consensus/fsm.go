package consensus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/rollout"
)

// Member is one node of the cluster as the registry records it: the addresses others use to
// reach it. Raft's own configuration says who votes; the registry says how to talk to them.
type Member struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	// Labels are what the node was started with (start --label zone=eu-1): rollouts can go in
	// waves by one of them.
	Labels map[string]string `json:"labels,omitempty"`
}

// State is everything the cluster agrees on. It is a plain value so that a snapshot is its JSON
// and a reader gets a copy it may keep.
type State struct {
	Members  map[string]Member  `json:"members"`
	Versions []Version          `json:"versions,omitempty"`
	Rollout  *rollout.Rollout   `json:"rollout,omitempty"` // the latest rollout
	Past     []*rollout.Rollout `json:"past,omitempty"`    // earlier rollouts, newest last
	// Ducks says which duck runs on which node, keyed NODE/ID. Each node mirrors its own ducks
	// here, so every node can list the cluster's ducks, those of a node that is down included.
	Ducks map[string]Placement `json:"ducks,omitempty"`
	// Index is the log index of the last entry applied (a refused one included), so that a
	// node can tell whether it has caught up with what the leader has committed.
	Index uint64 `json:"index,omitempty"`
	// Cluster names the cluster this log is of, set once by its first leader that knows to
	// (NameCluster): a member that left starts a cluster of its own with another name, so a
	// node can tell its own cluster's members from former ones.
	Cluster string `json:"cluster,omitempty"`
}

// Placement is one duck on one node.
type Placement struct {
	Node string   `json:"node"`
	ID   string   `json:"id"`
	Addr string   `json:"addr"`
	Env  []string `json:"env,omitempty"`
}

// Key is how State.Ducks names a placement.
func (p Placement) Key() string { return p.Node + "/" + p.ID }

// keepPast bounds the rollout history the state keeps.
const keepPast = 50

// ErrSameVersion means a bundle was committed while the cluster already runs it.
var ErrSameVersion = errors.New("same version")

// ErrStale means a command was about a rollout, turn or phase that is no longer the current one.
var ErrStale = rollout.ErrStale

// fsm applies committed commands to State. Apply is deterministic: every node applying the same
// log reaches the same State. It records and never acts: starting builds or ducks is the job of
// whoever watches it.
type fsm struct {
	mu      sync.RWMutex
	state   State
	changed chan struct{} // closed and replaced at every apply
}

// newFSM returns an FSM holding an empty State.
func newFSM() *fsm {
	return &fsm{state: State{Members: map[string]Member{}}, changed: make(chan struct{})}
}

// Changed returns a channel closed at the next change of the state, so that whoever acts on it
// (the rollout loops) wakes at once instead of on its next poll.
func (f *fsm) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// notify wakes the watchers of Changed; the caller holds f.mu.
func (f *fsm) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Apply applies one committed entry. A command that cannot apply returns an error value (Raft
// hands it to the caller of Apply on the leader) and leaves State as it was.
func (f *fsm) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.notify()
	return f.apply(l)
}

// ApplyBatch applies the entries Raft committed together (raft.BatchingFSM) and wakes the
// watchers of Changed once for all of them. At a hundred members the reports of a wave commit
// together, and every entry woke every node's rollout loops, each copying the rollout to find
// nothing to do yet. Configuration entries come here too; they are Raft's, and leave the state
// (and Index) as they are.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]any, len(logs))
	applied := false
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		out[i] = f.apply(l)
		applied = true
	}
	if applied {
		f.notify()
	}
	return out
}

// apply applies one command entry; the caller holds f.mu.
func (f *fsm) apply(l *raft.Log) any {
	f.state.Index = max(f.state.Index, l.Index)
	c, err := Decode(l.Data)
	if err != nil {
		return fmt.Errorf("log entry %d: %w", l.Index, err)
	}
	return f.state.apply(c)
}

// Cluster is the cluster's name, "" before its leader named it.
func (f *fsm) Cluster() string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Cluster
}

// Index is the log index of the last entry this FSM applied.
func (f *fsm) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Index
}

func (s *State) apply(c Change) error {
	switch c := c.(type) {
	case Register:
		if c.Member.Name == "" {
			return fmt.Errorf("register without a member name")
		}
		s.Members[c.Member.Name] = c.Member
	case Unregister:
		delete(s.Members, c.Name)
		// A node taken out takes its ducks with it.
		for k, p := range s.Ducks {
			if p.Node == c.Name {
				delete(s.Ducks, k)
			}
		}
	case Commit:
		prev := s.Rollout
		if err := s.commit(c); err != nil {
			return err
		}
		if prev != nil && prev != s.Rollout {
			s.Past = append(s.Past, prev)
			if len(s.Past) > keepPast {
				s.Past = s.Past[len(s.Past)-keepPast:]
			}
		}
	case Noop:
	case NameCluster:
		if s.Cluster == "" {
			s.Cluster = c.Name // once: a later name (two leaders proposing at once) changes nothing
		}
	case Place:
		if c.Placement.Node == "" || c.Placement.ID == "" {
			return fmt.Errorf("place without a node and duck")
		}
		if s.Ducks == nil {
			s.Ducks = map[string]Placement{}
		}
		s.Ducks[c.Placement.Key()] = c.Placement
	case Unplace:
		delete(s.Ducks, c.Key)
	case Grant:
		return s.grant(c)
	case Report:
		return s.report(c)
	case SetState:
		return s.setRolloutState(c)
	case WaveState:
		r, err := s.rolloutFor(c.N)
		if err != nil {
			return err
		}
		return r.SetWaveState(c.State, c.Time)
	case Steps:
		return s.steps(c)
	default:
		return fmt.Errorf("%T is not a change the log knows", c)
	}
	return nil
}

// State returns a copy of the current state. Bundles are shared, not copied: nobody writes
// into one.
func (f *fsm) State() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := State{
		Members:  maps.Clone(f.state.Members),
		Versions: slices.Clone(f.state.Versions),
		Rollout:  f.state.Rollout.Clone(),
		Ducks:    maps.Clone(f.state.Ducks),
		Index:    f.state.Index,
		Cluster:  f.state.Cluster,
	}
	for _, r := range f.state.Past {
		s.Past = append(s.Past, r.Clone())
	}
	return s
}

// Members returns a copy of the registry. The readers that need one part of the state ask for
// it alone: State copies every rollout kept (up to keepPast of a hundred nodes each), and the
// agent's loops asked for it several times a second on every node to read one member.
func (f *fsm) Members() map[string]Member {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.state.Members)
}

// Member returns one registered member.
func (f *fsm) Member(name string) (Member, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.state.Members[name]
	return m, ok
}

// Ducks returns a copy of the duck placements.
func (f *fsm) Ducks() map[string]Placement {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.state.Ducks)
}

// Versions returns a copy of the committed versions; bundles are shared, as in State.
func (f *fsm) Versions() []Version {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.state.Versions)
}

// Rollout returns a copy of the latest rollout, nil if there was none.
func (f *fsm) Rollout() *rollout.Rollout {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Rollout.Clone()
}

// Version returns committed version n.
func (f *fsm) Version(n rollout.Number) (Version, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, v := range f.state.Versions {
		if v.N == n {
			return v, true
		}
	}
	return Version{}, false
}

// Current is the version the cluster runs (see State.current), if any.
func (f *fsm) Current() (Version, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if v := f.state.current(); v != nil {
		return *v, true
	}
	return Version{}, false
}

// Fresh reports whether the cluster's history is only self's own start: nothing but self was
// ever recorded. Only a fresh node may give up its history to join another cluster.
func (f *fsm) Fresh(self string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for name := range f.state.Members {
		if name != self {
			return false
		}
	}
	return len(f.state.Versions) == 0
}

// MemberNames lists the registered names in order.
func (f *fsm) MemberNames() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Sorted(maps.Keys(f.state.Members))
}

// Snapshot captures the state; Persist writes it as JSON.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{state: f.State()}, nil
}

// Restore replaces the state with a snapshot's. A snapshot that does not decode leaves the
// current state untouched.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var s State
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if s.Members == nil {
		s.Members = map[string]Member{}
	}
	if err := s.Rollout.Check(); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	for _, r := range s.Past {
		if err := r.Check(); err != nil {
			return fmt.Errorf("restore snapshot: %w", err)
		}
	}
	f.mu.Lock()
	f.state = s
	f.notify()
	f.mu.Unlock()
	return nil
}

type snapshot struct{ state State }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.state); err != nil {
		sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
