// Package httpapi is the node's HTTP+JSON API: the routes the CLI calls and the routes the other
// nodes call, each handler reading its request, asking the part of the node that does the work,
// and answering with the status its error calls for. The parts are small interfaces (Cluster,
// Rollouts, Ducks, Output, Views), so that every handler is tested with httptest and fakes.
//
// No handler checks the cookie: the API's wire.Listener yields only connections that proved it,
// and answers every other client itself (a 401, then it closes the connection).
package httpapi

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/agent/membership"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/bundle"
	"github.com/duckraft/duckraft/runtime/supervise"
)

// Cluster is this node's place in its cluster; *membership.Membership does most of it.
type Cluster interface {
	Connect(ctx context.Context, addr string) error
	Join(ctx context.Context, m api.Member) error
	Register(ctx context.Context, m api.Member) error
	Promote(ctx context.Context, name string) error
	// SyncLog makes this node's copy of the log durable: the leader asks before it makes the
	// node a voter.
	SyncLog() error
	Remove(ctx context.Context, name string) error
	// Leave takes this node out; forget runs once it is out.
	Leave(ctx context.Context, forget func()) error
	// Place has the leader record (or drop) a peer's duck: e's op is place or unplace.
	Place(ctx context.Context, e api.Entry) error
	// APIAddr is where member name's API is, as the registry records it.
	APIAddr(name string) (string, bool)
	// Ping is how this node is (its Raft state, term, indexes).
	Ping() api.Ping
}

// Rollouts commits versions and steers the rollout, on the leader.
type Rollouts interface {
	Commit(ctx context.Context, req api.CommitRequest) (api.CommitResult, error)
	Act(ctx context.Context, req api.RolloutAction) (api.CommitResult, error)
	// Report has the leader commit a node's report (an entry whose op is "report").
	Report(ctx context.Context, e api.Entry) error
	// View is the rollout picture, caught up with the leader first (a read through any node
	// shows what an answer through another showed).
	View(ctx context.Context) api.RolloutView
	// Canaries asks the canaries of r how their ducks are, while r waits after its canary
	// wave for `rollout resume`; nil otherwise. Network calls: only on request.
	Canaries(r *rollout.Rollout) []api.CanaryCheck
	// Granted is the leader's word that it granted this node a turn (see api.Grant).
	Granted(g api.Grant)
	BenchCommit(ctx context.Context, req api.CommitBench) (api.CommitLatency, error)
}

// Ducks is what this node runs.
type Ducks interface {
	Load(ctx context.Context, data []byte, event func(api.Event)) error
	Spawn(ctx context.Context, req api.SpawnRequest) (api.DuckInfo, error)
	Stop(ctx context.Context, id string) error
	Restart(ctx context.Context, id string) error
	List() []api.DuckInfo
	// Version is the bundle ID the node's ducks run, "" before any load.
	Version() bundle.ID
	// Bundle is the kept bundle of version id.
	Bundle(id bundle.ID) ([]byte, error)
	// NoCode is the error for a node without code loaded.
	NoCode() error
	// ForgetRollouts forgets the turns taken and rollout ends caught up with, on leaving.
	ForgetRollouts() error
	// Record brings the log's record of this node's ducks up to date.
	Record()
	// Local is this node as `status` shows it.
	Local() api.Local
}

// Output is the ducks' output; *supervise.Supervisor is one.
type Output interface {
	Get(id string) (supervise.Status, bool)
	Recent(id string, n int) []supervise.Line
	Subscribe() (<-chan supervise.Line, func())
}

// Views answers for the whole cluster; *views.Views is one.
type Views interface {
	Members(ctx context.Context) ([]api.MemberStatus, error)
	Ducks(ctx context.Context) []api.DuckInfo
	Logs(w http.ResponseWriter, r *http.Request)
	ProxyLogs(w http.ResponseWriter, r *http.Request, on string)
	Status(ctx context.Context) (api.Status, error)
}

// Peers reaches the other nodes' APIs; *api.Client is one.
type Peers interface {
	Do(ctx context.Context, addr, method, path string, in, out any) error
}

