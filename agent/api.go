package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/agent/ducks"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/agent/membership"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/consensus"
)

// routes is the API. Two audiences share it, and the routes are kept apart by who calls them:
// users (the CLI) and the other nodes of the cluster (forwarding to the leader, joining,
// reporting a rollout's progress). Both prove the cookie the same way; no handler checks it: the
// API's wire.Listener yields only connections that proved it, and answers every other client
// itself (a 401, then it closes the connection).
func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	a.userRoutes(mux)
	a.peerRoutes(mux)
	return mux
}

// userRoutes are what the CLI calls.
func (a *Agent) userRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/members", a.handleMembers)
	mux.HandleFunc("POST /v1/connect", a.handleConnect)
	mux.HandleFunc("POST /v1/forget", a.handleForget)
	mux.HandleFunc("POST /v1/leave", a.handleLeave)
	mux.HandleFunc("POST /v1/load", a.handleLoad)
	mux.HandleFunc("POST /v1/spawn", a.handleSpawn)
	mux.HandleFunc("POST /v1/stop", a.handleStop)
	mux.HandleFunc("GET /v1/ducks", a.handleDucks)
	mux.HandleFunc("GET /v1/logs", a.handleLogs)
	mux.HandleFunc("POST /v1/deploy", a.handleDeploy)
	mux.HandleFunc("POST /v1/spread", a.handleSpread)
	mux.HandleFunc("GET /v1/rollout", a.handleRollout)
	mux.HandleFunc("POST /v1/rollout", a.handleRolloutAction)
	mux.HandleFunc("GET /v1/status", a.handleStatus)
	mux.HandleFunc("POST /v1/bench/commit", a.handleBenchCommit)
}

// peerRoutes are what nodes call on each other: a node asks another how it is, forwards a
// change to the leader, joins through a member, reports its part in a rollout. (The CLI's
// calls above are forwarded through some of them too: spawn --on, logs, deploy.)
func (a *Agent) peerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/ping", a.handlePing)
	mux.HandleFunc("GET /v1/local", a.handleLocal)
	mux.HandleFunc("POST /v1/join", a.handleJoin)
	mux.HandleFunc("POST /v1/register", a.handleRegister)
	mux.HandleFunc("POST /v1/promote", a.handlePromote)
	mux.HandleFunc("POST /v1/remove", a.handleRemove)
	mux.HandleFunc("POST /v1/place", a.handlePlace)
	mux.HandleFunc("POST /v1/commit", a.handleCommit)
	mux.HandleFunc("POST /v1/report", a.handleReport)
}

// statusOf picks the HTTP status for an error, keeping one a forwarded call came back with.
func statusOf(err error) int {
	var ae *api.APIError
	switch {
	case errors.As(err, &ae):
		return ae.Status
	case errors.Is(err, ErrNoLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrNotLeader):
		return http.StatusServiceUnavailable
	case errors.Is(err, consensus.ErrRefused):
		return http.StatusConflict
	case errors.Is(err, consensus.ErrNameTaken):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func (a *Agent) ping() api.Ping {
	n := a.Node()
	leader, _ := n.Leader()
	return api.Ping{
		Name:         a.self.Name,
		State:        strings.ToLower(n.RaftState().String()),
		Leader:       leader,
		Term:         n.Term(),
		CommitIndex:  n.CommitIndex(),
		AppliedIndex: n.AppliedIndex(),
		StateIndex:   n.Index(),
	}
}

func (a *Agent) handlePing(w http.ResponseWriter, r *http.Request) { httpjson.Write(w, a.ping()) }

func (a *Agent) handleMembers(w http.ResponseWriter, r *http.Request) {
	ms, err := a.views.Members(r.Context())
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, ms)
}

func (a *Agent) handleConnect(w http.ResponseWriter, r *http.Request) {
	var req api.ConnectRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if req.Addr == "" {
		httpjson.Error(w, http.StatusBadRequest, errors.New("connect needs the API address of a member of the other cluster"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := a.mem.Connect(ctx, req.Addr); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"connected": true})
}

// ErrHasHistory means a node that has a history of its own was asked to join another cluster.
var ErrHasHistory = membership.ErrHasHistory

func (a *Agent) handleJoin(w http.ResponseWriter, r *http.Request) {
	var m consensus.Member
	if !httpjson.Decode(w, r, &m) {
		return
	}
	if m.Name == "" || m.RaftAddr == "" || m.APIAddr == "" {
		httpjson.Error(w, http.StatusBadRequest, errors.New("join needs the member's name, raft_addr and api_addr"))
		return
	}
	err := a.mem.Join(r.Context(), m)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	a.log.Info("member joined", "name", m.Name, "raft", m.RaftAddr, "api", m.APIAddr)
	httpjson.Write(w, map[string]bool{"joined": true})
}

func (a *Agent) handleRegister(w http.ResponseWriter, r *http.Request) {
	var m consensus.Member
	if !httpjson.Decode(w, r, &m) {
		return
	}
	err := a.mem.Register(r.Context(), m)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"registered": true})
}

// handleForget removes a member that is gone for good. A live one is refused: it would keep
// campaigning with the configuration it has; it should leave itself.
func (a *Agent) handleForget(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	ms, err := a.views.Members(r.Context())
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	i := slices.IndexFunc(ms, func(m api.MemberStatus) bool { return m.Name == req.Name })
	switch {
	case i < 0:
		httpjson.Error(w, http.StatusNotFound, fmt.Errorf("no member named %q: `members` lists them", req.Name))
		return
	case ms[i].Reachable:
		httpjson.Error(w, http.StatusConflict, fmt.Errorf("%s is alive: run `leave` against it (--addr %s) instead of forgetting it", req.Name, ms[i].APIAddr))
		return
	}
	if err := a.mem.Remove(r.Context(), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"forgotten": true})
}

func (a *Agent) handlePromote(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	err := a.mem.Promote(r.Context(), req.Name)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"promoted": true})
}

func (a *Agent) handleRemove(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if err := a.mem.Remove(r.Context(), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"removed": true})
}

// handleLeave takes this node out of its cluster; it carries on as a fresh cluster of one, so
// it can connect elsewhere, as a node does after Node.disconnect.
func (a *Agent) handleLeave(w http.ResponseWriter, r *http.Request) {
	err := a.mem.Leave(r.Context(), func() {
		if err := a.host.Change(func(l *ducks.State) { l.Synced, l.Acted = "", "" }); err != nil {
			a.log.Warn("forget the old cluster's rollout steps", "err", err)
		}
	})
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"left": true})
}
