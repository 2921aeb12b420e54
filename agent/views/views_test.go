package views

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
)

// peer is how a fake member answers: a value per path, an error, or silence until the caller
// gives up.
type peer struct {
	silent  bool
	err     error
	answers map[string]any
	lines   []api.LogLine
}

type fakePeers map[string]*peer // by API address

func (f fakePeers) Do(ctx context.Context, addr, _, path string, _, out any) error {
	p, ok := f[addr]
	if !ok {
		return errors.New("connection refused")
	}
	if p.silent {
		<-ctx.Done()
		return ctx.Err()
	}
	if p.err != nil {
		return p.err
	}
	b, _ := json.Marshal(p.answers[path])
	return json.Unmarshal(b, out)
}

func (f fakePeers) Stream(ctx context.Context, addr, _, _ string, _ io.Reader, _ string, each func(json.RawMessage) error) error {
	p, ok := f[addr]
	if !ok {
		return errors.New("connection refused")
	}
	if p.silent {
		<-ctx.Done()
		return ctx.Err()
	}
	for _, l := range p.lines {
		b, _ := json.Marshal(l)
		each(b)
	}
	return p.err
}

type fakeCluster struct {
	members    []api.MemberStatus
	placements []api.DuckInfo
	rollout    api.RolloutView
}

func (c fakeCluster) Configuration() ([]api.MemberStatus, error) {
	return append([]api.MemberStatus(nil), c.members...), nil
}

func (c fakeCluster) Registered() map[string]string {
	out := map[string]string{}
	for _, m := range c.members {
		if m.APIAddr != "" {
			out[m.Name] = m.APIAddr
		}
	}
	return out
}

func (c fakeCluster) Placements() []api.DuckInfo              { return c.placements }
func (c fakeCluster) Rollout(context.Context) api.RolloutView { return c.rollout }

type fakeLocal struct{}

func (fakeLocal) Ping() api.Ping { return api.Ping{Name: "a", State: "leader"} }
func (fakeLocal) Ducks() []api.DuckInfo {
	return []api.DuckInfo{{Node: "a", ID: "duck-1", State: "running"}}
}
func (fakeLocal) View() api.Local { return api.Local{Name: "a", Role: "leader"} }

// cluster is a (this node, leading), b (answers), c (silent), d (joined, not registered).
func cluster() *Views {
	members := []api.MemberStatus{
		{Name: "c", APIAddr: "c:1", Suffrage: "voter"},
		{Name: "a", APIAddr: "a:1", Suffrage: "voter"},
		{Name: "b", APIAddr: "b:1", Suffrage: "voter"},
		{Name: "d", Suffrage: "nonvoter"},
	}
	peers := fakePeers{
		"a:1": {lines: []api.LogLine{{Node: "a", Duck: "duck-1", Text: "quack a"}}},
		"b:1": {answers: map[string]any{
			"/v1/ping":  api.Ping{Name: "b", State: "follower"},
			"/v1/ducks": []api.DuckInfo{{Node: "b", ID: "duck-1", State: "running"}},
			"/v1/local": api.Local{Name: "b", Role: "follower"},
		}, lines: []api.LogLine{{Node: "b", Duck: "duck-1", Text: "quack b"}}},
		"c:1": {silent: true},
	}
	placements := []api.DuckInfo{{Node: "a", ID: "duck-1"}, {Node: "b", ID: "duck-1"}, {Node: "b", ID: "duck-2"}, {Node: "c", ID: "duck-1"}}
	r := rollout.New(2, "new", 1, "old", rollout.Members("a", "b", "c"), false, true, rollout.Policy{}, time.Now())
	return &Views{
		Self: "a", Cluster: fakeCluster{members: members, placements: placements, rollout: api.RolloutView{Rollout: r}},
		Local: fakeLocal{}, Peers: peers, Timeout: 100 * time.Millisecond,
	}
}