// Service is the API of the node named Self.
type Service struct {
	Self     string
	Cluster  Cluster
	Rollouts Rollouts
	Ducks    Ducks
	Output   Output
	Views    Views
	Peers    Peers
	// Index is this node's state index (the last log entry its state holds); every answer
	// carries it (api.IndexHeader). Nil: answers carry none.
	Index  func() uint64
	Logger *slog.Logger
	// Stop is closed when the node stops: streams that follow output end then.
	Stop <-chan struct{}
}

func (h *Service) log() *slog.Logger { return cmp.Or(h.Logger, slog.Default()) }

// Handler serves the API (see routes).
func (h *Service) Handler() http.Handler { return h.routes() }

// member is where member name's API is, or a 404 that says where to look.
func (h *Service) member(name string) (string, error) {
	addr, ok := h.Cluster.APIAddr(name)
	if !ok {
		return "", &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("no member named %q: `members` lists them", name)}
	}
	return addr, nil
}

// routes is the API. Two audiences share it, and the routes are kept apart by who calls them:
// users (the CLI) and the other nodes of the cluster (forwarding to the leader, joining,
// reporting a rollout's progress). Both prove the cookie the same way; no handler checks it: the
// API's wire.Listener yields only connections that proved it, and answers every other client
// itself (a 401, then it closes the connection).
func (h *Service) routes() http.Handler {
	mux := http.NewServeMux()
	h.userRoutes(mux)
	h.peerRoutes(mux)
	if h.Index == nil {
		return mux
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(&indexWriter{ResponseWriter: w, index: h.Index}, r)
	})
}

// indexWriter stamps an answer with the state index of this node when the answer begins
// (api.IndexHeader): a write the leader answers is in its state by then, so the node that
// forwarded it knows how far to catch up before it answers its own client.
type indexWriter struct {
	http.ResponseWriter
	index func() uint64
	wrote bool
}

func (w *indexWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		w.Header().Set(api.IndexHeader, strconv.FormatUint(w.index(), 10))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *indexWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Flush keeps streamed answers (load, logs) flowing line by line.
func (w *indexWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *indexWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// userRoutes are what the CLI calls.
func (h *Service) userRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/members", h.handleMembers)
	mux.HandleFunc("POST /v1/connect", h.handleConnect)
	mux.HandleFunc("POST /v1/forget", h.handleForget)
	mux.HandleFunc("POST /v1/leave", h.handleLeave)
	mux.HandleFunc("POST /v1/load", h.handleLoad)
	mux.HandleFunc("POST /v1/spawn", h.handleSpawn)
	mux.HandleFunc("POST /v1/stop", h.handleStop)
	mux.HandleFunc("GET /v1/ducks", h.handleDucks)
	mux.HandleFunc("GET /v1/logs", h.handleLogs)
	mux.HandleFunc("POST /v1/deploy", h.handleDeploy)
	mux.HandleFunc("POST /v1/spread", h.handleSpread)
	mux.HandleFunc("GET /v1/rollout", h.handleRollout)
	mux.HandleFunc("POST /v1/rollout", h.handleRolloutAction)
	mux.HandleFunc("GET /v1/status", h.handleStatus)
	mux.HandleFunc("POST /v1/bench/commit", h.handleBenchCommit)
}

// peerRoutes are what nodes call on each other: a node asks another how it is, forwards a
// change to the leader, joins through a member, reports its part in a rollout. (The CLI's
// calls above are forwarded through some of them too: spawn --on, logs, deploy.)
func (h *Service) peerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/ping", h.handlePing)
	mux.HandleFunc("GET /v1/local", h.handleLocal)
	mux.HandleFunc("POST /v1/join", h.handleJoin)
	mux.HandleFunc("POST /v1/register", h.handleRegister)
	mux.HandleFunc("POST /v1/promote", h.handlePromote)
	mux.HandleFunc("POST /v1/sync-log", h.handleSyncLog)
	mux.HandleFunc("POST /v1/remove", h.handleRemove)
	mux.HandleFunc("POST /v1/place", h.handlePlace)
	mux.HandleFunc("POST /v1/commit", h.handleCommit)
	mux.HandleFunc("POST /v1/report", h.handleReport)
	mux.HandleFunc("POST /v1/granted", h.handleGranted)
}

