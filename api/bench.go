package api

import (
	"time"
)

// CommitBench asks the leader to commit N empty entries one after another and say how long
// each took, from Apply to the FSM's answer: the Raft round trip `bench` reports.
type CommitBench struct {
	N int `json:"n"`
}

// CommitLatency is the answer: each commit's time, sorted.
type CommitLatency struct {
	Leader  string          `json:"leader"`
	Samples []time.Duration `json:"samples"`
}
