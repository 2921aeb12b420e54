package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/agent/ducks"
	"github.com/duckraft/duckraft/agent/httpjson"
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
	if err := a.connect(ctx, req.Addr); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"connected": true})
}

// ErrHasHistory means a node that has a history of its own was asked to join another cluster.
var ErrHasHistory = errors.New("this node has history of its own")

// connect joins this node to the cluster at addr. A node gives up its own (one-node) history
// to join, so only a fresh node may: merging two histories is not something Raft can do.
func (a *Agent) connect(ctx context.Context, addr string) error {
	var theirs []api.MemberStatus
	if err := a.client.Do(ctx, addr, http.MethodGet, "/v1/members", nil, &theirs); err != nil {
		return fmt.Errorf("cannot reach %s: %w", addr, err)
	}
	for _, m := range theirs {
		if m.Name != a.self.Name {
			continue
		}
		if m.RaftAddr == a.self.RaftAddr {
			return nil // already connected: Node.connect is idempotent too
		}
		return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("%v: a node named %s is already a member of %s's cluster (raft %s); start this node with another --name", consensus.ErrNameTaken, m.Name, addr, m.RaftAddr)}
	}
	n := a.Node()
	if !n.Fresh(a.self.Name) {
		return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("%v (members %s): only a fresh node joins another cluster; connect the other node to this one instead, or start this one on an empty --data-dir", ErrHasHistory, strings.Join(n.MemberNames(), ", "))}
	}

	a.log.Info("joining", "via", addr)
	if err := a.resetRaft(false); err != nil {
		return fmt.Errorf("prepare to join: %w", err)
	}
	if err := a.client.Do(ctx, addr, http.MethodPost, "/v1/join", a.self, nil); err != nil {
		// Back to being a cluster of one, as before the attempt.
		if rerr := a.resetRaft(true); rerr != nil {
			a.log.Error("could not return to a cluster of one after a failed join", "err", rerr)
		}
		return fmt.Errorf("join through %s: %w", addr, err)
	}
	for !a.registered() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("joined through %s, but this node has not caught up with the log yet; check `members` in a moment", addr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Caught up (the log has reached our own registration): now we may vote.
	self := a.self.Name
	err := a.onLeader(ctx, "/v1/promote", api.NameRequest{Name: self}, nil, func(n *consensus.Node) error {
		return n.Promote(self, a.cfg.Voters, applyTimeout)
	})
	if err != nil {
		return fmt.Errorf("joined through %s as a non-voter, but could not ask to vote: %w; run connect again", addr, err)
	}
	a.log.Info("joined", "via", addr, "leader", first(a.Node().Leader()))
	return nil
}

func first(s, _ string) string { return s }

func (a *Agent) handleJoin(w http.ResponseWriter, r *http.Request) {
	var m consensus.Member
	if !httpjson.Decode(w, r, &m) {
		return
	}
	if m.Name == "" || m.RaftAddr == "" || m.APIAddr == "" {
		httpjson.Error(w, http.StatusBadRequest, errors.New("join needs the member's name, raft_addr and api_addr"))
		return
	}
	err := a.onLeader(r.Context(), "/v1/join", m, nil, func(n *consensus.Node) error {
		return n.Join(m, applyTimeout)
	})
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
	err := a.onLeader(r.Context(), "/v1/register", m, nil, func(n *consensus.Node) error {
		return n.Apply(consensus.Command{Op: consensus.OpRegister, Member: &m}, applyTimeout)
	})
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
	if err := a.remove(r.Context(), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"forgotten": true})
}

func (a *Agent) remove(ctx context.Context, name string) error {
	return a.onLeader(ctx, "/v1/remove", api.NameRequest{Name: name}, nil, func(n *consensus.Node) error {
		return n.Remove(name, applyTimeout)
	})
}

func (a *Agent) handlePromote(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	err := a.onLeader(r.Context(), "/v1/promote", req, nil, func(n *consensus.Node) error {
		return n.Promote(req.Name, a.cfg.Voters, applyTimeout)
	})
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
	if err := a.remove(r.Context(), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"removed": true})
}

// handleLeave takes this node out of its cluster; it carries on as a fresh cluster of one, so
// it can connect elsewhere, as a node does after Node.disconnect.
func (a *Agent) handleLeave(w http.ResponseWriter, r *http.Request) {
	if len(a.Node().MemberNames()) <= 1 {
		httpjson.Error(w, http.StatusConflict, errors.New("this node is a cluster of one: there is nothing to leave"))
		return
	}
	a.leaving.Store(true)
	defer a.leaving.Store(false)
	if err := a.remove(r.Context(), a.self.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	if err := a.host.Change(func(l *ducks.State) { l.Synced, l.Acted = "", "" }); err != nil {
		a.log.Warn("forget the old cluster's rollout steps", "err", err)
	}
	if err := a.resetRaft(true); err != nil {
		httpjson.Error(w, http.StatusInternalServerError, fmt.Errorf("left the cluster, but could not restart as a cluster of one: %w; restart the node", err))
		return
	}
	httpjson.Write(w, map[string]bool{"left": true})
}