func TestMembersMarksTheSilentOneUnreachableWithinTheDeadline(t *testing.T) {
	v := cluster()
	t0 := time.Now()
	ms, err := v.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(t0); took > time.Second {
		t.Fatalf("took %s: a silent member held up the answer", took)
	}
	got := map[string]api.MemberStatus{}
	var names []string
	for _, m := range ms {
		got[m.Name] = m
		names = append(names, m.Name)
	}
	if strings.Join(names, ",") != "a,b,c,d" {
		t.Fatalf("members %v, want them sorted by name", names)
	}
	for name, want := range map[string]struct {
		reachable bool
		role      string
	}{"a": {true, "leader"}, "b": {true, "follower"}, "c": {false, "unknown"}, "d": {false, "unknown"}} {
		if m := got[name]; m.Reachable != want.reachable || m.Role != want.role {
			t.Errorf("%s: reachable %v role %q, want %v %q", name, m.Reachable, m.Role, want.reachable, want.role)
		}
	}
	if got["b"].LastContact.IsZero() || !got["c"].LastContact.IsZero() {
		t.Errorf("last contact b %v, c %v: want b's answer recorded, c never", got["b"].LastContact, got["c"].LastContact)
	}
}

// A member that does not answer was last heard from when the leader's heartbeats last reached
// it, if that is later than this node's own last answer from it: otherwise a member killed a
// moment ago showed as gone since whenever this node last listed the members (found by trying
// it: "35s ago" one second after a kill, "never" on another node).
func TestASilentMembersLastContactIsTheLeadersView(t *testing.T) {
	v := cluster()
	v.Self = "x" // not the leader: b leads, and its heartbeats last reached c at heard
	heard := time.Now().Add(-time.Second).UTC().Truncate(time.Millisecond)
	v.Peers.(fakePeers)["b:1"].answers["/v1/ping"] = api.Ping{Name: "b", State: "leader", Unreached: map[string]time.Time{"c": heard}}
	ms, err := v.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name == "c" && (m.Reachable || !m.LastContact.Equal(heard)) {
			t.Fatalf("c: reachable %v, last contact %v; want unreachable, last heard at the leader's %v", m.Reachable, m.LastContact, heard)
		}
	}
}

func TestMemberAnsweringForAnotherNameIsUnreachable(t *testing.T) {
	v := cluster()
	v.Peers.(fakePeers)["b:1"].answers["/v1/ping"] = api.Ping{Name: "someone-else", State: "follower"}
	ms, _ := v.Members(context.Background())
	for _, m := range ms {
		if m.Name == "b" && m.Reachable {
			t.Fatal("b counted reachable though another node answered at its address")
		}
	}
}

func TestDucksKeepsTheRowsOfASilentNode(t *testing.T) {
	ds := cluster().Ducks(context.Background())
	got := map[string]string{}
	for _, d := range ds {
		got[d.Node+"/"+d.ID] = d.State
	}
	want := map[string]string{"a/duck-1": "running", "b/duck-1": "running", "b/duck-2": "not running", "c/duck-1": "node unreachable"}
	if len(got) != len(want) {
		t.Fatalf("ducks %v, want %v", got, want)
	}
	for k, st := range want {
		if got[k] != st {
			t.Errorf("%s: %q, want %q", k, got[k], st)
		}
	}
}

func TestLogsSaysWhoDidNotAnswerWithinTheDeadline(t *testing.T) {
	w := httptest.NewRecorder()
	cluster().Logs(w, httptest.NewRequest(http.MethodGet, "/v1/logs?on=*", nil))
	var texts []string
	var missing string
	for _, line := range strings.Split(strings.TrimSpace(w.Body.String()), "\n") {
		var l api.LogLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if l.Error != "" {
			missing = l.Node + ": " + l.Error
			continue
		}
		texts = append(texts, l.Text)
	}
	if len(texts) != 2 {
		t.Errorf("lines %v, want a's and b's", texts)
	}
	if !strings.HasPrefix(missing, "c: node c did not answer within") {
		t.Errorf("missing member said as %q, want c named as not answering in time", missing)
	}
}

func TestProxyLogsOfAnUnknownMemberIs404(t *testing.T) {
	w := httptest.NewRecorder()
	cluster().ProxyLogs(w, httptest.NewRequest(http.MethodGet, "/v1/logs?on=z", nil), "z")
	if w.Code != http.StatusNotFound {
		t.Fatalf("status %d, want 404", w.Code)
	}
}

