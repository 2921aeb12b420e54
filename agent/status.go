package agent

import (
	"context"
	"strings"
	"time"

	"github.com/duckraft/duckraft/api"
)

func (a *Agent) localView() api.Local {
	id := a.host.Local().Version
	return api.Local{Name: a.self.Name, Role: a.ping().State, Version: id, Label: a.host.VersionLabel(id), Ducks: a.host.List(), DuckUser: a.duckUser(), UpFor: time.Since(a.started)}
}

// clusterView is the log's picture of the cluster, as the views read it.
type clusterView struct{ a *Agent }

func (c clusterView) Configuration() ([]api.MemberStatus, error) {
	n := c.a.Node()
	servers, err := n.Servers()
	if err != nil {
		return nil, err
	}
	registry := n.Members()
	out := make([]api.MemberStatus, len(servers))
	for i, s := range servers {
		out[i] = api.MemberStatus{
			Name: string(s.ID), RaftAddr: string(s.Address), APIAddr: registry[string(s.ID)].APIAddr,
			Suffrage: strings.ToLower(s.Suffrage.String()),
		}
	}
	return out, nil
}

func (c clusterView) Registered() map[string]string {
	out := map[string]string{}
	for name, m := range c.a.Node().Members() {
		out[name] = m.APIAddr
	}
	return out
}

func (c clusterView) Placements() []api.DuckInfo {
	var out []api.DuckInfo
	for _, p := range c.a.Node().Ducks() {
		out = append(out, api.DuckInfo{Node: p.Node, ID: p.ID, Addr: p.Addr})
	}
	return out
}

func (c clusterView) Rollout(ctx context.Context) api.RolloutView {
	c.a.mem.CatchUp(ctx)
	return c.a.rolloutView()
}

// localAnswers are this node's own answers, given without a round trip.
type localAnswers struct{ a *Agent }

func (l localAnswers) Ping() api.Ping        { return l.a.ping() }
func (l localAnswers) Ducks() []api.DuckInfo { return l.a.host.List() }
func (l localAnswers) View() api.Local       { return l.a.localView() }
