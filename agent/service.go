package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/duckraft/duckraft/agent/ducks"
	"github.com/duckraft/duckraft/agent/httpapi"
	"github.com/duckraft/duckraft/agent/membership"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// This file connects the API's handlers to the node: its membership, the rollout on the
// leader, and its ducks.

func (a *Agent) service() *httpapi.Service {
	return &httpapi.Service{
		Self:     a.self.Name,
		Cluster:  clusterAPI{a.mem, a},
		Rollouts: rollouts{a},
		Ducks:    hostAPI{a},
		Output:   a.sup,
		Views:    a.views,
		Peers:    a.client,
		Index:    func() uint64 { return a.Node().Index() },
		Logger:   a.log,
		Stop:     a.stop,
	}
}

// clusterAPI is the node's membership as the API uses it.
type clusterAPI struct {
	*membership.Membership
	a *Agent
}

func (c clusterAPI) Ping() api.Ping { return c.a.ping() }

func (c clusterAPI) Join(ctx context.Context, m api.Member) error {
	return refusal(c.Membership.Join(ctx, consensus.Member(m)))
}

func (c clusterAPI) Register(ctx context.Context, m api.Member) error {
	return refusal(c.Membership.Register(ctx, consensus.Member(m)))
}

func (c clusterAPI) Place(ctx context.Context, e api.Entry) error {
	ch, err := peerChange(e, "/v1/place", func(ch consensus.Change) bool {
		switch ch.(type) {
		case consensus.Place, consensus.Unplace:
			return true
		}
		return false
	})
	if err != nil {
		return err
	}
	return refusal(c.Membership.Apply(ctx, "/v1/place", ch))
}

func (c clusterAPI) Promote(ctx context.Context, name string) error {
	return refusal(c.Membership.Promote(ctx, name))
}

func (c clusterAPI) Remove(ctx context.Context, name string) error {
	return refusal(c.Membership.Remove(ctx, name))
}

// peerChange decodes a change a peer sent to route for the log, and takes it only if it is a
// kind that route carries (ok says which): a duck's placement cannot register a member.
func peerChange(e api.Entry, route string, ok func(consensus.Change) bool) (consensus.Change, error) {
	ch, err := consensus.Decode(e)
	if err != nil {
		return nil, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("not a log entry: %v", err)}
	}
	if !ok(ch) {
		return nil, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("%q does not go through %s", e.Op(), route)}
	}
	return ch, nil
}

// refusal is err as the API answers it: the log refusing a change, or a name already taken, is
// a conflict (409) the caller can act on, not the node's failure.
func refusal(err error) error {
	if errors.Is(err, consensus.ErrRefused) || errors.Is(err, consensus.ErrNameTaken) {
		return &api.APIError{Status: http.StatusConflict, Message: err.Error()}
	}
	return err
}

func (c clusterAPI) APIAddr(name string) (string, bool) {
	m, ok := c.a.Node().Member(name)
	return m.APIAddr, ok
}

// rollouts commits and steers rollouts through the leader.
type rollouts struct{ a *Agent }

func (r rollouts) Commit(ctx context.Context, req api.CommitRequest) (api.CommitResult, error) {
	var res api.CommitResult
	err := r.a.mem.OnLeader(ctx, "/v1/commit", req, &res, func(n *consensus.Node) (err error) {
		res, err = r.a.commit(n, req)
		return err
	})
	return res, err
}

func (r rollouts) Act(ctx context.Context, req api.RolloutAction) (api.CommitResult, error) {
	var res api.CommitResult
	err := r.a.mem.OnLeader(ctx, "/v1/rollout", req, &res, func(n *consensus.Node) (err error) {
		res, err = r.a.rolloutAction(n, req)
		return err
	})
	return res, err
}

func (r rollouts) Report(ctx context.Context, e api.Entry) error {
	ch, err := peerChange(e, "/v1/report", func(ch consensus.Change) bool { _, ok := ch.(consensus.Report); return ok })
	if err != nil {
		return err
	}
	c := ch.(consensus.Report)
	return r.a.mem.OnLeader(ctx, "/v1/report", e, nil, func(n *consensus.Node) error { return r.a.applyReport(n, c) })
}

func (r rollouts) View(ctx context.Context) api.RolloutView {
	r.a.mem.CatchUp(ctx)
	return r.a.rolloutView()
}

func (r rollouts) Canaries(ro *rollout.Rollout) []api.CanaryCheck { return r.a.checkCanaries(ro) }

func (r rollouts) Granted(g api.Grant) {
	if f := r.a.follow; f != nil {
		f.Granted(g.Index, g.Rollout)
	}
}

func (r rollouts) BenchCommit(ctx context.Context, req api.CommitBench) (api.CommitLatency, error) {
	var res api.CommitLatency
	err := r.a.mem.OnLeader(ctx, "/v1/bench/commit", req, &res, func(n *consensus.Node) error {
		res = api.CommitLatency{Leader: r.a.self.Name}
		for range req.N {
			t0 := time.Now()
			if err := n.Apply(consensus.Noop{}, applyTimeout); err != nil {
				return err
			}
			res.Samples = append(res.Samples, time.Since(t0))
		}
		slices.Sort(res.Samples)
		return nil
	})
	return res, err
}

// hostAPI is the node's ducks as the API uses them.
type hostAPI struct{ a *Agent }

func (h hostAPI) Load(ctx context.Context, data []byte, event func(api.Event)) error {
	return h.a.host.Load(ctx, data, event)
}

func (h hostAPI) Spawn(ctx context.Context, req api.SpawnRequest) (api.DuckInfo, error) {
	return h.a.host.Spawn(ctx, req)
}

func (h hostAPI) Stop(ctx context.Context, id string) error    { return h.a.host.Stop(ctx, id) }
func (h hostAPI) Restart(ctx context.Context, id string) error { return h.a.host.Restart(ctx, id) }
func (h hostAPI) List() []api.DuckInfo                         { return h.a.host.List() }
func (h hostAPI) Version() bundle.ID                           { return h.a.host.Local().Version }
func (h hostAPI) Bundle(id bundle.ID) ([]byte, error)          { return os.ReadFile(h.a.host.BundlePath(id)) }
func (h hostAPI) NoCode() error                                { return h.a.host.NoCode() }
func (h hostAPI) Record()                                      { h.a.mirrorDucks() }
func (h hostAPI) Local() api.Local                             { return h.a.localView() }

func (h hostAPI) ForgetRollouts() error {
	return h.a.host.Change(func(l *ducks.State) { l.Synced, l.Acted = "", "" })
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
		Cluster:      n.Cluster(),
		Unreached:    n.Unreached(),
		Log:          map[bool]string{true: "synced", false: "unsynced"}[n.LogSynced()],
	}
}

// ErrHasHistory means a node that has a history of its own was asked to join another cluster.
var ErrHasHistory = membership.ErrHasHistory
