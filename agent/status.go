package agent

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/rollout"
)

// Local is what one node says of itself for `status`: the version its ducks run and the ducks.
type Local struct {
	Name    string     `json:"name"`
	Role    string     `json:"role"`
	Version string     `json:"version,omitempty"` // bundle ID
	Label   string     `json:"label,omitempty"`   // vN if committed, else the short ID and "(local)"
	Ducks   []DuckInfo `json:"ducks"`
	// DuckUser says whose authority ducks run with: a user of their own on a root node, else
	// "shared with the node (uid N)". See docs/SECURITY.md for what a duck can and cannot reach.
	DuckUser string `json:"duck_user,omitempty"`
}

func (a *Agent) localView() Local {
	id := a.snapshotLocal().Version
	return Local{Name: a.self.Name, Role: a.ping().State, Version: id, Label: a.versionLabel(id), Ducks: a.localDucks(), DuckUser: a.duckUser()}
}

// versionLabel names a version as users see it: vN once committed; a loaded but uncommitted one
// by its short ID, marked local.
func (a *Agent) versionLabel(id string) string {
	if id == "" {
		return ""
	}
	l := a.duckVersion(id)
	if l == Label(id) {
		return l + " (local)"
	}
	return l
}

// duckVersion is the version string a duck reports: vN once committed, else the short ID.
func (a *Agent) duckVersion(id string) string {
	// The newest version of this bundle: `rollout undo --to 1` commits v1's bundle again as v3,
	// and a duck that runs it runs v3.
	vs := a.Node().FSM.State().Versions
	for _, v := range slices.Backward(vs) {
		if v.ID == id {
			return "v" + strconv.Itoa(v.N)
		}
	}
	if l := a.snapshotLocal(); l.Version == id && l.Label != "" {
		return l.Label // the log is not replayed yet
	}
	return Label(id)
}

func (a *Agent) handleLocal(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.localView()) }

// NodeStatus is one row of `status`.
type NodeStatus struct {
	Member    MemberStatus  `json:"member"`
	Local     *Local        `json:"local,omitempty"` // nil when unreachable
	Rollout   *rollout.Node `json:"rollout,omitempty"`
	Reachable bool          `json:"reachable"`
}

// Status is the cluster as `status` shows it.
type Status struct {
	Nodes   []NodeStatus `json:"nodes"`
	Rollout RolloutView  `json:"rollout"`
	// Voters is how many members vote; Tolerates how many of them the cluster can lose and
	// still commit.
	Voters    int `json:"voters"`
	Tolerates int `json:"tolerates"`
}

func (a *Agent) status(ctx context.Context) (Status, error) {
	ms, err := a.members(ctx)
	if err != nil {
		return Status{}, err
	}
	view := a.rolloutView()
	out := Status{Rollout: view, Nodes: make([]NodeStatus, len(ms))}
	for _, m := range ms {
		if m.Suffrage == "voter" {
			out.Voters++
		}
	}
	out.Tolerates = consensus.FailureTolerance(out.Voters)
	var wg sync.WaitGroup
	for i, m := range ms {
		out.Nodes[i] = NodeStatus{Member: m, Reachable: m.Reachable}
		if view.Rollout != nil {
			out.Nodes[i].Rollout = view.Rollout.Nodes[m.Name]
		}
		if !m.Reachable {
			continue
		}
		wg.Add(1)
		go func(ns *NodeStatus) {
			defer wg.Done()
			var l Local
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
	slices.SortFunc(out.Nodes, func(x, y NodeStatus) int { return strings.Compare(x.Member.Name, y.Member.Name) })
	return out, nil
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := a.status(r.Context())
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, st)
}