// statusOf picks the HTTP status for an error, keeping one a forwarded call came back with.
func statusOf(err error) int {
	var ae *api.APIError
	switch {
	case errors.As(err, &ae):
		return ae.Status
	case errors.Is(err, membership.ErrNoLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrNotLeader):
		return http.StatusServiceUnavailable
	case errors.Is(err, membership.ErrNoMajorityLeft), errors.Is(err, membership.ErrNotConfigured):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func (h *Service) handlePing(w http.ResponseWriter, r *http.Request) {
	httpjson.Write(w, h.Cluster.Ping())
}

func (h *Service) handleMembers(w http.ResponseWriter, r *http.Request) {
	ms, err := h.Views.Members(r.Context())
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, ms)
}

func (h *Service) handleConnect(w http.ResponseWriter, r *http.Request) {
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
	if err := h.Cluster.Connect(ctx, req.Addr); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"connected": true})
}

func (h *Service) handleJoin(w http.ResponseWriter, r *http.Request) {
	var m api.Member
	if !httpjson.Decode(w, r, &m) {
		return
	}
	if m.Name == "" || m.RaftAddr == "" || m.APIAddr == "" {
		httpjson.Error(w, http.StatusBadRequest, errors.New("join needs the member's name, raft_addr and api_addr"))
		return
	}
	err := h.Cluster.Join(r.Context(), m)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	h.log().Info("member joined", "name", m.Name, "raft", m.RaftAddr, "api", m.APIAddr)
	httpjson.Write(w, map[string]bool{"joined": true})
}

func (h *Service) handleRegister(w http.ResponseWriter, r *http.Request) {
	var m api.Member
	if !httpjson.Decode(w, r, &m) {
		return
	}
	err := h.Cluster.Register(r.Context(), m)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"registered": true})
}

// handleForget removes a member that is gone for good. A live one is refused: it would keep
// campaigning with the configuration it has; it should leave itself.
func (h *Service) handleForget(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	ms, err := h.Views.Members(r.Context())
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
	if err := h.Cluster.Remove(r.Context(), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"forgotten": true})
}

func (h *Service) handlePromote(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	err := h.Cluster.Promote(r.Context(), req.Name)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"promoted": true})
}

func (h *Service) handleSyncLog(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if req.Name != h.Self {
		httpjson.Error(w, http.StatusConflict, fmt.Errorf("this node is %s, not %s: the registry's address for %s is out of date", h.Self, req.Name, req.Name))
		return
	}
	if err := h.Cluster.SyncLog(); err != nil {
		httpjson.Error(w, http.StatusInternalServerError, err)
		return
	}
	httpjson.Write(w, map[string]bool{"synced": true})
}

func (h *Service) handleRemove(w http.ResponseWriter, r *http.Request) {
	var req api.NameRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if err := h.Cluster.Remove(r.Context(), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"removed": true})
}

// handleLeave takes this node out of its cluster; it carries on as a fresh cluster of one, so
// it can connect elsewhere, as a node does after Node.disconnect.
func (h *Service) handleLeave(w http.ResponseWriter, r *http.Request) {
	err := h.Cluster.Leave(r.Context(), func() {
		if err := h.Ducks.ForgetRollouts(); err != nil {
			h.log().Warn("forget the old cluster's rollout steps", "err", err)
		}
	})
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"left": true})
}

// maxCommitBody fits the largest bundle, base64 encoded in JSON.
const maxCommitBody = bundle.MaxSize*4/3 + 64<<10

// handleDeploy takes a version and its rollout policy from the CLI (the same api.CommitRequest
// a node sends the leader), checks both, and has the leader commit it.
func (h *Service) handleDeploy(w http.ResponseWriter, r *http.Request) {
	var req api.CommitRequest
	if !httpjson.DecodeMax(w, r, &req, maxCommitBody) {
		return
	}
	if len(req.Bundle) > bundle.MaxSize {
		httpjson.Error(w, http.StatusRequestEntityTooLarge, tooLarge)
		return
	}
	if err := checkBundle(req.Bundle); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err)
		return
	}
	if err := req.Policy.Validate(); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err)
		return
	}
	h.answerCommit(w, r, req)
}

// answerCommit has the leader commit req and answers with the version, or why not.
func (h *Service) answerCommit(w http.ResponseWriter, r *http.Request, req api.CommitRequest) {
	res, err := h.Rollouts.Commit(r.Context(), req)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, res)
}

