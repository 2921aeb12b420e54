package consensus

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
)

// Member is one node of the cluster as the registry records it: the addresses others use to
// reach it. Raft's own configuration says who votes; the registry says how to talk to them.
type Member struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

// State is everything the cluster agrees on. It is a plain value so that a snapshot is its JSON
// and a reader gets a copy it may keep.
type State struct {
	Members map[string]Member `json:"members"`
}

// Command is one entry of the log. Op selects what it does; the other fields are its arguments.
type Command struct {
	Op     string  `json:"op"`
	Member *Member `json:"member,omitempty"`
	Name   string  `json:"name,omitempty"`
}

// The operations a Command may carry.
const (
	OpRegister   = "register"
	OpUnregister = "unregister"
)

// FSM applies committed commands to State. Apply is deterministic: every node applying the same
// log reaches the same State. It records and never acts: starting builds or ducks is the job of
// whoever watches it.
type FSM struct {
	mu    sync.RWMutex
	state State
}

// NewFSM returns an FSM holding an empty State.
func NewFSM() *FSM {
	return &FSM{state: State{Members: map[string]Member{}}}
}

// Apply applies one committed entry. A command that cannot apply returns an error value (Raft
// hands it to the caller of Apply on the leader) and leaves State as it was.
func (f *FSM) Apply(l *raft.Log) any {
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("undecodable log entry %d: %w", l.Index, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.apply(c)
}

func (s *State) apply(c Command) error {
	switch c.Op {
	case OpRegister:
		if c.Member == nil || c.Member.Name == "" {
			return fmt.Errorf("register without a member name")
		}
		s.Members[c.Member.Name] = *c.Member
	case OpUnregister:
		delete(s.Members, c.Name)
	default:
		// A newer node may write operations this one does not know; refusing them loudly beats
		// silently diverging. Upgrade this node to apply them.
		return fmt.Errorf("unknown operation %q: this node is older than the one that wrote it; upgrade it", c.Op)
	}
	return nil
}

// State returns a copy of the current state.
func (f *FSM) State() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return State{Members: maps.Clone(f.state.Members)}
}

// Fresh reports whether the cluster's history is only self's own start: nothing but self was
// ever recorded. Only a fresh node may give up its history to join another cluster.
func (f *FSM) Fresh(self string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for name := range f.state.Members {
		if name != self {
			return false
		}
	}
	return true
}

// MemberNames lists the registered names in order.
func (f *FSM) MemberNames() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Sorted(maps.Keys(f.state.Members))
}

// Snapshot captures the state; Persist writes it as JSON.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{state: f.State()}, nil
}

// Restore replaces the state with a snapshot's. A snapshot that does not decode leaves the
// current state untouched.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var s State
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if s.Members == nil {
		s.Members = map[string]Member{}
	}
	f.mu.Lock()
	f.state = s
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
