package api

import (
	"encoding/json"
	"time"
)

// Ping is a node's account of itself.
type Ping struct {
	Name         string `json:"name"`
	State        string `json:"state"`
	Leader       string `json:"leader"`
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// StateIndex is the log index of the last command the node's state machine applied. Raft's
	// own indexes count configuration entries too, which never reach the state machine.
	StateIndex uint64 `json:"state_index"`
	// Cluster is the name of the node's cluster (consensus.State.Cluster), "" before it has one.
	Cluster string `json:"cluster,omitempty"`
	// Unreached, from the leader: each member its heartbeats do not reach, with the last
	// heartbeat that got through. `members` takes a member's last contact from it, on every node.
	Unreached map[string]time.Time `json:"unreached,omitempty"`
	// Log is how the node writes its copy of the log: "synced" (every write reaches the disk
	// before it is acknowledged, as a voter's must) or "unsynced" (a non-voter's copy, sent
	// again by the leader if a restart of the machine loses it).
	Log string `json:"log,omitempty"`
}

// MemberStatus is one row of `members`.
type MemberStatus struct {
	Name        string    `json:"name"`
	RaftAddr    string    `json:"raft_addr"`
	APIAddr     string    `json:"api_addr"`
	Role        string    `json:"role"`     // leader, follower, candidate; unknown when unreachable
	Suffrage    string    `json:"suffrage"` // voter, nonvoter
	Reachable   bool      `json:"reachable"`
	LastContact time.Time `json:"last_contact,omitzero"`
	Log         string    `json:"log,omitempty"` // synced, unsynced (Ping.Log); "" when it did not say
}

// ConnectRequest asks a node to join the cluster that Addr (any member's API) belongs to.
type ConnectRequest struct {
	Addr string `json:"addr"`
}

// NameRequest names a member.
type NameRequest struct {
	Name string `json:"name"`
}

// Member is a node as it asks to join or registers itself (/v1/join, /v1/register): where the
// others reach it, and the labels it was started with.
type Member struct {
	Name     string            `json:"name"`
	RaftAddr string            `json:"raft_addr"`
	APIAddr  string            `json:"api_addr"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// Entry is a change a node sends the leader to commit as it stands (/v1/report, /v1/place): a
// log entry in the log's own JSON, which only the log decodes. Its "op" says what it changes.
type Entry json.RawMessage

// Op is what the entry says it changes ("" when it says nothing readable).
func (e Entry) Op() string {
	var head struct {
		Op string `json:"op"`
	}
	json.Unmarshal(e, &head)
	return head.Op
}

// MarshalJSON sends the entry as it is.
func (e Entry) MarshalJSON() ([]byte, error) {
	if e == nil {
		return []byte("null"), nil
	}
	return e, nil
}

// UnmarshalJSON keeps the entry as it came.
func (e *Entry) UnmarshalJSON(b []byte) error {
	*e = append((*e)[:0], b...)
	return nil
}
