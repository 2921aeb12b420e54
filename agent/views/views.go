// Package views answers for the whole cluster from any node, as an Erlang shell does on any node: the
// members and how each is, every node's ducks and their output, the status of every node. Each
// asks the members themselves, in parallel, and gives each a deadline, so that one silent member
// (cut off, not yet known to be down) shows as such instead of holding up the answer for all.
package views

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
)

// Peers reaches the other members' APIs; *api.Client is one.
type Peers interface {
	Do(ctx context.Context, addr, method, path string, in, out any) error
	Stream(ctx context.Context, addr, method, path string, body io.Reader, contentType string, each func(json.RawMessage) error) error
}

// Cluster is what the log says of the cluster.
type Cluster interface {
	// Configuration is Raft's configuration: each member's name, Raft address and suffrage,
	// with the API address the registry holds for it (empty until it registers).
	Configuration() ([]api.MemberStatus, error)
	// Registered is every member the registry records, by name, with its API address.
	Registered() map[string]string
	// Placements is where the log says ducks run (node, ID and address of each).
	Placements() []api.DuckInfo
	// Rollout is the rollout picture, caught up with the leader first.
	Rollout(ctx context.Context) api.RolloutView
}

// Local answers for this node without a round trip.
type Local interface {
	Ping() api.Ping
	Ducks() []api.DuckInfo
	View() api.Local
}

// DefaultTimeout is how long a member may take to answer before it counts as unreachable.
const DefaultTimeout = time.Second

// Views answers cluster-wide questions for the node named Self.
type Views struct {
	Self    string
	Cluster Cluster
	Local   Local
	Peers   Peers
	// Timeout is how long a member may take to answer (0: DefaultTimeout); a listing of logs
	// gives each member twice as long, since it carries more.
	Timeout time.Duration
	// Tolerates is how many of n voters the cluster can lose and still commit (nil: none).
	Tolerates func(voters int) int
	// Removed says why this node is no longer a member ("" while it is one; nil: never).
	Removed func() string

	seenMu   sync.Mutex
	lastSeen map[string]time.Time
}

func (v *Views) timeout() time.Duration { return cmp.Or(v.Timeout, DefaultTimeout) }

// Members lists Raft's configuration with each member's addresses, asking each one, in
// parallel, how it is. Every node answers alike because every node asks the members themselves.
func (v *Views) Members(ctx context.Context) ([]api.MemberStatus, error) {
	out, err := v.Cluster.Configuration()
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	var leaderMu sync.Mutex
	var unreached map[string]time.Time // the leader's view of the members its heartbeats miss
	for i := range out {
		out[i].Role, out[i].Reachable, out[i].LastContact = "unknown", false, time.Time{}
		wg.Add(1)
		go func(st *api.MemberStatus) {
			defer wg.Done()
			var p api.Ping
			if st.Name == v.Self {
				p = v.Local.Ping()
			} else if st.APIAddr == "" {
				return // joined, not yet registered
			} else {
				pctx, cancel := context.WithTimeout(ctx, v.timeout())
				err := v.Peers.Do(pctx, st.APIAddr, http.MethodGet, "/v1/ping", nil, &p)
				cancel()
				if err != nil || p.Name != st.Name {
					st.LastContact = v.seen(st.Name, false)
					return
				}
			}
			st.Reachable = true
			st.Role, st.Log = p.State, p.Log
			st.LastContact = v.seen(st.Name, true)
			if p.State == "leader" {
				leaderMu.Lock()
				unreached = p.Unreached
				leaderMu.Unlock()
			}
		}(&out[i])
	}
	wg.Wait()
	// A member that did not answer was last heard from when this node last reached it, or when
	// the leader's heartbeats last did, whichever is later: this node asks only when someone
	// lists the members, and showed a member killed a second ago as gone since its last listing.
	for i := range out {
		if t, ok := unreached[out[i].Name]; ok && !out[i].Reachable && t.After(out[i].LastContact) {
			out[i].LastContact = t.Truncate(time.Millisecond)
		}
	}
	slices.SortFunc(out, func(x, y api.MemberStatus) int { return rollout.CompareNames(x.Name, y.Name) })
	return out, nil
}

