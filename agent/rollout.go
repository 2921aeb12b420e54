package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/build"
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
				writeError(w, http.StatusBadRequest, fmt.Errorf("%s=%q is not a duration: use one such as 30s or 2m", name, v))
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
				writeError(w, http.StatusBadRequest, fmt.Errorf("%s=%q is not a whole number", name, v))
				return
			}
		}
	}
	if v := q.Get("auto_promote_after"); v != "" {
		var err error
		if req.Policy.AutoPromoteAfter, err = time.ParseDuration(v); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("auto_promote_after=%q is not a duration: use one such as 5m", v))
			return
		}
	}
	req.Policy.WaveBy = q.Get("wave_by")
	req.Policy.SameBinary = q.Get("same_binary") == "1"
	if err := req.Policy.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	a.answerCommit(w, r, req)
}

// answerCommit has the leader commit req and answers with the version, or why not.
func (a *Agent) answerCommit(w http.ResponseWriter, r *http.Request, req api.CommitRequest) {
	var res api.CommitResult
	err := a.onLeader(r.Context(), "/v1/commit", req, &res, func(n *consensus.Node) (err error) {
		res, err = a.commit(n, req)
		return err
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, res)
}

// readBundle reads a bundle body and refuses one that is oversized or does not unpack, before
// anything reaches the log.
func readBundle(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, bundle.MaxSize))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("bundle over the %d MiB limit: keep only the duck's own source in its folder", bundle.MaxSize>>20))
		} else {
			writeError(w, http.StatusBadRequest, fmt.Errorf("read bundle: %w", err))
		}
		return nil, false
	}
	if err := checkBundle(data); err != nil {
		writeError(w, http.StatusBadRequest, err)
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
	if !decodeMax(w, r, &req, maxCommitBody) {
		return
	}
	if err := checkBundle(req.Bundle); err != nil {
		writeError(w, http.StatusBadRequest, err)
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

func (a *Agent) handleRollout(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.rolloutView()) }

func (a *Agent) handleRolloutAction(w http.ResponseWriter, r *http.Request) {
	var req api.RolloutAction
	if !decode(w, r, &req) {
		return
	}
	var res api.CommitResult
	err := a.onLeader(r.Context(), "/v1/rollout", req, &res, func(n *consensus.Node) (err error) {
		res, err = a.rolloutAction(n, req)
		return err
	})
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, res)
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
	if !decode(w, r, &c) {
		return
	}
	if c.Op != consensus.OpReport {
		writeError(w, http.StatusBadRequest, fmt.Errorf("only reports go through /v1/report, not %q", c.Op))
		return
	}
	if err := a.onLeader(r.Context(), "/v1/report", c, nil, func(n *consensus.Node) error { return a.applyReport(n, c) }); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, map[string]bool{"reported": true})
}

func (a *Agent) applyReport(n *consensus.Node, c consensus.Command) error {
	c.Time = time.Now().UTC()
	err := n.Apply(c, applyTimeout)
	if errors.Is(err, consensus.ErrRefused) {
		return &api.APIError{Status: http.StatusConflict, Message: err.Error()}
	}
	return err
}

// report sends this node's progress to the leader, retrying through elections: a lost report
// would stall the rollout until the swap timeout. It says whether the log took it: false when the
// leader refused it (the rollout moved on) or the agent is stopping.
func (a *Agent) report(n int, phase rollout.Phase, msg string) bool {
	return a.sendReport(consensus.Command{Op: consensus.OpReport, N: n, Name: a.self.Name, Phase: phase, Error: msg})
}

