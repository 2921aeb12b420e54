package agent

import (
	"context"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

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

func (a *Agent) status(ctx context.Context) (api.Status, error) {
	ms, err := a.members(ctx)
	if err != nil {
		return api.Status{}, err
	}
	view := a.rolloutView()
	out := api.Status{Rollout: view, Nodes: make([]api.NodeStatus, len(ms))}
	for _, m := range ms {
		if m.Suffrage == "voter" {
			out.Voters++
		}
	}
	out.Tolerates = consensus.FailureTolerance(out.Voters)
	var wg sync.WaitGroup
	for i, m := range ms {
		out.Nodes[i] = api.NodeStatus{Member: m, Reachable: m.Reachable}
		if view.Rollout != nil {
			out.Nodes[i].Rollout = view.Rollout.Nodes[m.Name]
		}
		if !m.Reachable {
			continue
		}
		wg.Add(1)
		go func(ns *api.NodeStatus) {
			defer wg.Done()
			var l api.Local
			if ns.Member.Name == a.self.Name {
				l = a.localView()
			} else {
				pctx, cancel := context.WithTimeout(ctx, probeTimeout)
				defer cancel()
				if a.client.Do(pctx, ns.Member.APIAddr, http.MethodGet, "/v1/local", nil, &l) != nil {
					return
				}
			}
			ns.Local = &l
		}(&out.Nodes[i])
	}
	wg.Wait()
	slices.SortFunc(out.Nodes, func(x, y api.NodeStatus) int { return strings.Compare(x.Member.Name, y.Member.Name) })
	return out, nil
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := a.status(r.Context())
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, st)
}