// tooLarge refuses a bundle past bundle.MaxSize.
var tooLarge = fmt.Errorf("bundle over the %d MiB limit: keep only the duck's own source in its folder", bundle.MaxSize>>20)

// readBundle reads a bundle body and refuses one that is oversized or does not unpack, before
// anything reaches the log.
func readBundle(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, bundle.MaxSize))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			httpjson.Error(w, http.StatusRequestEntityTooLarge, tooLarge)
		} else {
			httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("read bundle: %w", err))
		}
		return nil, false
	}
	if err := checkBundle(data); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err)
		return nil, false
	}
	return data, true
}

// checkBundle unpacks a bundle into a scratch folder, so that a corrupt or hostile one is
// refused with the reason instead of failing on every node later.
func checkBundle(data []byte) error {
	if len(data) == 0 {
		return errors.New("empty bundle: pack a folder with `load DIR` or `deploy DIR`")
	}
	tmp, err := os.MkdirTemp("", "duckraft-check-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := bundle.Extract(data, filepath.Join(tmp, "src")); err != nil {
		return fmt.Errorf("bundle refused: %w", err)
	}
	return nil
}

func (h *Service) handleCommit(w http.ResponseWriter, r *http.Request) {
	var req api.CommitRequest
	if !httpjson.DecodeMax(w, r, &req, maxCommitBody) {
		return
	}
	if err := checkBundle(req.Bundle); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err)
		return
	}
	h.answerCommit(w, r, req)
}

func (h *Service) handleRollout(w http.ResponseWriter, r *http.Request) {
	v := h.Rollouts.View(r.Context())
	if r.URL.Query().Get("canaries") != "" {
		v.Canaries = h.Rollouts.Canaries(v.Rollout)
	}
	httpjson.Write(w, v)
}

func (h *Service) handleRolloutAction(w http.ResponseWriter, r *http.Request) {
	var req api.RolloutAction
	if !httpjson.Decode(w, r, &req) {
		return
	}
	res, err := h.Rollouts.Act(r.Context(), req)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, res)
}

// handleReport applies a node's report about its part in a rollout; the leader stamps the time.
func (h *Service) handleReport(w http.ResponseWriter, r *http.Request) {
	var e api.Entry
	if !httpjson.Decode(w, r, &e) {
		return
	}
	if op := e.Op(); op != "report" {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("only reports go through /v1/report, not %q", op))
		return
	}
	if err := h.Rollouts.Report(r.Context(), e); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"reported": true})
}

// handleGranted takes the leader's word of a turn granted to this node; the node's follower
// decides what to do with it, so the answer only says it was heard.
func (h *Service) handleGranted(w http.ResponseWriter, r *http.Request) {
	var g api.Grant
	if !httpjson.Decode(w, r, &g) {
		return
	}
	if g.Rollout == nil || g.Index == 0 {
		httpjson.Error(w, http.StatusBadRequest, errors.New("a grant needs the rollout and the log index it stood at"))
		return
	}
	h.Rollouts.Granted(g)
	httpjson.Write(w, map[string]bool{"heard": true})
}

// handleLoad builds the bundle in the body and swaps every duck on this node to it, streaming
// its progress. A version that does not build, or a duck that does not come up on it, leaves
// every duck on the version it ran.
func (h *Service) handleLoad(w http.ResponseWriter, r *http.Request) {
	data, ok := readBundle(w, r)
	if !ok {
		return
	}
	// A load while a rollout is under way was reported done, then undone when the rollout ended
	// and the node caught up with the cluster (found by an outside probe).
	if v := h.Rollouts.View(r.Context()); v.Rollout.Active() {
		httpjson.Error(w, http.StatusConflict, fmt.Errorf("version %d is %s: a load on %s now would be undone when it ends (the node catches up with the cluster); wait for it (`watch`), or `rollout undo`", v.Rollout.Version, v.Rollout.State, h.Self))
		return
	}
	// The work goes on if the caller hangs up: stopping half-way would leave ducks on two versions.
	ctx := context.WithoutCancel(r.Context())
	s := httpjson.NewStreamer(w)
	if err := h.Ducks.Load(ctx, data, s.Event); err != nil {
		e := api.Event{Phase: "failed", Error: err.Error()}
		var ce *build.CompileError
		if errors.As(err, &ce) {
			e.Output = ce.Output
			e.Error = fmt.Sprintf("version %s does not compile; every duck here keeps running the version it had", api.LabelOf(ce.ID))
		}
		s.Event(e)
	}
}

