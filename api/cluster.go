package api

import (
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
}

// ConnectRequest asks a node to join the cluster that Addr (any member's API) belongs to.
type ConnectRequest struct {
	Addr string `json:"addr"`
}

// NameRequest names a member.
type NameRequest struct {
	Name string `json:"name"`
}