// seen records (when ok) and returns the last time a member answered.
func (v *Views) seen(name string, ok bool) time.Time {
	v.seenMu.Lock()
	defer v.seenMu.Unlock()
	if v.lastSeen == nil {
		v.lastSeen = map[string]time.Time{}
	}
	if ok {
		v.lastSeen[name] = time.Now().UTC().Truncate(time.Millisecond)
	}
	return v.lastSeen[name]
}

// Ducks lists the ducks of every node: where they run comes from the log, how they are from
// each node. A node that does not answer keeps its rows, marked so.
func (v *Views) Ducks(ctx context.Context) []api.DuckInfo {
	var mu sync.Mutex
	live := map[string]api.DuckInfo{}
	down := map[string]bool{}
	var wg sync.WaitGroup
	for name, addr := range v.Cluster.Registered() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ds []api.DuckInfo
			if name == v.Self {
				ds = v.Local.Ducks()
			} else {
				pctx, cancel := context.WithTimeout(ctx, v.timeout())
				defer cancel()
				if err := v.Peers.Do(pctx, addr, http.MethodGet, "/v1/ducks", nil, &ds); err != nil {
					mu.Lock()
					down[name] = true
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
	for _, p := range v.Cluster.Placements() {
		if _, ok := live[p.Node+"/"+p.ID]; ok {
			continue
		}
		d := api.DuckInfo{Node: p.Node, ID: p.ID, Addr: p.Addr, State: "node unreachable"}
		if !down[p.Node] {
			d.State = "not running" // placed in the log, not (yet) on its node
		}
		out = append(out, d)
	}
	SortDucks(out)
	return out
}

// SortDucks orders ducks by node, then ID, numbers by their value (n2 before n10, duck-2
// before duck-10), as a rollout orders nodes.
func SortDucks(ds []api.DuckInfo) {
	slices.SortFunc(ds, func(x, y api.DuckInfo) int {
		if x.Node != y.Node {
			return rollout.CompareNames(x.Node, y.Node)
		}
		return rollout.CompareNames(x.ID, y.ID)
	})
}

// ProxyLogs relays a duck's output from the node it runs on, the member named on. If that node
// dies the stream says so at once: its connection breaks the moment the process is gone.
func (v *Views) ProxyLogs(w http.ResponseWriter, r *http.Request, on string) {
	addr, ok := v.Cluster.Registered()[on]
	if !ok {
		httpjson.Error(w, http.StatusNotFound, fmt.Errorf("no member named %q: `members` lists them", on))
		return
	}
	q := r.URL.Query()
	q.Del("on")
	s := httpjson.NewStreamer(w)
	err := v.Peers.Stream(r.Context(), addr, http.MethodGet, "/v1/logs?"+q.Encode(), nil, "", func(raw json.RawMessage) error {
		s.Raw(raw)
		return nil
	})
	if err != nil && r.Context().Err() == nil {
		s.Send(api.LogLine{Node: on, Error: whyStopped(on, err)})
	}
}

// whyStopped says why a node's lines stopped: its own refusal, or that it is gone.
func whyStopped(name string, err error) string {
	var ae *api.APIError
	if errors.As(err, &ae) {
		return ae.Message
	}
	return fmt.Sprintf("node %s is gone, and its ducks with it (%v)", name, err)
}

// Logs merges the output of every duck on every node.
func (v *Views) Logs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	q.Del("on")
	lines := make(chan json.RawMessage, 256)
	var wg sync.WaitGroup
	follow := q.Get("follow") == "1"
	for name, addr := range v.Cluster.Registered() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nq := maps.Clone(q)
			for down := false; ; {
				err := v.streamLogs(r.Context(), addr, nq, follow, lines)
				if r.Context().Err() != nil || err == nil && !follow {
					return
				}
				// A stream that was answered ends an outage: the next one is news (a second
				// outage went unsaid when only a failure set down).
				reached := err == nil || errors.Is(err, api.ErrLost)
				// A refusal (a node taken out, a query it rejects) does not change by asking
				// again; an error of the node's own (5xx, say while it comes back) may.
				var ae *api.APIError
				refused := errors.As(err, &ae) && ae.Status < 500
				if err != nil && (!down || reached) {
					msg := whyStopped(name, err)
					switch {
					case ae != nil: // among every node's lines, say whose refusal it is
						msg = "node " + name + ": " + msg
					case errors.Is(err, context.DeadlineExceeded):
						msg = fmt.Sprintf("node %s did not answer within %s: its lines are missing", name, 2*v.timeout())
					}
					if follow && !refused {
						msg += "; followed again once it answers"
					}
					b, _ := json.Marshal(api.LogLine{Node: name, Error: msg})
					lines <- b
				}
				if !follow || refused {
					return
				}
				// Following: the node may come back (a restart), and its ducks with it. It was
				// left out until the command was run again (found by an outside probe). From
				// then on, only new lines: those before were shown or are the restart's.
				down = err != nil
				select {
				case <-r.Context().Done():
					return
				case <-time.After(followAgain):
				}
				nq.Set("n", "0")
			}
		}()
	}
	go func() { wg.Wait(); close(lines) }()
	s := httpjson.NewStreamer(w)
	for raw := range lines {
		s.Raw(raw)
	}
}

