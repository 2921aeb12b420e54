package agent

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// This file is the rolling upgrade: `deploy` commits a version through the log; the leader's
// driver grants one node at a time in the order the log fixed; every node's follower builds the
// version as soon as it is committed, swaps its ducks when granted, and reports through the log.
// The FSM only records; these two loops act on what it records.

func (a *Agent) commit(n *consensus.Node, req api.CommitRequest) (api.CommitResult, error) {
	id := bundle.Sum(req.Bundle)
	if err := waveLabelKnown(req.Policy.WaveBy, n.Members()); err != nil {
		return api.CommitResult{}, err
	}
	if len(req.Message) > maxMessage || len(req.Author) > maxMessage {
		// Every node keeps it in the log and prints it in every history (a 120,000-character
		// message went in whole; found by trying it).
		return api.CommitResult{}, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("the version's message (or author) is %d bytes: at most %d, as a commit message's summary is; put the rest in the source", max(len(req.Message), len(req.Author)), maxMessage)}
	}
	if c, all := req.Policy.Canaries, len(n.MemberNames()); all > 1 && c >= all {
		// Every node a canary leaves none to wait for the word: the rollout ended done at once,
		// without the pause --canary promises (found by trying it).
		return api.CommitResult{}, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("--canary %d: the cluster has %d nodes, so no node would wait for 'rollout resume'; give fewer canaries, or deploy without --canary", c, all)}
	}
	if r := n.Rollout(); r.Active() && r.Target == id {
		// The log takes it as a retry and changes nothing. The same request again (this
		// call's own commit before a leader change) was committed; any other (another
		// message, another policy) hears that nothing new was: its flags were dropped.
		v, _ := n.Version(r.Version)
		same := v.Message == req.Message && v.Author == req.Author && r.Policy == req.Policy.WithCanary(req.Canary) && r.AutoRevert == !req.NoRevert
		return api.CommitResult{N: r.Version, ID: id, Already: !same}, nil
	}
	// The fault suite kills a leader on this line, so that it dies with the commit in flight.
	a.log.Info("committing version", "id", api.LabelOf(id))
	err := n.Apply(consensus.Commit{
		Time: time.Now().UTC(), Canary: req.Canary, NoRevert: req.NoRevert, Policy: req.Policy,
		Version: consensus.Version{ID: id, Message: req.Message, Author: req.Author, Bundle: req.Bundle},
	}, applyTimeout)
	if err != nil {
		// A refusal (the same version, another still rolling out) is the caller's to fix; a
		// lost leader or a timeout goes back to OnLeader, which tries the next leader.
		return api.CommitResult{}, refusal(err)
	}
	r := n.Rollout()
	a.log.Info("committed version", "n", r.Version, "id", api.LabelOf(id), "order", r.Order)
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

// checkCanaries asks each canary of r how its ducks are, while r waits after its canary wave and
// no later wave has begun; nil otherwise. A canary's duck that crash-loops once its healthy wait
// is over was seen only in `status`'s DUCKS column, and `rollout resume` spread it.
func (a *Agent) checkCanaries(r *rollout.Rollout) []api.CanaryCheck {
	if r == nil || !r.Canary || r.State != rollout.Paused {
		return nil
	}
	for _, name := range r.Order {
		if nr := r.Nodes[name]; nr.Wave != 0 && !nr.Granted.IsZero() {
			return nil // past the canaries: this pause is another's
		}
	}
	canaries := r.RanCanaries()
	out := make([]api.CanaryCheck, len(canaries))
	var wg sync.WaitGroup
	for i, name := range canaries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			why, err := a.canaryHealth(name, time.Since(r.Nodes[name].Done))
			out[i] = api.CanaryCheck{Node: name, Healthy: err == nil && why == "", Unknown: err != nil, Why: why}
			if err != nil {
				out[i].Why = err.Error()
			}
		}()
	}
	wg.Wait()
	return out
}

// wayBack refuses to send r back when a node that runs its target says its state cannot reach
// the previous version's layout: every turn back would fail and leave its node where it is (a
// plain undo after a --no-revert rollout across a schema change tried, failed on every node,
// and was reported as gone back).
func wayBack(r *rollout.Rollout) error {
	for _, name := range r.OnTarget() {
		if st := r.Nodes[name].State; st != nil && !st.WayBack() {
			return &api.APIError{Status: http.StatusConflict, Message: st.NoWayBack(r.Version, r.From) +
				fmt.Sprintf(": going back would fail on every node that runs it and leave the ducks there; deploy a version that takes over their state, or `rollout undo --force` to try anyway (version %d's Migrate may read the newer state)", r.From)}
		}
	}
	return nil
}

// canariesVerdict refuses a resume past canaries that are not healthy, or cannot say.
func canariesVerdict(checks []api.CanaryCheck) error {
	for _, c := range checks {
		switch {
		case c.Unknown:
			return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("cannot tell whether canary %s is healthy (%s): try again in a moment, `rollout undo` to go back, or `rollout resume --force` to carry on without knowing", c.Node, c.Why)}
		case !c.Healthy:
			return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("canary %s is not healthy: %s; `logs --on %s` shows its ducks' output, `rollout undo` goes back, `rollout resume --force` carries on anyway", c.Node, c.Why, c.Node)}
		}
	}
	return nil
}

