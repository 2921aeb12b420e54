package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// This file is the rolling upgrade: `deploy` commits a version through the log; the leader's
// driver grants one node at a time in the order the log fixed; every node's follower builds the
// version as soon as it is committed, swaps its ducks when granted, and reports through the log.
// The FSM only records; these two loops act on what it records.

// maxCommitBody fits the largest bundle, base64 encoded in JSON.
const maxCommitBody = bundle.MaxSize*4/3 + 64<<10

// handleDeploy takes a bundle from the CLI, checks it, and has the leader commit it.
func (a *Agent) handleDeploy(w http.ResponseWriter, r *http.Request) {
	data, ok := readBundle(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	req := api.CommitRequest{Bundle: data, Message: q.Get("m"), Author: q.Get("author"), Canary: q.Get("canary") == "1", NoRevert: q.Get("no_revert") == "1"}
	for name, d := range map[string]*time.Duration{
		"start_deadline": &req.Policy.StartDeadline, "build_deadline": &req.Policy.BuildDeadline,
		"progress_deadline": &req.Policy.ProgressDeadline, "healthy": &req.Policy.Healthy, "down_after": &req.Policy.DownAfter,
	} {
		if v := q.Get(name); v != "" {
			var err error
			if *d, err = time.ParseDuration(v); err != nil {
				httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("%s=%q is not a duration: use one such as 30s or 2m", name, v))
				return
			}
		}
	}
	for name, n := range map[string]*int{
		"max_parallel": &req.Policy.MaxParallel, "max_parallel_percent": &req.Policy.MaxParallelPercent,
		"canaries": &req.Policy.Canaries, "failure_budget": &req.Policy.FailureBudget,
	} {
		if v := q.Get(name); v != "" {
			var err error
			if *n, err = strconv.Atoi(v); err != nil {
				httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("%s=%q is not a whole number", name, v))
				return
			}
		}
	}
	if v := q.Get("auto_promote_after"); v != "" {
		var err error
		if req.Policy.AutoPromoteAfter, err = time.ParseDuration(v); err != nil {
			httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("auto_promote_after=%q is not a duration: use one such as 5m", v))
			return
		}
	}
	req.Policy.WaveBy = q.Get("wave_by")
	req.Policy.SameBinary = q.Get("same_binary") == "1"
	if err := req.Policy.Validate(); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err)
		return
	}
	a.answerCommit(w, r, req)
}

// answerCommit has the leader commit req and answers with the version, or why not.
func (a *Agent) answerCommit(w http.ResponseWriter, r *http.Request, req api.CommitRequest) {
	var res api.CommitResult
	err := a.mem.OnLeader(r.Context(), "/v1/commit", req, &res, func(n *consensus.Node) (err error) {
		res, err = a.commit(n, req)
		return err
	})
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, res)
}

// readBundle reads a bundle body and refuses one that is oversized or does not unpack, before
// anything reaches the log.
func readBundle(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, bundle.MaxSize))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			httpjson.Error(w, http.StatusRequestEntityTooLarge, fmt.Errorf("bundle over the %d MiB limit: keep only the duck's own source in its folder", bundle.MaxSize>>20))
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

func (a *Agent) handleCommit(w http.ResponseWriter, r *http.Request) {
	var req api.CommitRequest
	if !httpjson.DecodeMax(w, r, &req, maxCommitBody) {
		return
	}
	if err := checkBundle(req.Bundle); err != nil {
		httpjson.Error(w, http.StatusBadRequest, err)
		return
	}
	a.answerCommit(w, r, req)
}

func (a *Agent) commit(n *consensus.Node, req api.CommitRequest) (api.CommitResult, error) {
	id := bundle.Sum(req.Bundle)
	// The fault suite kills a leader on this line, so that it dies with the commit in flight.
	a.log.Info("committing version", "id", api.Label(id))
	err := n.Apply(consensus.Command{
		Op: consensus.OpCommit, Time: time.Now().UTC(), Canary: req.Canary, NoRevert: req.NoRevert, Policy: &req.Policy,
		Version: &consensus.Version{ID: id, Message: req.Message, Author: req.Author, Bundle: req.Bundle},
	}, applyTimeout)
	if err != nil {
		// A refusal (the same version, another still rolling out) is the caller's to fix; a
		// lost leader or a timeout goes back to onLeader, which tries the next leader.
		if errors.Is(err, consensus.ErrRefused) {
			return api.CommitResult{}, &api.APIError{Status: http.StatusConflict, Message: err.Error()}
		}
		return api.CommitResult{}, err
	}
	r := n.Rollout()
	a.log.Info("committed version", "n", r.Version, "id", api.Label(id), "order", r.Order)
	return api.CommitResult{N: r.Version, ID: id}, nil
}

func (a *Agent) rolloutView() api.RolloutView {
	n := a.Node()
	st := n.State()
	leader, _ := n.Leader()
	v := api.RolloutView{Leader: leader, Rollout: st.Rollout, Past: st.Past, Versions: []api.VersionInfo{}}
	for _, ver := range st.Versions {
		v.Versions = append(v.Versions, api.VersionInfo{N: ver.N, ID: ver.ID, Message: ver.Message, Author: ver.Author, Committed: ver.Committed})
	}
	return v
}

