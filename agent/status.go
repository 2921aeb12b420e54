package agent

import (
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/duckraft/duckraft/consensus"
)

func (a *Agent) localView() api.Local {
	id := a.snapshotLocal().Version
	return api.Local{Name: a.self.Name, Role: a.ping().State, Version: id, Label: a.versionLabel(id), Ducks: a.localDucks(), DuckUser: a.duckUser()}
}

// versionLabel names a version as users see it: vN once committed; a loaded but uncommitted one
// by its short ID, marked local.
func (a *Agent) versionLabel(id string) string {
	if id == "" {
		return ""
	}
	l := a.duckVersion(id)
	if l == api.Label(id) {
		return l + " (local)"
	}
	return l
}

// duckVersion is the version string a duck reports: vN once committed, else the short ID.
func (a *Agent) duckVersion(id string) string {
	// The newest version of this bundle: `rollout undo --to 1` commits v1's bundle again as v3,
	// and a duck that runs it runs v3.
	vs := a.Node().State().Versions
	for _, v := range slices.Backward(vs) {
		if v.ID == id {
			return "v" + strconv.Itoa(v.N)
		}
	}
	if l := a.snapshotLocal(); l.Version == id && l.Label != "" {
		return l.Label // the log is not replayed yet
	}
	return api.Label(id)
}

func (a *Agent) handleLocal(w http.ResponseWriter, r *http.Request) { httpjson.Write(w, a.localView()) }

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := a.views.Status(r.Context())
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	st.Tolerates = consensus.FailureTolerance(st.Voters)
	httpjson.Write(w, st)
}

// clusterView is the log's picture of the cluster, as the views read it.
type clusterView struct{ a *Agent }

func (c clusterView) Configuration() ([]api.MemberStatus, error) {
	n := c.a.Node()
	servers, err := n.Servers()
	if err != nil {
		return nil, err
	}
	registry := n.State().Members
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
	for name, m := range c.a.Node().State().Members {
		out[name] = m.APIAddr
	}
	return out
}

func (c clusterView) Placements() []api.DuckInfo {
	var out []api.DuckInfo
	for _, p := range c.a.Node().State().Ducks {
		out = append(out, api.DuckInfo{Node: p.Node, ID: p.ID, Addr: p.Addr})
	}
	return out
}

func (c clusterView) Rollout() api.RolloutView { return c.a.rolloutView() }

// localAnswers are this node's own answers, given without a round trip.
type localAnswers struct{ a *Agent }

func (l localAnswers) Ping() api.Ping        { return l.a.ping() }
func (l localAnswers) Ducks() []api.DuckInfo { return l.a.localDucks() }
func (l localAnswers) View() api.Local       { return l.a.localView() }
