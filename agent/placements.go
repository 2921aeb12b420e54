package agent

import (
	"context"
	"time"

	"github.com/duckraft/duckraft/consensus"
)

// This file keeps the log's record of where this node's ducks run.

// mirrorDucks keeps the log's record of this node's ducks equal to the ducks it runs: right
// after a spawn or stop, and again in the background, so that a record missed while the cluster
// had no leader is written later.
func (a *Agent) mirrorDucks() {
	want := map[string]consensus.Placement{}
	for _, d := range a.host.Local().Ducks {
		p := consensus.Placement{Node: a.self.Name, ID: d.ID, Addr: d.Addr, Env: d.Env}
		want[p.Key()] = p
	}
	var cmds []consensus.Change
	have := a.Node().Ducks()
	for k, p := range want {
		if h, ok := have[k]; !ok || h.Addr != p.Addr {
			cmds = append(cmds, consensus.Place{Placement: p})
		}
	}
	for k, p := range have {
		if _, ok := want[k]; !ok && p.Node == a.self.Name {
			cmds = append(cmds, consensus.Unplace{Key: k})
		}
	}
	for _, c := range cmds {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := a.mem.Apply(ctx, "/v1/place", c)
		cancel()
		if err != nil {
			a.log.Debug("record ducks in the log", "err", err)
			return
		}
	}
}