// followAgain is how often `logs -f` of every node asks a node that went away again.
var followAgain = 2 * time.Second

// streamLogs streams a node's log lines into lines: recent ones with a deadline, so that one
// silent member (cut off, not yet known to be down) cannot hold up the listing of a hundred;
// following has none.
func (v *Views) streamLogs(ctx context.Context, addr string, q url.Values, follow bool, lines chan<- json.RawMessage) error {
	parent := ctx
	if !follow {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*v.timeout())
		defer cancel()
	}
	err := v.Peers.Stream(ctx, addr, http.MethodGet, "/v1/logs?"+q.Encode(), nil, "", func(raw json.RawMessage) error {
		select {
		case lines <- raw:
		case <-ctx.Done():
		}
		return nil
	})
	// A deadline met while dialling comes back as an i/o timeout, which read as "gone".
	if err != nil && ctx.Err() != nil && parent.Err() == nil {
		return context.DeadlineExceeded
	}
	return err
}

// Status is every member with what it runs and its part in the rollout.
func (v *Views) Status(ctx context.Context) (api.Status, error) {
	ms, err := v.Members(ctx)
	if err != nil {
		return api.Status{}, err
	}
	view := v.Cluster.Rollout(ctx)
	out := api.Status{Rollout: view, Nodes: make([]api.NodeStatus, len(ms))}
	for _, m := range ms {
		if m.Suffrage == "voter" {
			out.Voters++
			if m.Reachable {
				out.VotersReachable++
			}
		}
	}
	if v.Tolerates != nil {
		out.Tolerates = v.Tolerates(out.Voters)
	}
	if v.Removed != nil {
		out.Removed = v.Removed()
	}
	var wg sync.WaitGroup
	for i, m := range ms {
		out.Nodes[i] = api.NodeStatus{Member: m, Reachable: m.Reachable}
		if view.Rollout != nil {
			out.Nodes[i].Rollout = view.Rollout.Nodes[m.Name]
		}
		if !m.Reachable {
			continue
		}
		wg.Add(1)
		go func(ns *api.NodeStatus) {
			defer wg.Done()
			var l api.Local
			if ns.Member.Name == v.Self {
				l = v.Local.View()
			} else {
				pctx, cancel := context.WithTimeout(ctx, v.timeout())
				defer cancel()
				if v.Peers.Do(pctx, ns.Member.APIAddr, http.MethodGet, "/v1/local", nil, &l) != nil {
					return
				}
			}
			ns.Local = &l
		}(&out.Nodes[i])
	}
	wg.Wait()
	slices.SortFunc(out.Nodes, func(x, y api.NodeStatus) int { return rollout.CompareNames(x.Member.Name, y.Member.Name) })
	return out, nil
}