// reportBuilt says this node built rollout n's target, with what its build made and what the
// binaries say of the state (st may be nil).
func (a *Agent) reportBuilt(n int, b rollout.BuildInfo, st *rollout.StateInfo) bool {
	return a.sendReport(consensus.Command{Op: consensus.OpReport, N: n, Name: a.self.Name, Phase: rollout.Built, Build: &b, States: st})
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

func (a *Agent) sendReport(c consensus.Command) bool {
	phase := c.Phase
	for attempt := 0; ; attempt++ {
		if a.ctx.Err() != nil {
			return false // stopping: a stop is not a failure to report
		}
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		err := a.onLeader(ctx, "/v1/report", c, nil, func(n *consensus.Node) error { return a.applyReport(n, c) })
		cancel()
		var ae *api.APIError
		switch {
		case err == nil:
			return true
		case errors.As(err, &ae) && ae.Status == http.StatusConflict:
			a.log.Info("report not taken", "phase", phase, "reason", err)
			return false
		}
		a.log.Warn("report", "phase", phase, "attempt", attempt, "err", err)
		select {
		case <-a.ctx.Done():
			return false
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// nextRound waits for the rollout loops' next look at the log: woken by the log (a grant, a
// report) at once, while the ticker catches what the log does not announce (timeouts, a leader
// change, a Raft reset on connect). False once the agent stops.
func (a *Agent) nextRound(t *time.Ticker) bool {
	select {
	case <-a.stop:
		return false
	case <-t.C:
	case <-a.Node().Changed():
	}
	return true
}

// driveRollouts is the leader's loop: it commits whatever Rollout.Next says, with Raft's view
// of which members it still reaches. Only the leader acts, and since the next step is a
// function of the log and that view alone, a new leader continues where the old one stopped.
func (a *Agent) driveRollouts() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for a.nextRound(t) {
		n := a.Node()
		if !n.IsLeader() {
			continue
		}
		r := n.Rollout()
		if !r.Active() {
			continue
		}
		now := time.Now().UTC()
		steps := r.Steps(now, n.Silence(), maxSteps)
		if len(steps) == 0 {
			continue
		}
		if err := n.Apply(consensus.StepsCommand(r, steps, now), applyTimeout); err != nil {
			a.log.Warn("rollout steps", "first", steps[0].Why, "steps", len(steps), "err", err)
			continue
		}
		for _, step := range steps {
			a.log.Info("rollout", "version", r.Version, "step", step.Op, "node", step.Node, "phase", step.Phase, "state", step.State, "why", step.Message)
		}
	}
}

// maxSteps bounds the leader's moves committed in one log entry (a wave's grants, skips): a
// hundred steps make an entry of about 20 kB.
const maxSteps = 100

// follower is this node's side of rollouts.
type follower struct {
	mu       sync.Mutex
	building map[int]bool // rollouts whose target this process has started building
	busy     bool         // a turn or catch-up is running
	retryAt  time.Time    // a failed catch-up is not tried again before this
	// upTo is the leader's state index when asked at askedAt (0: no leader answered).
	upTo    uint64
	askedAt time.Time
}

// followRollouts is every node's loop: build what was committed, take its turn when granted,
// catch up with the cluster once a rollout has ended. What to do is rollout.Follow's decision;
// this loop only carries it out.
func (a *Agent) followRollouts() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for a.nextRound(t) {
		r := a.Node().Rollout()
		if r == nil {
			continue
		}
		a.fol.mu.Lock()
		building := a.fol.building[r.Version]
		a.fol.mu.Unlock()
		if r.NeedsBuild(a.self.Name, building) {
			a.prebuild(r)
		}
		a.fol.mu.Lock()
		busy := a.fol.busy
		a.fol.mu.Unlock()
		if busy {
			// One duty at a time: a turn under way changes what this node runs, so what to do
			// next is decided once it is over (deciding now marked a node synced on the
			// version it was leaving).
			continue
		}
		l := a.snapshotLocal()
		duty := r.Follow(a.self.Name, rollout.Local{Have: l.Version, Acted: l.Acted, Synced: l.Synced})
		if duty.Kind == rollout.Idle {
			continue
		}
		// A duty is acted on only once this node has the whole log. A restarted node replays
		// it, and the states it passes through are history: a turn it took long ago looks like
		// a turn under way (swapped a duck back to version 1, found by
		// TestLeaderKilledWhileCommitting once followers learnt commits 50 ms later), and what
		// the cluster settled on is known only at the end.
		if !a.caughtUp() {
			continue
		}
		switch duty.Kind {
		case rollout.Turn:
			a.turn(r, duty)
		case rollout.Report:
			a.reportAgain(r, duty, l.Version)
		case rollout.CatchUp:
			a.catchUp(r, duty)
		case rollout.MarkSynced:
			a.setSynced(duty.Key)
		}
	}
}

// caughtUp reports whether this node's FSM has applied every command the leader's had when last
// asked (at most a second ago). A restarted node replays the log in batches, and Raft's own
// applied index runs ahead of the FSM: catching up with the rollout it found halfway swapped
// ducks to a version the log had already moved past (found by TestLeaderKilledWhileCommitting).
// The mark is the leader's FSM index, not Raft's commit index, which counts configuration
// entries that never reach an FSM: a node that joined last would wait for ever. The leader is
// asked once a second, not at every look, so a node is not left behind by a leader that keeps
// committing.
func (a *Agent) caughtUp() bool {
	n := a.Node()
	if n.IsLeader() {
		return true
	}
	a.fol.mu.Lock()
	target, asked := a.fol.upTo, a.fol.askedAt
	a.fol.mu.Unlock()
	if time.Since(asked) > time.Second {
		target = 0
		name, _ := n.Leader()
		if m, ok := n.State().Members[name]; ok && name != "" {
			ctx, cancel := context.WithTimeout(a.ctx, probeTimeout)
			var p api.Ping
			if err := a.client.Do(ctx, m.APIAddr, http.MethodGet, "/v1/ping", nil, &p); err == nil && p.Name == name {
				target = max(p.StateIndex, 1)
			}
			cancel()
		}
		a.fol.mu.Lock()
		a.fol.upTo, a.fol.askedAt = target, time.Now()
		a.fol.mu.Unlock()
	}
	return target > 0 && n.Index() >= target
}

// prebuild starts building the rollout's target at once, so that the rollout waits on swaps, not
// builds. A version that does not build fails the rollout before any node swaps.
func (a *Agent) prebuild(r *rollout.Rollout) {
	a.fol.mu.Lock()
	if a.fol.building[r.Version] {
		a.fol.mu.Unlock()
		return
	}
	a.fol.building[r.Version] = true
	a.fol.mu.Unlock()
	// The first node in the order starts at once and every other one a moment later, so that the
	// first takes the host's build slot and the others its result.
	stagger := time.Duration(min(slices.Index(r.Order, a.self.Name), 1)) * 100 * time.Millisecond
	deadline := r.Started.Add(r.Policy.WithDefaults().BuildDeadline)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		// Building is said while the build runs, not before it starts: a hundred nodes saying it
		// at once waited up to 0.8 s for the leader. What this node says next waits for it, so
		// that the leader hears the two in order.
		said := make(chan struct{})
		go func() {
			defer close(said)
			a.report(r.Version, rollout.Building, "")
		}()
		defer func() { <-said }()
		select {
		case <-time.After(stagger):
		case <-a.ctx.Done():
			return
		}
		// Past the build deadline the leader fails the rollout anyway; a build that hangs must
		// not hold this node's one build slot for longer.
		ctx, cancel := context.WithDeadline(a.ctx, deadline)
		defer cancel()
		err := a.fetchAndBuild(ctx, r.Target)
		if a.ctx.Err() != nil {
			return
		}
		<-said
		if err != nil {
			a.report(r.Version, rollout.Failed, buildFailure(err))
			return
		}
		info, err := a.buildInfo(ctx, r.Target)
		if err != nil {
			a.log.Warn("what the build made", "version", r.Version, "err", err)
			a.report(r.Version, rollout.Built, "")
			return
		}
		a.reportBuilt(r.Version, info, a.stateInfo(ctx, r))
	}()
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

// buildFailure is a build error as the rollout records it: the compiler's words verbatim.
func buildFailure(err error) string {
	var ce *build.CompileError
	if errors.As(err, &ce) {
		return "does not compile:\n" + ce.Output
	}
	return err.Error()
}

// fetchAndBuild keeps the version's bundle from the log and builds it.
func (a *Agent) fetchAndBuild(ctx context.Context, id string) error {
	if err := a.keepCommitted(id); err != nil {
		return err
	}
	_, err := a.binary(ctx, id)
	return err
}

// keepCommitted copies a committed version's bundle from the state into the data folder.
func (a *Agent) keepCommitted(id string) error {
	if _, err := os.Stat(a.bundlePath(id)); err == nil {
		return nil
	}
	for _, v := range a.Node().State().Versions {
		if v.ID == id && len(v.Bundle) > 0 {
			return a.keepBundle(id, v.Bundle)
		}
	}
	return fmt.Errorf("node %s does not have version %s and the log no longer keeps its bundle: deploy it again", a.self.Name, api.Label(id))
}

// turn swaps every duck here to the duty's version because the leader granted it, and reports
// the outcome.
func (a *Agent) turn(r *rollout.Rollout, duty rollout.Duty) {
	if !a.claim() {
		return
	}
	me := r.Nodes[a.self.Name]
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.release()
		if duty.Success == rollout.Running && me.Phase == rollout.Granted {
			if !a.report(r.Version, rollout.Swapping, "") {
				// The leader did not take the start of the turn (the rollout moved on, or this
				// agent is stopping): no swap without it.
				if a.ctx.Err() == nil {
					a.setActed(duty.Key)
				}
				return
			}
		}
		p := r.Policy.WithDefaults()
		ctx, cancel := context.WithTimeout(a.ctx, p.ProgressDeadline)
		defer cancel()
		err := a.keepCommitted(duty.Version)
		if err == nil {
			err = a.switchTo(ctx, duty.Version, p.Healthy, a.logEvent)
		}
		if a.ctx.Err() != nil {
			// Stopping is not the version's fault: report nothing and leave the turn open, so
			// the restarted agent takes it again.
			return
		}
		a.setActed(duty.Key)
		if err != nil {
			a.log.Error("rollout turn failed", "version", r.Version, "err", err)
			if duty.Success == rollout.Running {
				a.report(r.Version, rollout.Failed, buildFailure(err))
			} else {
				a.report(r.Version, duty.Success, "could not go back: "+err.Error())
			}
			return
		}
		a.report(r.Version, duty.Success, "")
	}()
}

// reportAgain says once more how a turn that ended here went: its report went down with the
// process that sent it.
func (a *Agent) reportAgain(r *rollout.Rollout, duty rollout.Duty, have string) {
	if !a.claim() {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.release()
		msg := ""
		if have != duty.Version {
			msg = "the swap did not complete: its agent stopped before it could report, and the ducks run what they ran"
			if duty.Success == rollout.Reverted {
				msg = "could not go back: " + msg
			}
		}
		a.log.Info("reporting a turn again", "version", r.Version, "phase", duty.Success)
		a.report(r.Version, duty.Success, msg)
	}()
}

// catchUp brings a node that was away (skipped, down during a commit, joined later) to the
// version the cluster settled on, once the rollout has ended. It acts once per rollout end, so a
// version loaded by hand on this node stays until the cluster moves on.
func (a *Agent) catchUp(r *rollout.Rollout, duty rollout.Duty) {
	a.fol.mu.Lock()
	wait := time.Now().Before(a.fol.retryAt)
	a.fol.mu.Unlock()
	if wait || !a.claim() {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer a.release()
		p := r.Policy.WithDefaults()
		ctx, cancel := context.WithTimeout(a.ctx, p.BuildDeadline+p.ProgressDeadline)
		defer cancel()
		a.log.Info("catching up with the cluster", "version", r.Version, "to", api.Label(duty.Version))
		err := a.keepCommitted(duty.Version)
		if err == nil {
			err = a.switchTo(ctx, duty.Version, p.Healthy, a.logEvent)
		}
		if err != nil {
			if a.ctx.Err() == nil {
				a.log.Error("catch up failed; will retry in 5s", "err", err)
				a.fol.mu.Lock()
				a.fol.retryAt = time.Now().Add(5 * time.Second)
				a.fol.mu.Unlock()
			}
			return
		}
		a.setSynced(duty.Key)
	}()
}

func (a *Agent) setActed(key string) {
	if err := a.changeLocal(func(l *localState) { l.Acted = key }); err != nil {
		a.log.Error("save local state", "err", err)
	}
}

func (a *Agent) setSynced(key string) {
	if err := a.changeLocal(func(l *localState) { l.Synced = key }); err != nil {
		a.log.Error("save local state", "err", err)
	}
}
func (a *Agent) claim() bool {
	a.fol.mu.Lock()
	defer a.fol.mu.Unlock()
	if a.fol.busy {
		return false
	}
	a.fol.busy = true
	return true
}

func (a *Agent) release() {
	a.fol.mu.Lock()
	a.fol.busy = false
	a.fol.mu.Unlock()
}

func (a *Agent) logEvent(e api.Event) {
	a.log.Info("swap", "phase", e.Phase, "duck", e.Duck, "version", e.Version, "msg", e.Message)
}
