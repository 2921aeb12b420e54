package consensus

import (
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// DefaultVoters is how many members vote unless told otherwise: Raft's operators keep 3 or 5,
// and every other member follows the log as a non-voter, which costs the leader replication but
// no quorum round trips.
const DefaultVoters = 5

// VoterChange is one change to who votes; an empty one means none is needed.
type VoterChange struct {
	Promote, Demote string
	Why             string
}

// PlanVoters decides the next change to who votes, in the manner of Consul's and Nomad's
// autopilot: keep up to max voters; a voter the leader has not reached for replaceAfter is
// replaced by a non-voter it reaches (promoted first, then the lost one demoted, so the cluster
// never has fewer voters in between); below max, a reachable non-voter is promoted. Only a
// non-voter caughtUp says holds the log is promoted (nil: any): a voter that lags counts in the
// quorum while it cannot yet vote for anything new, and the one it replaces is already down.
// caughtUp is asked only when a promotion is due, of one candidate after another until one is.
// One change at a time: Raft changes its configuration one server at a time. It never demotes
// self (the leader). A pure function of the configuration and the leader's view, so it is
// tested alone.
func PlanVoters(servers []raft.Server, silent func(string) time.Duration, self string, max int, replaceAfter time.Duration, caughtUp func(string) bool) VoterChange {
	if max <= 0 {
		max = DefaultVoters
	}
	var voters, lost, spare []string
	for _, s := range servers {
		name := string(s.ID)
		switch {
		case s.Suffrage == raft.Voter:
			voters = append(voters, name)
			if name != self && silent(name) > replaceAfter {
				lost = append(lost, name)
			}
		case s.Suffrage == raft.Nonvoter && silent(name) == 0:
			spare = append(spare, name)
		}
	}
	switch {
	case len(voters) > max && len(lost) > 0:
		// A replacement was promoted: now the lost one goes.
		return VoterChange{Demote: lost[0], Why: fmt.Sprintf("%s unreachable for over %s and replaced", lost[0], replaceAfter)}
	case len(voters) > max:
		// Too many voters (max lowered): demote a voter that is not the leader.
		for i := len(voters) - 1; i >= 0; i-- {
			if voters[i] != self {
				return VoterChange{Demote: voters[i], Why: fmt.Sprintf("more than %d voters", max)}
			}
		}
	case len(spare) > 0 && (len(voters) < max || len(lost) > 0):
		why := fmt.Sprintf("fewer than %d voters", max)
		if len(voters) >= max {
			why = fmt.Sprintf("replaces %s, unreachable for over %s", lost[0], replaceAfter)
		}
		for _, name := range spare {
			if caughtUp == nil || caughtUp(name) {
				return VoterChange{Promote: name, Why: why}
			}
		}
	case len(lost) > 0 && len(voters) >= max && len(spare) == 0:
		// Nobody to replace it with: keep it; a demotion alone would only lower the quorum's
		// margin.
	}
	return VoterChange{}
}

// Demote makes a voter a non-voter: it keeps following the log.
func (n *Node) Demote(name string, timeout time.Duration) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	if err := n.removing(func() error { return n.raft.DemoteVoter(raft.ServerID(name), 0, timeout).Error() }); err != nil {
		return fmt.Errorf("make %s a non-voter: %w", name, err)
	}
	return nil
}

// FailureTolerance is how many voters the cluster can lose and still commit: of v voters, a
// majority must answer.
func FailureTolerance(voters int) int {
	if voters == 0 {
		return 0
	}
	return (voters - 1) / 2
}
