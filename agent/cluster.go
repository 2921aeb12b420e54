package agent

import (
	"cmp"
	"context"
	"fmt"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"os"
	"time"

	"github.com/duckraft/duckraft/consensus"
)

// This file answers for the whole cluster from any node, as the seed's shell does: ducks and
// their output on every node, and `spread`, the seed's nl.

// member finds a member's registry entry.
func (a *Agent) member(name string) (consensus.Member, error) {
	m, ok := a.Node().State().Members[name]
	if !ok {
		return m, &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("no member named %q: `members` lists them", name)}
	}
	return m, nil
}

// mirrorDucks keeps the log's record of this node's ducks equal to the ducks it runs: right
// after a spawn or stop, and again in the background, so that a record missed while the cluster
// had no leader is written later.
func (a *Agent) mirrorDucks() {
	want := map[string]consensus.Placement{}
	for _, d := range a.host.Local().Ducks {
		p := consensus.Placement{Node: a.self.Name, ID: d.ID, Addr: d.Addr, Env: d.Env}
		want[p.Key()] = p
	}
	var cmds []consensus.Command
	have := a.Node().State().Ducks
	for k, p := range want {
		if h, ok := have[k]; !ok || h.Addr != p.Addr {
			cmds = append(cmds, consensus.Command{Op: consensus.OpPlace, Placement: &p})
		}
	}
	for k, p := range have {
		if _, ok := want[k]; !ok && p.Node == a.self.Name {
			cmds = append(cmds, consensus.Command{Op: consensus.OpUnplace, Name: k})
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

// handlePlace records a node's duck in the log (or drops it).
func (a *Agent) handlePlace(w http.ResponseWriter, r *http.Request) {
	var c consensus.Command
	if !httpjson.Decode(w, r, &c) {
		return
	}
	if c.Op != consensus.OpPlace && c.Op != consensus.OpUnplace {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("only place and unplace go through /v1/place, not %q", c.Op))
		return
	}
	if err := a.mem.Apply(r.Context(), "/v1/place", c); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"recorded": true})
}

// handleSpread commits the version loaded on this node to the whole cluster: the seed's nl.
func (a *Agent) handleSpread(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id := a.host.Local().Version
	if id == "" {
		httpjson.Error(w, http.StatusConflict, a.host.NoCode())
		return
	}
	data, err := os.ReadFile(a.host.BundlePath(id))
	if err != nil {
		httpjson.Error(w, http.StatusInternalServerError, fmt.Errorf("node %s runs %s but lost its bundle (%v): load its folder again", a.self.Name, api.Label(id), err))
		return
	}
	a.answerCommit(w, r, api.CommitRequest{Bundle: data, Message: cmp.Or(q.Get("m"), "spread from "+a.self.Name), Author: q.Get("author")})
}
