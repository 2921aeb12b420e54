package consensus

import (
	"sync"
	"time"

	"github.com/duckraft/duckraft/rollout"
	"github.com/hashicorp/raft"
)

// contacts is the leader's view of its members, from Raft's own heartbeats: which members it
// fails to reach and since when. The rollout uses it to tell a node that is down from one that
// is merely slow, in every phase, so that a dead node never holds a rollout up.
type contacts struct {
	mu      sync.Mutex
	failing map[raft.ServerID]time.Time // since when: the member's last contact with this leader
	obs     *raft.Observer
	ch      chan raft.Observation
	done    chan struct{}
}

func watchContacts(r *raft.Raft) *contacts {
	c := &contacts{failing: map[raft.ServerID]time.Time{}, ch: make(chan raft.Observation, 64), done: make(chan struct{})}
	c.obs = raft.NewObserver(c.ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.RaftState:
			return true
		}
		return false
	})
	r.RegisterObserver(c.obs)
	go c.run()
	return c
}

func (c *contacts) run() {
	for {
		select {
		case <-c.done:
			return
		case o := <-c.ch:
			c.mu.Lock()
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				if _, ok := c.failing[d.PeerID]; !ok {
					// LastContact is the last heartbeat that got through, or when this
					// leader started replicating to the member.
					c.failing[d.PeerID] = d.LastContact
					if d.LastContact.IsZero() {
						c.failing[d.PeerID] = time.Now()
					}
				}
			case raft.ResumedHeartbeatObservation:
				delete(c.failing, d.PeerID)
			case raft.RaftState:
				// A new term of leadership starts a new view.
				clear(c.failing)
			}
			c.mu.Unlock()
		}
	}
}

func (c *contacts) stop(r *raft.Raft) {
	r.DeregisterObserver(c.obs)
	close(c.done)
}

// Unreached is, on the leader, each member its heartbeats do not reach and the last heartbeat
// that got through to it; nil on any other node.
func (n *Node) Unreached() map[string]time.Time {
	if n.RaftState() != raft.Leader {
		return nil
	}
	n.contacts.mu.Lock()
	defer n.contacts.mu.Unlock()
	if len(n.contacts.failing) == 0 {
		return nil
	}
	out := make(map[string]time.Time, len(n.contacts.failing))
	for k, v := range n.contacts.failing {
		out[string(k)] = v.UTC()
	}
	return out
}

// Silence is how long this node, as leader, has not reached each member: 0 for itself and for a
// member its heartbeats reach, the time since the last heartbeat that got through for one they
// do not, and for ever for a name outside Raft's configuration (nothing replicates to it).
// Only the leader's answer means anything.
func (n *Node) Silence() rollout.Silence {
	servers, _ := n.Servers()
	now := time.Now()
	n.contacts.mu.Lock()
	failing := make(map[raft.ServerID]time.Time, len(n.contacts.failing))
	for k, v := range n.contacts.failing {
		failing[k] = v
	}
	n.contacts.mu.Unlock()
	return func(name string) time.Duration {
		if name == n.name {
			return 0
		}
		in := false
		for _, s := range servers {
			if string(s.ID) == name {
				in = true
			}
		}
		if !in {
			return rollout.NotAMember
		}
		if since, ok := failing[raft.ServerID(name)]; ok {
			return now.Sub(since)
		}
		return 0
	}
}