var envVar = regexp.MustCompile(`^DUCK_[A-Z0-9_]+=`)

// reservedEnv are set by the supervisor; a caller overriding them would break the swap.
var reservedEnv = regexp.MustCompile(`^DUCK_(ADDR|VERSION|VERSION_FILE|PIDFILE|LIFELINE_FD|STATE_FILE|READY_TIMEOUT)=`)

func (h *Service) handleSpawn(w http.ResponseWriter, r *http.Request) {
	var req api.SpawnRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	for _, e := range req.Env {
		if !envVar.MatchString(e) || reservedEnv.MatchString(e) {
			httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("environment %q refused: a duck takes DUCK_* variables other than the ones the supervisor sets (e.g. DUCK_INTERVAL=200ms)", e))
			return
		}
	}
	if err := req.CheckAddr(); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err)
		return
	}
	if req.On != "" && req.On != h.Self {
		h.spawnElsewhere(w, r, req)
		return
	}
	if err := h.spawnBesideARollout(r.Context(), req); err != nil {
		httpjson.Error(w, http.StatusConflict, err)
		return
	}
	d, err := h.Ducks.Spawn(context.WithoutCancel(r.Context()), req)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	h.Ducks.Record() // so that every node lists it from now on
	httpjson.Write(w, d)
}

// spawnBesideARollout refuses a duck sent from another node (Node.spawn) at a version this node
// does not run while a rollout is under way: it would stay out of the rollout, and its undo
// would not take it back (found by an outside probe: after `rollout undo` said every node was
// back, a node ran a duck of the version undone; and a canary kept a duck of the version
// before after the rollout said it ran everywhere). Outside a rollout the duck runs the
// caller's version, as in Erlang.
func (h *Service) spawnBesideARollout(ctx context.Context, req api.SpawnRequest) error {
	if req.From == "" || req.Version == "" || req.Version == h.Ducks.Version() {
		return nil
	}
	v := h.Rollouts.View(ctx)
	if !v.Rollout.Active() {
		return nil
	}
	return fmt.Errorf("node %s runs %s and version %d is %s: a duck of %s sent from %s would stay out of that rollout (and of its undo); spawn it from %s itself (--addr), or once the rollout has ended",
		h.Self, api.LabelOf(h.Ducks.Version()), v.Rollout.Version, v.Rollout.State, api.LabelOf(req.Version), req.From, h.Self)
}

// spawnElsewhere is Node.spawn: the duck starts on another node, at the version this node runs.
func (h *Service) spawnElsewhere(w http.ResponseWriter, r *http.Request, req api.SpawnRequest) {
	addr, ok := h.Cluster.APIAddr(req.On)
	if !ok {
		httpjson.Error(w, http.StatusNotFound, fmt.Errorf("no member named %q: `members` lists them", req.On))
		return
	}
	version := h.Ducks.Version()
	if version == "" {
		httpjson.Error(w, http.StatusConflict, h.Ducks.NoCode())
		return
	}
	fwd := api.SpawnRequest{Addr: req.Addr, Env: req.Env, Version: version, From: h.Self}
	var d api.DuckInfo
	if err := h.Peers.Do(r.Context(), addr, http.MethodPost, "/v1/spawn", fwd, &d); err != nil {
		var ae *api.APIError
		if !errors.As(err, &ae) {
			err = fmt.Errorf("node %s is unreachable: %w", req.On, err)
		}
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, d)
}

