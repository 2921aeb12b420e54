package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"os"
	"sync"
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

// proxyLogs relays a duck's output from the node it runs on. If that node dies the stream says
// so at once: its connection breaks the moment the process is gone.
func (a *Agent) proxyLogs(w http.ResponseWriter, r *http.Request, on string) {
	m, err := a.member(on)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	q := r.URL.Query()
	q.Del("on")
	s := httpjson.NewStreamer(w)
	err = a.client.Stream(r.Context(), m.APIAddr, http.MethodGet, "/v1/logs?"+q.Encode(), nil, "", func(raw json.RawMessage) error {
		s.Raw(raw)
		return nil
	})
	if err != nil && r.Context().Err() == nil {
		var ae *api.APIError
		msg := fmt.Sprintf("node %s is gone, and its ducks with it (%v)", on, err)
		if errors.As(err, &ae) {
			msg = ae.Message
		}
		s.Send(api.LogLine{Node: on, Error: msg})
	}
}

// clusterLogs merges the output of every duck on every node.
func (a *Agent) clusterLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	q.Del("on")
	lines := make(chan json.RawMessage, 256)
	var wg sync.WaitGroup
	for _, m := range a.Node().State().Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Recent lines come with a deadline, so that one silent member (cut off, not yet
			// known to be down) cannot hold up the listing of a hundred; following has none.
			ctx := r.Context()
			if q.Get("follow") != "1" {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 2*probeTimeout)
				defer cancel()
			}
			err := a.client.Stream(ctx, m.APIAddr, http.MethodGet, "/v1/logs?"+q.Encode(), nil, "", func(raw json.RawMessage) error {
				select {
				case lines <- raw:
				case <-r.Context().Done():
				}
				return nil
			})
			if err != nil && r.Context().Err() == nil {
				msg := fmt.Sprintf("node %s is gone, and its ducks with it (%v)", m.Name, err)
				if ctx.Err() != nil {
					msg = fmt.Sprintf("node %s did not answer within %s: its lines are missing", m.Name, 2*probeTimeout)
				}
				b, _ := json.Marshal(api.LogLine{Node: m.Name, Error: msg})
				lines <- b
			}
		}()
	}
	go func() { wg.Wait(); close(lines) }()
	s := httpjson.NewStreamer(w)
	for raw := range lines {
		s.Raw(raw)
	}
}

// clusterDucks lists the ducks of every node: where they run comes from the log, how they are
// from each node. A node that does not answer keeps its rows, marked so.
func (a *Agent) clusterDucks(ctx context.Context) []api.DuckInfo {
	st := a.Node().State()
	var mu sync.Mutex
	live := map[string]api.DuckInfo{}
	down := map[string]bool{}
	var wg sync.WaitGroup
	for _, m := range st.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ds []api.DuckInfo
			if m.Name == a.self.Name {
				ds = a.localDucks()
			} else {
				pctx, cancel := context.WithTimeout(ctx, probeTimeout)
				defer cancel()
				if err := a.client.Do(pctx, m.APIAddr, http.MethodGet, "/v1/ducks", nil, &ds); err != nil {
					mu.Lock()
					down[m.Name] = true
					mu.Unlock()
					return
				}
			}
			mu.Lock()
			for _, d := range ds {
				live[d.Node+"/"+d.ID] = d
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	out := []api.DuckInfo{}
	for _, d := range live {
		out = append(out, d)
	}
	for key, p := range st.Ducks {
		if _, ok := live[key]; ok {
			continue
		}
		d := api.DuckInfo{Node: p.Node}
		d.ID, d.Addr, d.State = p.ID, p.Addr, "node unreachable"
		if !down[p.Node] {
			d.State = "not running" // placed in the log, not (yet) on its node
		}
		out = append(out, d)
	}
	sortDucks(out)
	return out
}

// mirrorDucks keeps the log's record of this node's ducks equal to the ducks it runs: right
// after a spawn or stop, and again in the background, so that a record missed while the cluster
// had no leader is written later.
func (a *Agent) mirrorDucks() {
	want := map[string]consensus.Placement{}
	for _, d := range a.snapshotLocal().Ducks {
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
		err := a.onLeader(ctx, "/v1/place", c, nil, func(n *consensus.Node) error { return n.Apply(c, applyTimeout) })
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
	if err := a.onLeader(r.Context(), "/v1/place", c, nil, func(n *consensus.Node) error { return n.Apply(c, applyTimeout) }); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"recorded": true})
}

// handleSpread commits the version loaded on this node to the whole cluster: the seed's nl.
func (a *Agent) handleSpread(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id := a.snapshotLocal().Version
	if id == "" {
		httpjson.Error(w, http.StatusConflict, a.noCode())
		return
	}
	data, err := os.ReadFile(a.bundlePath(id))
	if err != nil {
		httpjson.Error(w, http.StatusInternalServerError, fmt.Errorf("node %s runs %s but lost its bundle (%v): load its folder again", a.self.Name, api.Label(id), err))
		return
	}
	a.answerCommit(w, r, api.CommitRequest{Bundle: data, Message: cmp.Or(q.Get("m"), "spread from "+a.self.Name), Author: q.Get("author")})
}
