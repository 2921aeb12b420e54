package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"

	"github.com/duckraft/duckraft/consensus"
)

// This file answers for the whole cluster from any node, as the seed's shell does: ducks and
// their output on every node, and `spread`, the seed's nl.

// member finds a member's registry entry.
func (a *Agent) member(name string) (consensus.Member, error) {
	m, ok := a.Node().FSM.State().Members[name]
	if !ok {
		return m, &APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("no member named %q: `members` lists them", name)}
	}
	return m, nil
}

// proxyLogs relays a duck's output from the node it runs on. If that node dies the stream says
// so at once: its connection breaks the moment the process is gone.
func (a *Agent) proxyLogs(w http.ResponseWriter, r *http.Request, on string) {
	m, err := a.member(on)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	q := r.URL.Query()
	q.Del("on")
	s := newStreamer(w)
	err = a.client.Stream(r.Context(), m.APIAddr, http.MethodGet, "/v1/logs?"+q.Encode(), nil, "", func(raw json.RawMessage) error {
		s.w.Write(append(raw, '\n'))
		s.flush()
		return nil
	})
	if err != nil && r.Context().Err() == nil {
		var ae *APIError
		msg := fmt.Sprintf("node %s is gone, and its ducks with it (%v)", on, err)
		if errors.As(err, &ae) {
			msg = ae.Message
		}
		s.send(LogLine{Node: on, Error: msg})
	}
}

// clusterLogs merges the output of every duck on every node.
func (a *Agent) clusterLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	q.Del("on")
	lines := make(chan json.RawMessage, 256)
	var wg sync.WaitGroup
	for _, m := range a.Node().FSM.State().Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := a.client.Stream(r.Context(), m.APIAddr, http.MethodGet, "/v1/logs?"+q.Encode(), nil, "", func(raw json.RawMessage) error {
				select {
				case lines <- raw:
				case <-r.Context().Done():
				}
				return nil
			})
			if err != nil && r.Context().Err() == nil {
				b, _ := json.Marshal(LogLine{Node: m.Name, Error: fmt.Sprintf("node %s is gone, and its ducks with it (%v)", m.Name, err)})
				lines <- b
			}
		}()
	}
	go func() { wg.Wait(); close(lines) }()
	s := newStreamer(w)
	for raw := range lines {
		s.w.Write(append(raw, '\n'))
		s.flush()
	}
}

// clusterDucks lists the ducks of every node; a node that does not answer gets a row saying so.
func (a *Agent) clusterDucks(ctx context.Context) []DuckInfo {
	var mu sync.Mutex
	out := []DuckInfo{}
	var wg sync.WaitGroup
	for _, m := range a.Node().FSM.State().Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ds []DuckInfo
			if m.Name == a.self.Name {
				ds = a.localDucks()
			} else {
				pctx, cancel := context.WithTimeout(ctx, probeTimeout)
				defer cancel()
				if err := a.client.Do(pctx, m.APIAddr, http.MethodGet, "/v1/ducks", nil, &ds); err != nil {
					ds = []DuckInfo{{Node: m.Name}}
					ds[0].State = "node unreachable"
				}
			}
			mu.Lock()
			out = append(out, ds...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sortDucks(out)
	return out
}

// handleSpread commits the version loaded on this node to the whole cluster: the seed's nl.
func (a *Agent) handleSpread(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	a.ducksMu.Lock()
	id := a.local.Version
	a.ducksMu.Unlock()
	if id == "" {
		writeError(w, http.StatusConflict, a.noCode())
		return
	}
	data, err := os.ReadFile(a.bundlePath(id))
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("node %s runs %s but lost its bundle (%v): load its folder again", a.self.Name, Label(id), err))
		return
	}
	req := CommitRequest{Bundle: data, Message: cmpOr(q.Get("m"), "spread from "+a.self.Name), Author: q.Get("author")}
	var res CommitResult
	err = a.onLeader(r.Context(), "/v1/commit", req, &res, func(n *consensus.Node) (err error) {
		res, err = a.commit(n, req)
		return err
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, res)
}
