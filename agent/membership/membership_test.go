package membership

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/internal/waitfor"
)

// fakePeers records the calls a node makes to other nodes and answers each path with a value.
type fakePeers struct {
	mu      sync.Mutex
	calls   []string // "addr path"
	answers map[string]any
}

func (p *fakePeers) Do(_ context.Context, addr, _, path string, _, out any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, addr+" "+path)
	v, ok := p.answers[path]
	if !ok {
		return errors.New("connection refused")
	}
	if out != nil {
		b, _ := json.Marshal(v)
		return json.Unmarshal(b, out)
	}
	return nil
}

func (p *fakePeers) Forward(ctx context.Context, addr, path string, in, out any) (uint64, error) {
	return 0, p.Do(ctx, addr, "POST", path, in, out)
}

func (p *fakePeers) called() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...)
}

// open starts a member named name on raft's in-memory transport, stopped with the test.
func open(t testing.TB, name string, bootstrap bool, peers Peers) (*Membership, *raft.InmemTransport) {
	t.Helper()
	var trans *raft.InmemTransport
	m, err := Open(Config{
		Name: name, APIAddr: name + ":api", RaftDir: t.TempDir(), Peers: peers,
		Transport: func() raft.Transport {
			_, trans = raft.NewInmemTransport(raft.ServerAddress(name + ":raft"))
			return trans
		},
	}, bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, trans
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitfor.Until(t, what, 10*time.Second, cond)
}

// keepRegistered runs m.KeepRegistered until the test ends.
func keepRegistered(t testing.TB, m *Membership) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.KeepRegistered(ctx, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestFreshNodeLeadsAndRegistersItself(t *testing.T) {
	m, _ := open(t, "a", true, &fakePeers{})
	keepRegistered(t, m)
	waitFor(t, "a registered", m.Registered)
	if r := m.Node().State().Members["a"]; r.APIAddr != "a:api" || r.RaftAddr != "a:raft" {
		t.Fatalf("registry holds %+v", r)
	}
	ran := false
	if err := m.OnLeader(context.Background(), "/v1/x", nil, nil, func(*consensus.Node) error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("on the leader: ran=%v err=%v, want the change made here", ran, err)
	}
}

// pair is leader a and follower b joined to it, b reaching other nodes through peers; each
// with its transport, to cut b off.
func pair(t *testing.T, peers Peers) (a, b *Membership, ta, tb *raft.InmemTransport) {
	t.Helper()
	a, ta = open(t, "a", true, &fakePeers{})
	b, tb = open(t, "b", false, peers)
	ta.Connect(tb.LocalAddr(), tb)
	tb.Connect(ta.LocalAddr(), ta)
	keepRegistered(t, a)
	waitFor(t, "a registered", a.Registered)
	if err := a.Join(context.Background(), b.Self()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to learn who leads", func() bool {
		name, _ := b.Node().Leader()
		return name == "a" && b.Node().State().Members["a"].APIAddr != ""
	})
	return a, b, ta, tb
}

func TestFollowerSendsChangesToTheLeader(t *testing.T) {
	peers := &fakePeers{answers: map[string]any{"/v1/x": map[string]bool{"ok": true}}}
	_, b, _, _ := pair(t, peers)
	ran := false
	err := b.OnLeader(context.Background(), "/v1/x", nil, nil, func(*consensus.Node) error { ran = true; return nil })
	if err != nil || ran {
		t.Fatalf("on a follower: ran=%v err=%v, want the change sent to the leader", ran, err)
	}
	if calls := peers.called(); len(calls) != 1 || calls[0] != "a:api /v1/x" {
		t.Fatalf("calls %v, want one to the leader's API", calls)
	}
}

func TestNoLeaderSaysWhatToDo(t *testing.T) {
	m, _ := open(t, "a", false, &fakePeers{}) // never bootstrapped: nobody leads
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := m.OnLeader(ctx, "/v1/x", nil, nil, func(*consensus.Node) error { return nil })
	if !errors.Is(err, ErrNoLeader) || !strings.Contains(err.Error(), "is a majority of the cluster up?") {
		t.Fatalf("%v, want ErrNoLeader saying what to check", err)
	}
}

func TestConnectRefusesANameTakenThere(t *testing.T) {
	peers := &fakePeers{answers: map[string]any{"/v1/members": []api.MemberStatus{{Name: "a", RaftAddr: "elsewhere:raft"}}}}
	m, _ := open(t, "a", true, peers)
	err := m.Connect(context.Background(), "other:api")
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, "start this node with another --name") {
		t.Fatalf("%v, want a 409 that says to pick another name", err)
	}
}