func (a *Agent) handleRollout(w http.ResponseWriter, r *http.Request) {
	httpjson.Write(w, a.rolloutView())
}

func (a *Agent) handleRolloutAction(w http.ResponseWriter, r *http.Request) {
	var req api.RolloutAction
	if !httpjson.Decode(w, r, &req) {
		return
	}
	var res api.CommitResult
	err := a.mem.OnLeader(r.Context(), "/v1/rollout", req, &res, func(n *consensus.Node) (err error) {
		res, err = a.rolloutAction(n, req)
		return err
	})
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, res)
}

func (a *Agent) rolloutAction(n *consensus.Node, req api.RolloutAction) (api.CommitResult, error) {
	r := n.Rollout()
	if r == nil {
		return api.CommitResult{}, &api.APIError{Status: http.StatusConflict, Message: "nothing has been deployed yet"}
	}
	var state rollout.State
	switch req.Action {
	case "pause":
		state = rollout.Paused
	case "resume":
		state = rollout.Rolling
	case "undo":
		if req.To != 0 {
			// Going back to any kept version is a new rollout of its bundle.
			v, ok := n.Version(req.To)
			if !ok || len(v.Bundle) == 0 {
				return api.CommitResult{}, &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("version %d is not kept any more (the log keeps the newest bundles): deploy its source again", req.To)}
			}
			return a.commit(n, api.CommitRequest{Bundle: v.Bundle, Message: fmt.Sprintf("undo to version %d", req.To), Author: "rollout undo"})
		}
		state = rollout.GoingBack
	default:
		return api.CommitResult{}, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("unknown rollout action %q: pause, resume or undo", req.Action)}
	}
	err := n.Apply(consensus.Command{Op: consensus.OpRolloutState, N: r.Version, State: state, Reason: req.Action + " by hand", Time: time.Now().UTC()}, applyTimeout)
	if errors.Is(err, consensus.ErrRefused) {
		return api.CommitResult{}, &api.APIError{Status: http.StatusConflict, Message: err.Error()}
	}
	if err != nil {
		return api.CommitResult{}, err
	}
	return api.CommitResult{N: r.Version, ID: r.Target}, nil
}

// handleReport applies a node's report about its part in a rollout; the leader stamps the time.
func (a *Agent) handleReport(w http.ResponseWriter, r *http.Request) {
	var c consensus.Command
	if !httpjson.Decode(w, r, &c) {
		return
	}
	if c.Op != consensus.OpReport {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("only reports go through /v1/report, not %q", c.Op))
		return
	}
	if err := a.mem.OnLeader(r.Context(), "/v1/report", c, nil, func(n *consensus.Node) error { return a.applyReport(n, c) }); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, map[string]bool{"reported": true})
}

func (a *Agent) applyReport(n *consensus.Node, c consensus.Command) error {
	c.Time = time.Now().UTC()
	err := n.Apply(c, applyTimeout)
	if errors.Is(err, consensus.ErrRefused) {
		return &api.APIError{Status: http.StatusConflict, Message: err.Error()}
	}
	return err
}

// stateInfo asks the target's binary and the previous version's what they say of the ducks'
// state, so the leader can refuse a version that could not go back before anything swaps. Nil
// when either cannot say (no previous version here, a duck that does not use the SDK).
func (a *Agent) stateInfo(ctx context.Context, r *rollout.Rollout) *rollout.StateInfo {
	if r.FromID == "" {
		return nil
	}
	if _, ok := a.builder.Binary(r.FromID); !ok {
		return nil
	}
	var cred *syscall.Credential
	if a.cfg.DuckUser != nil {
		cred = a.cfg.DuckUser.Credential()
	}
	dt, err := a.builder.Describe(ctx, r.Target, cred)
	if err != nil {
		a.log.Info("the new version says nothing of its state", "err", err)
		return nil
	}
	df, err := a.builder.Describe(ctx, r.FromID, cred)
	if err != nil {
		a.log.Info("the previous version says nothing of its state", "err", err)
		return nil
	}
	return &rollout.StateInfo{Schema: dt.Schema, Downgrades: dt.Downgrades, FromSchema: df.Schema}
}

// buildInfo is the sum of the binary built for id and the toolchain that built it.
func (a *Agent) buildInfo(ctx context.Context, id string) (rollout.BuildInfo, error) {
	tc, err := a.builder.Toolchain(ctx)
	if err != nil {
		return rollout.BuildInfo{}, err
	}
	sum, err := a.builder.Sum(id)
	return rollout.BuildInfo{Sum: sum, Toolchain: tc}, err
}

// fetchAndBuild keeps the version's bundle from the log and builds it.
func (a *Agent) fetchAndBuild(ctx context.Context, id string) error {
	if err := a.host.KeepCommitted(id); err != nil {
		return err
	}
	_, err := a.host.Binary(ctx, id)
	return err
}

func (a *Agent) logEvent(e api.Event) {
	a.log.Info("swap", "phase", e.Phase, "duck", e.Duck, "version", e.Version, "msg", e.Message)
}
