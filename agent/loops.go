package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/duckraft/duckraft/agent/ducks"
	"github.com/duckraft/duckraft/agent/follower"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// This file connects the rollout's driver and follower to this node: the log they read is
// whichever consensus member the agent runs now (connect and leave replace it), the leader they
// report to is reached through membership.OnLeader, and the ducks they swap are the agent's.

// nodeLog is the current consensus member, as the driver and the follower read it.
type nodeLog struct{ a *Agent }

func (l nodeLog) IsLeader() bool            { return l.a.Node().IsLeader() }
func (l nodeLog) Rollout() *rollout.Rollout { return l.a.Node().Rollout() }
func (l nodeLog) Silence() rollout.Silence  { return l.a.Node().Silence() }
func (l nodeLog) Changed() <-chan struct{}  { return l.a.Node().Changed() }
func (l nodeLog) Index() uint64             { return l.a.Node().Index() }
func (l nodeLog) CommitSteps(r *rollout.Rollout, steps []rollout.Step, now time.Time) error {
	return l.a.Node().Apply(consensus.RoundOf(r, steps, now), applyTimeout)
}

// tellGranted tells node, on the leader, of the turn it was granted: r as it stood at log index
// index. Said and forgotten: a node not told learns of the grant from the log.
func (a *Agent) tellGranted(node string, index uint64, body []byte) {
	if node == a.self.Name {
		return // its follower reads the same state
	}
	m, ok := a.Node().Member(node)
	if !ok || m.APIAddr == "" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(a.ctx, tellTimeout)
		defer cancel()
		if err := a.client.Do(ctx, m.APIAddr, http.MethodPost, "/v1/granted", json.RawMessage(body), nil); err != nil {
			a.log.Debug("telling a node of its turn", "node", node, "err", err)
		}
	}()
}

// canaryHealth is driver.Driver.CanaryHealth: it asks the canary how its ducks are.
func (a *Agent) canaryHealth(node string, runningFor time.Duration) (string, error) {
	ducks, up := a.host.List(), time.Since(a.started)
	if node != a.self.Name {
		m, ok := a.Node().Member(node)
		if !ok {
			// Not "cannot tell, try again": it will not come back to say (found by an outside
			// probe: a resume past a canary that had left was refused that way for good).
			return "it is no longer a member of the cluster (it left, or was forgotten)", nil
		}
		if m.APIAddr == "" {
			return "", fmt.Errorf("%s has no API address in the log", node)
		}
		ctx, cancel := context.WithTimeout(a.ctx, tellTimeout)
		defer cancel()
		var l api.Local
		if err := a.client.Do(ctx, m.APIAddr, http.MethodGet, "/v1/local", nil, &l); err != nil {
			return "", err
		}
		ducks, up = l.Ducks, l.UpFor
	}
	if up > 0 && up < runningFor {
		// Its ducks restarted with it, their restart counts gone with the old process: what
		// they did since the turn is not known, and a node that went down is no proof.
		return fmt.Sprintf("the node restarted %s after its turn ended", (runningFor - up).Round(time.Millisecond)), nil
	}
	return api.DucksHealth(ducks, runningFor)
}

// tellTimeout bounds telling a node of its turn: past it, the log has told it.
const tellTimeout = 2 * time.Second

// leader is the cluster's leader as the follower reaches it.
type leader struct{ a *Agent }

func (l leader) StateIndex(ctx context.Context) (uint64, error) {
	n := l.a.Node()
	name, _ := n.Leader()
	m, ok := n.Member(name)
	if !ok || name == "" {
		return 0, ErrNoLeader
	}
	var p api.Ping
	if err := l.a.client.Do(ctx, m.APIAddr, http.MethodGet, "/v1/ping", nil, &p); err != nil {
		return 0, err
	}
	if p.Name != name {
		return 0, fmt.Errorf("%s answered for leader %s", p.Name, name)
	}
	return p.StateIndex, nil
}

func (l leader) Report(ctx context.Context, r follower.Report) error {
	c := consensus.Report{N: r.N, Node: r.Node, Phase: r.Phase, Error: r.Error, Build: r.Build, States: r.States}
	b, err := consensus.Encode(c)
	if err != nil {
		return err
	}
	return l.a.mem.OnLeader(ctx, "/v1/report", api.Entry(b), nil, func(n *consensus.Node) error { return l.a.applyReport(n, c) })
}

// builder builds committed versions for the follower.
type builder struct{ a *Agent }

func (b builder) Build(ctx context.Context, id bundle.ID) error { return b.a.fetchAndBuild(ctx, id) }
func (b builder) BuildInfo(ctx context.Context, id bundle.ID) (rollout.BuildInfo, error) {
	return b.a.buildInfo(ctx, id)
}
func (b builder) StateInfo(ctx context.Context, r *rollout.Rollout) *rollout.StateInfo {
	return b.a.stateInfo(ctx, r)
}

// hostDucks is what this node runs, as the follower changes it.
type hostDucks struct{ a *Agent }

func (d hostDucks) Local() rollout.Local {
	l := d.a.host.Local()
	return rollout.Local{Have: l.Version, Acted: l.Acted, Synced: l.Synced}
}

func (d hostDucks) SetActed(key string) error {
	return d.a.host.Change(func(l *ducks.State) { l.Acted = key })
}

func (d hostDucks) SetSynced(key string) error {
	return d.a.host.Change(func(l *ducks.State) { l.Synced = key })
}

func (d hostDucks) SwitchTo(ctx context.Context, id bundle.ID, healthy time.Duration) error {
	if err := d.a.host.KeepCommitted(id); err != nil {
		return err
	}
	return d.a.host.SwitchTo(ctx, id, healthy, d.a.logEvent)
}