func TestConnectRefusesANodeWithHistory(t *testing.T) {
	peers := &fakePeers{answers: map[string]any{"/v1/members": []api.MemberStatus{{Name: "x", RaftAddr: "x:raft"}}}}
	m, _ := open(t, "a", true, peers)
	keepRegistered(t, m)
	waitFor(t, "a registered", m.Registered)
	other := consensus.Member{Name: "z", RaftAddr: "z:raft", APIAddr: "z:api"}
	// History: a member recorded in the log (directly: Register refuses a node outside the
	// configuration).
	if err := m.Node().Apply(consensus.Register{Member: other}, time.Second); err != nil {
		t.Fatal(err)
	}
	err := m.Connect(context.Background(), "other:api")
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, ErrHasHistory.Error()) {
		t.Fatalf("%v, want a 409: a node with history does not join", err)
	}
	if !m.Node().IsLeader() {
		t.Fatal("the refused node gave up its own cluster")
	}
}

func TestLeavingAClusterOfOneIsRefused(t *testing.T) {
	m, _ := open(t, "a", true, &fakePeers{})
	keepRegistered(t, m)
	waitFor(t, "a registered", m.Registered)
	forgot := false
	err := m.Leave(context.Background(), func() { forgot = true })
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || forgot {
		t.Fatalf("%v (forgot=%v), want a 409 and nothing forgotten", err, forgot)
	}
}

func TestFailedJoinReturnsToAClusterOfOne(t *testing.T) {
	peers := &fakePeers{answers: map[string]any{"/v1/members": []api.MemberStatus{{Name: "x", RaftAddr: "x:raft"}}}}
	m, _ := open(t, "a", true, peers) // /v1/join is not answered
	keepRegistered(t, m)
	waitFor(t, "a registered", m.Registered)
	if err := m.Connect(context.Background(), "other:api"); err == nil || !strings.Contains(err.Error(), "join through other:api") {
		t.Fatalf("%v, want the join's failure", err)
	}
	waitFor(t, "a to lead its own cluster again", m.Node().IsLeader)
}

// pingPeers answers /v1/ping with what ping returns at the time of the call.
type pingPeers struct{ ping func() (api.Ping, error) }

func (p pingPeers) Do(_ context.Context, _, _, path string, _, out any) error {
	if path != "/v1/ping" {
		return errors.New("connection refused")
	}
	v, err := p.ping()
	if err != nil {
		return err
	}
	*out.(*api.Ping) = v
	return nil
}

func (p pingPeers) Forward(ctx context.Context, addr, path string, in, out any) (uint64, error) {
	return 0, p.Do(ctx, addr, "POST", path, in, out)
}