func (h *Service) handleStop(w http.ResponseWriter, r *http.Request) {
	var req api.StopRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if req.On != "" && req.On != h.Self {
		addr, err := h.member(req.On)
		if err == nil {
			err = h.Peers.Do(r.Context(), addr, http.MethodPost, "/v1/stop", api.StopRequest{Name: req.Name, Restart: req.Restart}, nil)
		}
		if err != nil {
			httpjson.Error(w, statusOf(err), err)
			return
		}
		httpjson.Write(w, map[string]bool{"stopped": true})
		return
	}
	if req.Restart {
		if err := h.Ducks.Restart(context.WithoutCancel(r.Context()), req.Name); err != nil {
			httpjson.Error(w, statusOf(err), err)
			return
		}
		httpjson.Write(w, map[string]bool{"restarted": true})
		return
	}
	// The stop goes on if the caller hangs up: half-stopped, the duck would stay in local.json.
	if err := h.Ducks.Stop(context.WithoutCancel(r.Context()), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	h.Ducks.Record() // so that no node lists it any more
	httpjson.Write(w, map[string]bool{"stopped": true})
}

func (h *Service) handleDucks(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("scope") == "cluster" {
		httpjson.Write(w, h.Views.Ducks(r.Context()))
		return
	}
	httpjson.Write(w, h.Ducks.List())
}

// handleLogs streams a duck's (or every duck's) recent output, then, with follow=1, its live
// output until the caller hangs up or the duck is stopped.
func (h *Service) handleLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch on := q.Get("on"); {
	case on == "*":
		h.Views.Logs(w, r)
		return
	case on != "" && on != h.Self:
		h.Views.ProxyLogs(w, r, on)
		return
	}
	duck := q.Get("duck")
	n, err := strconv.Atoi(cmp.Or(q.Get("n"), "100"))
	if err != nil || n < 0 {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("n=%q is not a line count", q.Get("n")))
		return
	}
	if duck != "" {
		if _, ok := h.Output.Get(duck); !ok {
			httpjson.Error(w, http.StatusNotFound, fmt.Errorf("node %s runs no duck %q: `ducks` lists them", h.Self, duck))
			return
		}
	}
	follow := q.Get("follow") == "1"
	var live <-chan supervise.Line
	if follow {
		ch, cancel := h.Output.Subscribe()
		defer cancel()
		live = ch
	}
	s := httpjson.NewStreamer(w)
	for _, l := range h.Output.Recent(duck, n) {
		s.Send(logLine(h.Self, l))
	}
	if !follow {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.Stop:
			return
		case l := <-live:
			if duck == "" || l.Duck == duck {
				s.Send(logLine(h.Self, l))
			}
		case <-tick.C:
			if duck != "" {
				if _, ok := h.Output.Get(duck); !ok {
					return // stopped: the stream ends
				}
			}
		}
	}
}

// logLine is how the API shows a line a duck on node printed.
func logLine(node string, l supervise.Line) api.LogLine {
	return api.LogLine{Node: node, Duck: l.Duck, Version: api.Label(l.Version), Gen: l.Gen, Stream: l.Stream, Text: l.Text, Time: l.Time}
}

// handlePlace records a node's duck in the log (or drops it).
func (h *Service) handlePlace(w http.ResponseWriter, r *http.Request) {
	var e api.Entry
	if !httpjson.Decode(w, r, &e) {
		return
	}
	if op := e.Op(); op != "place" && op != "unplace" {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("only place and unplace go through /v1/place, not %q", op))
		return
	}
	if err := h.Cluster.Place(r.Context(), e); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"recorded": true})
}

// handleSpread commits the version loaded on this node to the whole cluster: Erlang's nl.
func (h *Service) handleSpread(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id := h.Ducks.Version()
	if id == "" {
		httpjson.Error(w, http.StatusConflict, h.Ducks.NoCode())
		return
	}
	data, err := h.Ducks.Bundle(id)
	if err != nil {
		httpjson.Error(w, http.StatusInternalServerError, fmt.Errorf("node %s runs %s but lost its bundle (%v): load its folder again", h.Self, api.LabelOf(id), err))
		return
	}
	h.answerCommit(w, r, api.CommitRequest{Bundle: data, Message: cmp.Or(q.Get("m"), "spread from "+h.Self), Author: q.Get("author"), NoRevert: q.Get("no_revert") == "1"})
}

func (h *Service) handleLocal(w http.ResponseWriter, r *http.Request) {
	httpjson.Write(w, h.Ducks.Local())
}

func (h *Service) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := h.Views.Status(r.Context())
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, st)
}

func (h *Service) handleBenchCommit(w http.ResponseWriter, r *http.Request) {
	var req api.CommitBench
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if req.N <= 0 || req.N > 10000 {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("n=%d: ask for 1 to 10000 commits", req.N))
		return
	}
	res, err := h.Rollouts.BenchCommit(r.Context(), req)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, res)
}
