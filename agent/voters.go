package agent

import (
	"cmp"
	"time"

	"github.com/duckraft/duckraft/consensus"
)

// keepVoters is the leader's autopilot: it keeps the cluster at its number of voters, replacing
// a voter it has lost for long with a non-voter it reaches (consensus.PlanVoters decides).
func (a *Agent) keepVoters() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	replaceAfter := cmp.Or(a.cfg.ReplaceVoterAfter, 10*time.Second)
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		n := a.Node()
		if !n.IsLeader() {
			continue
		}
		servers, err := n.Servers()
		if err != nil {
			continue
		}
		ch := consensus.PlanVoters(servers, n.Silence(), a.self.Name, a.cfg.Voters, replaceAfter)
		switch {
		case ch.Promote != "":
			err = n.Promote(ch.Promote, len(servers), applyTimeout)
		case ch.Demote != "":
			err = n.Demote(ch.Demote, applyTimeout)
		default:
			continue
		}
		if err != nil {
			a.log.Warn("voters", "promote", ch.Promote, "demote", ch.Demote, "err", err)
			continue
		}
		a.log.Info("voters", "promote", ch.Promote, "demote", ch.Demote, "why", ch.Why)
	}
}