// A read through a follower waits for what the leader holds: an answer through one node is
// never newer than the next through another (`rollout undo`, then `rollout history`).
func TestCatchUpWaitsForWhatTheLeaderHolds(t *testing.T) {
	var leaderDown atomic.Bool
	var leader atomic.Pointer[Membership]
	a, b, ta, tb := pair(t, pingPeers{func() (api.Ping, error) {
		if leaderDown.Load() || leader.Load() == nil {
			return api.Ping{}, errors.New("connection refused")
		}
		return api.Ping{Name: "a", StateIndex: leader.Load().Node().Index()}, nil
	}})
	leader.Store(a)

	// b stops hearing from a; a takes a change b has not seen.
	ta.Disconnect(tb.LocalAddr())
	if err := a.Node().Apply(consensus.Place{Placement: consensus.Placement{Node: "a", ID: "duck-1", Addr: "x:1"}}, time.Second); err != nil {
		t.Fatal(err)
	}
	want := a.Node().Index()
	if b.Node().Index() >= want {
		t.Fatalf("b already at %d of %d: the test needs it behind", b.Node().Index(), want)
	}
	done := make(chan uint64)
	go func() { b.CatchUp(context.Background()); done <- b.Node().Index() }()
	select {
	case got := <-done:
		t.Fatalf("CatchUp returned at %d while the leader holds %d and b cannot hear it", got, want)
	case <-time.After(300 * time.Millisecond):
	}
	ta.Connect(tb.LocalAddr(), tb)
	if got := <-done; got < want {
		t.Fatalf("CatchUp returned at %d, want at least the leader's %d", got, want)
	}

	// Cut off for good, a read still answers, from what b holds, within the bound.
	ta.Disconnect(tb.LocalAddr())
	if err := a.Node().Apply(consensus.Unplace{Key: "a/duck-1"}, time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b.CatchUp(context.Background())
	if took := time.Since(start); took < catchUpBound-100*time.Millisecond || took > catchUpBound+time.Second {
		t.Fatalf("CatchUp took %v cut off from the leader's log, want about its bound %v", took, catchUpBound)
	}
	// A leader that does not answer at all: at once.
	leaderDown.Store(true)
	start = time.Now()
	b.CatchUp(context.Background())
	if took := time.Since(start); took > catchUpBound/2 {
		t.Fatalf("CatchUp took %v with the leader not answering, want at once", took)
	}
}

// The autopilot promotes a non-voter only once its state holds the log, within maxTrailing.
func TestCaughtUpAsksTheMemberWhereItsStateIs(t *testing.T) {
	var at atomic.Int64 // the index b says its state holds; -1: b does not answer
	peers := pingPeers{func() (api.Ping, error) {
		if at.Load() < 0 {
			return api.Ping{}, errors.New("connection refused")
		}
		return api.Ping{Name: "b", StateIndex: uint64(at.Load())}, nil
	}}
	a, _ := open(t, "a", true, peers)
	keepRegistered(t, a)
	waitFor(t, "a registered", a.Registered)
	n := a.Node()
	if a.caughtUp(context.Background(), n, "b") {
		t.Fatal("caught up: b is not in the registry, so nobody can ask it")
	}
	if err := n.Apply(consensus.Register{Member: consensus.Member{Name: "b", RaftAddr: "b:raft", APIAddr: "b:api"}}, time.Second); err != nil {
		t.Fatal(err)
	}
	for range maxTrailing + 10 {
		if err := n.Apply(consensus.Noop{}, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	want := int64(n.Index())
	for _, c := range []struct {
		at   int64
		want bool
	}{{want, true}, {want - maxTrailing, true}, {want - maxTrailing - 1, false}, {0, false}, {-1, false}} {
		at.Store(c.at)
		if got := a.caughtUp(context.Background(), n, "b"); got != c.want {
			t.Errorf("b at %d of %d: caught up %v, want %v", c.at, want, got, c.want)
		}
	}
}

// A node taken out of the cluster while it was down, started again on its old data, registers
// itself as before: refused, and a registration recorded before that (by an older duckraft) is
// dropped by the leader. Recorded, it was in the order of every later rollout as a node never
// there, counted for --canary, and `forget` could not find it.
func TestARegistrationFromOutsideTheConfigurationIsRefusedAndDropped(t *testing.T) {
	m, _ := open(t, "a", true, &fakePeers{})
	keepRegistered(t, m)
	waitFor(t, "a registered", m.Registered)
	ghost := consensus.Member{Name: "ghost", RaftAddr: "ghost:raft", APIAddr: "ghost:api"}
	err := m.Register(context.Background(), ghost)
	if !errors.Is(err, ErrNotConfigured) || !strings.Contains(err.Error(), "ghost was taken out of the cluster") {
		t.Fatalf("register of a node outside the configuration: %v, want ErrNotConfigured", err)
	}
	if _, ok := m.Node().Member("ghost"); ok {
		t.Fatal("the refused registration was recorded")
	}
	if err := m.Node().Apply(consensus.Register{Member: ghost}, time.Second); err != nil {
		t.Fatal(err)
	}
	dropped, err := m.Node().DropUnconfigured(time.Second)
	if err != nil || len(dropped) != 1 || dropped[0] != "ghost" {
		t.Fatalf("dropped %v, %v; want the ghost", dropped, err)
	}
	if names := m.Node().MemberNames(); len(names) != 1 || names[0] != "a" {
		t.Fatalf("members %v after the drop, want a alone", names)
	}
}

// errPeers answers every call with err.
type errPeers struct{ err error }

func (p errPeers) Do(context.Context, string, string, string, any, any) error { return p.err }
func (p errPeers) Forward(context.Context, string, string, any, any) (uint64, error) {
	return 0, p.err
}

// Before the leader makes a member a voter it has it sync its log; a member that cannot is not
// promoted, but one of an earlier release (no such route, and a log synced at every write) is.
func TestReadyToVoteAsksTheMemberToSyncItsLog(t *testing.T) {
	a, _ := open(t, "a", true, &fakePeers{})
	keepRegistered(t, a)
	waitFor(t, "a registered", a.Registered)
	n := a.Node()
	if err := n.Apply(consensus.Register{Member: consensus.Member{Name: "b", RaftAddr: "b:raft", APIAddr: "b:api"}}, time.Second); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, true},
		{&api.APIError{Status: http.StatusNotFound, Message: "404 page not found"}, true},
		{&api.APIError{Status: http.StatusConflict, Message: "this node is c, not b"}, false},
		{errors.New("connection refused"), false},
	} {
		a.cfg.Peers = errPeers{c.err}
		if err := a.readyToVote(context.Background(), n, "b"); (err == nil) != c.want {
			t.Errorf("b answers %v: readyToVote = %v, want ready %v", c.err, err, c.want)
		}
	}
	if err := a.readyToVote(context.Background(), n, "a"); err != nil || !n.LogSynced() {
		t.Fatalf("the leader itself: %v, synced %v", err, n.LogSynced())
	}
	if err := a.readyToVote(context.Background(), n, "nobody"); err == nil {
		t.Fatal("a member nobody registered is ready to vote")
	}
}