func (a *Agent) rolloutAction(n *consensus.Node, req api.RolloutAction) (api.CommitResult, error) {
	r := n.Rollout()
	if r == nil {
		return api.CommitResult{}, &api.APIError{Status: http.StatusConflict, Message: "nothing has been deployed yet"}
	}
	var state rollout.State
	if req.Wave && req.Action != "pause" && req.Action != "resume" {
		return api.CommitResult{}, &api.APIError{Status: http.StatusBadRequest, Message: "wave by wave, a rollout pauses or resumes; undo goes back a wave at a time by itself"}
	}
	switch req.Action {
	case "pause":
		state = rollout.Paused
	case "resume":
		state = rollout.Rolling
		if !req.Force {
			if err := canariesVerdict(a.checkCanaries(r)); err != nil {
				return api.CommitResult{}, err
			}
		}
	case "undo":
		if req.To != 0 {
			// Going back to any kept version is a new rollout of its bundle.
			if vs := n.Versions(); req.To < 0 || len(vs) == 0 || req.To > vs[len(vs)-1].N {
				newest := "none has been"
				if len(vs) > 0 {
					newest = fmt.Sprintf("the newest is %d", vs[len(vs)-1].N)
				}
				return api.CommitResult{}, &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("there is no version %d: %s committed ('rollout history' lists them)", req.To, newest)}
			}
			v, ok := n.Version(req.To)
			if !ok || len(v.Bundle) == 0 {
				return api.CommitResult{}, &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("version %d is not kept any more (the log keeps the source of the newest five versions and of the last three that rolled out everywhere): deploy its source again", req.To)}
			}
			return a.commit(n, api.CommitRequest{Bundle: v.Bundle, Message: fmt.Sprintf("undo to version %d", req.To), Author: "rollout undo", NoRevert: req.NoRevert})
		}
		state = rollout.GoingBack
		if !req.Force {
			if err := wayBack(r); err != nil {
				return api.CommitResult{}, err
			}
		}
	default:
		return api.CommitResult{}, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("unknown rollout action %q: pause, resume or undo", req.Action)}
	}
	var ch consensus.Change = consensus.SetState{N: r.Version, State: state, Reason: req.Action + " by hand", Time: time.Now().UTC()}
	if req.Wave {
		ch = consensus.WaveState{N: r.Version, State: state, Time: time.Now().UTC()}
	}
	err := n.Apply(ch, applyTimeout)
	if err != nil {
		return api.CommitResult{}, refusal(err)
	}
	return api.CommitResult{N: r.Version, ID: r.Target}, nil
}

func (a *Agent) applyReport(n *consensus.Node, c consensus.Report) error {
	c.Time = time.Now().UTC()
	if c.Build == nil && a.drive.EndTurn(c.N, c.Node, c.Phase, c.Error) {
		return nil // committed by the driver's round, with the grants it freed
	}
	return refusal(n.Apply(c, applyTimeout))
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
	return &rollout.StateInfo{Schema: dt.Schema, Downgrades: dt.Downgrades, FromSchema: df.Schema, FromMigrates: df.Migrates}
}

// buildInfo is the sum of the binary built for id and the toolchain that built it.
func (a *Agent) buildInfo(ctx context.Context, id bundle.ID) (rollout.BuildInfo, error) {
	tc, err := a.builder.Toolchain(ctx)
	if err != nil {
		return rollout.BuildInfo{}, err
	}
	sum, err := a.builder.Sum(id)
	return rollout.BuildInfo{Sum: sum, Toolchain: tc}, err
}

// fetchAndBuild keeps the version's bundle from the log and builds it.
func (a *Agent) fetchAndBuild(ctx context.Context, id bundle.ID) error {
	if err := a.host.KeepCommitted(id); err != nil {
		return err
	}
	_, err := a.host.Binary(ctx, id)
	return err
}

func (a *Agent) logEvent(e api.Event) {
	a.log.Info("swap", "phase", e.Phase, "duck", e.Duck, "version", e.Version, "msg", e.Message)
}

// maxMessage bounds a version's message and author.
const maxMessage = 4096

// waveLabelKnown refuses --wave-by with a label no member has: every node would land in the one
// wave of nodes without it, which is not what was asked (found by trying it: accepted silently).
// Checked here, before the commit, not when the log applies it: a refusal there would make a
// log replayed by a newer node differ from the one the older nodes applied.
func waveLabelKnown(key string, members map[string]consensus.Member) error {
	if key == "" {
		return nil
	}
	keys := map[string]bool{}
	for _, m := range members {
		if _, ok := m.Labels[key]; ok {
			return nil
		}
		for k := range m.Labels {
			keys[k] = true
		}
	}
	have := "no node has a label; start nodes with --label KEY=VALUE"
	if len(keys) > 0 {
		have = "the nodes' labels are " + strings.Join(slices.Sorted(maps.Keys(keys)), ", ")
	}
	return &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("--wave-by %s: no node has the label %q (%s)", key, key, have)}
}