func TestStatusLeavesTheUnreachableWithoutLocalAndCountsVoters(t *testing.T) {
	st, err := cluster().Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Voters != 3 {
		t.Errorf("voters %d, want 3", st.Voters)
	}
	for _, n := range st.Nodes {
		hasLocal := n.Local != nil
		if want := n.Member.Name == "a" || n.Member.Name == "b"; hasLocal != want {
			t.Errorf("%s: local %v, want %v", n.Member.Name, n.Local, want)
		}
		if n.Member.Name == "c" && (n.Rollout == nil || n.Rollout.Phase != rollout.Pending) {
			t.Errorf("c: rollout part %+v, want its pending entry even while unreachable", n.Rollout)
		}
	}
}

// Listings order nodes and ducks as a rollout orders nodes: numbers by their value, so n2 comes
// before n10 in `members`, `ducks` and `status` as in the rollout (found by trying it: the
// listings sorted n1, n10, n2).
func TestListingsOrderNamesAsTheRolloutDoes(t *testing.T) {
	ds := []api.DuckInfo{{Node: "n10", ID: "duck-1"}, {Node: "n2", ID: "duck-10"}, {Node: "n2", ID: "duck-2"}, {Node: "n1", ID: "duck-1"}}
	SortDucks(ds)
	var got []string
	for _, d := range ds {
		got = append(got, d.Node+"/"+d.ID)
	}
	if want := "n1/duck-1 n2/duck-2 n2/duck-10 n10/duck-1"; strings.Join(got, " ") != want {
		t.Fatalf("ducks in order %v, want %s", got, want)
	}
}

// scripted answers each Stream call with the next outcome: lines then an error, or, past the
// end, silence until the caller gives up.
type scripted struct {
	outcomes []error
	calls    int
}

func (s *scripted) Do(context.Context, string, string, string, any, any) error {
	return errors.New("not asked")
}

func (s *scripted) Stream(ctx context.Context, _, _, _ string, _ io.Reader, _ string, each func(json.RawMessage) error) error {
	if s.calls >= len(s.outcomes) {
		<-ctx.Done()
		return ctx.Err()
	}
	err := s.outcomes[s.calls]
	s.calls++
	b, _ := json.Marshal(api.LogLine{Node: "b", Duck: "duck-1", Text: "quack"})
	if err == nil || errors.Is(err, api.ErrLost) {
		each(b)
	}
	return err
}

// followed runs `logs -f` of every node against b's scripted outcomes and returns the error
// lines it printed once they are all used up.
func followed(t *testing.T, outcomes ...error) []string {
	t.Helper()
	old := followAgain
	followAgain = time.Millisecond
	defer func() { followAgain = old }()
	p := &scripted{outcomes: outcomes}
	v := &Views{Self: "a", Cluster: fakeCluster{members: []api.MemberStatus{{Name: "b", APIAddr: "b:1", Suffrage: "voter"}}},
		Local: fakeLocal{}, Peers: p, Timeout: 100 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	w := httptest.NewRecorder()
	v.Logs(w, httptest.NewRequestWithContext(ctx, http.MethodGet, "/v1/logs?on=*&follow=1", nil))
	var errs []string
	for _, line := range strings.Split(strings.TrimSpace(w.Body.String()), "\n") {
		var l api.LogLine
		if json.Unmarshal([]byte(line), &l) == nil && l.Error != "" {
			errs = append(errs, l.Error)
		}
	}
	return errs
}

func TestFollowingSaysEveryOutageOfANode(t *testing.T) {
	lost := fmt.Errorf("%w to b:1: EOF", api.ErrLost)
	refused := errors.New("b:1: connection refused")
	errs := followed(t, lost, refused, refused, lost, refused, nil)
	if len(errs) != 2 {
		t.Fatalf("said %q, want the two outages each said once", errs)
	}
	for _, e := range errs {
		if !strings.Contains(e, "followed again once it answers") {
			t.Errorf("%q does not say the node is followed again", e)
		}
	}
}

func TestFollowingStopsAtARefusalAndSaysIt(t *testing.T) {
	errs := followed(t, &api.APIError{Status: http.StatusConflict, Message: "node b was taken out of the cluster"}, nil)
	if len(errs) != 1 || !strings.Contains(errs[0], "node b: node b was taken out") || strings.Contains(errs[0], "followed again") {
		t.Fatalf("said %q, want the refusal once, not followed again", errs)
	}
	errs = followed(t, &api.APIError{Status: http.StatusServiceUnavailable, Message: "starting"}, nil)
	if len(errs) != 1 || !strings.Contains(errs[0], "followed again") {
		t.Fatalf("said %q, want a node's own error followed again", errs)
	}
}
