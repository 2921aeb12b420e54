// Package membership is this node's place in its cluster: the consensus member it runs (which
// connect and leave replace), its record in the registry kept equal to its addresses, joining
// another cluster through one of its members, removing a member, leaving, the leader's autopilot
// that keeps the number of voters, and the one way every change reaches the log: on the leader,
// forwarded there from any other node (OnLeader).
package membership

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/atomicfile"
	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/wire"
)

// ApplyTimeout bounds one log entry's round trip; past it the caller hears why.
const ApplyTimeout = 10 * time.Second

// ErrNoLeader means no leader is known: the cluster has lost its majority or is electing.
var ErrNoLeader = errors.New("no leader")

// ErrNotConfigured means a node asked to be registered was taken out of the cluster.
var ErrNotConfigured = consensus.ErrNotConfigured

// ErrNoMajorityLeft means a voter's removal would leave the voters without a reachable majority.
var ErrNoMajorityLeft = consensus.ErrNoMajorityLeft

// ErrHasHistory means a node that has a history of its own was asked to join another cluster.
var ErrHasHistory = errors.New("this node has history of its own")

// Peers reaches the other members' APIs; *api.Client is one.
type Peers interface {
	Do(ctx context.Context, addr, method, path string, in, out any) error
	// Forward posts in to a node, as Do, and returns its state index when it answered
	// (api.IndexHeader).
	Forward(ctx context.Context, addr, path string, in, out any) (uint64, error)
}

// Config says who this node is and where its Raft lives.
type Config struct {
	Name    string
	APIAddr string // the API address peers dial, already advertised
	Labels  map[string]string
	RaftDir string
	// Bind and Advertise are Raft's listen address and the host peers dial (see consensus).
	Bind, Advertise string
	Identity        *wire.Identity
	// Voters is how many members vote (0: consensus.DefaultVoters); ReplaceVoterAfter how long
	// a voter may be unreachable before a reachable non-voter takes its place (0: 10s).
	Voters            int
	ReplaceVoterAfter time.Duration
	Peers             Peers
	Logger            *slog.Logger
	// Transport, when set, makes each Raft transport instead of TCP (tests use raft's
	// in-memory one); a reset closes the old transport and asks for a new one.
	Transport func() raft.Transport
}

// Membership is this node's place in its cluster.
type Membership struct {
	cfg  Config
	self consensus.Member
	log  *slog.Logger

	mu   sync.RWMutex // guards node, which connect and leave replace
	node *consensus.Node

	// leaving is set while the node takes itself out, so it does not register itself again.
	leaving atomic.Bool
	// removed says why this node is no longer a member, once WatchRemoval found it taken out.
	removed atomic.Pointer[string]
	// lastKnown is what rememberKnown wrote last (under mu).
	lastKnown *known
}

// Open starts this node's consensus member; bootstrap makes a node without history a cluster of
// one. The Raft address is then fixed at the port actually bound, so that reopening it (connect,
// leave) binds the same one, not "any port" again.
func Open(cfg Config, bootstrap bool) (*Membership, error) {
	m := &Membership{cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default())}
	node, err := m.open(bootstrap)
	if err != nil {
		return nil, err
	}
	m.node = node
	m.self = consensus.Member{Name: cfg.Name, RaftAddr: node.Addr(), APIAddr: cfg.APIAddr, Labels: cfg.Labels}
	m.cfg.Bind = rebind(cfg.Bind, node.Addr())
	return m, nil
}

// rebind keeps bind's host and takes the port actually bound from addr.
func rebind(bind, addr string) string {
	host, _, err := net.SplitHostPort(bind)
	_, port, err2 := net.SplitHostPort(addr)
	if err != nil || err2 != nil {
		return bind
	}
	return net.JoinHostPort(host, port)
}

func (m *Membership) open(bootstrap bool) (*consensus.Node, error) {
	cfg := consensus.Config{
		Name:      m.cfg.Name,
		Dir:       m.cfg.RaftDir,
		Bind:      m.cfg.Bind,
		Advertise: m.cfg.Advertise,
		Identity:  m.cfg.Identity,
		Bootstrap: bootstrap,
		Log:       m.log,
	}
	if m.cfg.Transport != nil {
		cfg.Transport = m.cfg.Transport()
	}
	return consensus.Open(cfg)
}

// Reset throws this node's Raft history away and reopens it: bootstrapped as a cluster of one,
// or empty, waiting to be added by another cluster's leader.
func (m *Membership) Reset(bootstrap bool) error {
	m.removed.Store(nil)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.node.Close(); err != nil {
		m.log.Warn("closing raft before reset", "err", err)
	}
	if err := os.RemoveAll(m.cfg.RaftDir); err != nil {
		return fmt.Errorf("clear raft folder: %w", err)
	}
	m.lastKnown = nil // went with the folder
	n, err := m.open(bootstrap)
	if err != nil {
		return err
	}
	m.node = n
	return nil
}

// Node is the current consensus member.
func (m *Membership) Node() *consensus.Node {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.node
}

// Self is this node as the registry records it.
func (m *Membership) Self() consensus.Member { return m.self }

// Close shuts the consensus member down.
func (m *Membership) Close() error { return m.Node().Close() }

// Registered reports whether the registry holds this node's current addresses and labels.
func (m *Membership) Registered() bool {
	r, ok := m.Node().Member(m.self.Name)
	return ok && r.RaftAddr == m.self.RaftAddr && r.APIAddr == m.self.APIAddr && maps.Equal(r.Labels, m.self.Labels)
}

// KeepRegistered makes sure, until ctx ends, that the registry holds this node's current
// addresses: after bootstrap, after a restart at a new API address, after a failed removal. Only
// a voter or non-voter in Raft's configuration registers; a node taken out stays out. While
// registered it calls each at every look (the node's record of its ducks rides along).
func (m *Membership) KeepRegistered(ctx context.Context, each func()) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		m.rememberKnown()
		if m.Registered() && each != nil {
			each()
		}
		if !m.Registered() && m.inConfiguration() && !m.leaving.Load() {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			self := m.self
			err := m.OnLeader(rctx, "/v1/register", self, nil, func(n *consensus.Node) error {
				return n.Register(self, ApplyTimeout)
			})
			cancel()
			if err != nil {
				m.log.Debug("register", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Membership) inConfiguration() bool {
	servers, err := m.Node().Servers()
	if err != nil {
		return false
	}
	for _, s := range servers {
		if string(s.ID) == m.self.Name {
			return true
		}
	}
	return false
}

// OnLeader runs local on this node if it leads, or sends in to the same path on the leader,
// waiting briefly through an election.
func (m *Membership) OnLeader(ctx context.Context, path string, in, out any, local func(*consensus.Node) error) error {
	if why := m.removed.Load(); why != nil {
		return &api.APIError{Status: http.StatusConflict, Message: *why}
	}
	// Bounded whatever the caller's patience: without a leader the answer does not improve.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var unreachable error
	began, asked := time.Now(), false
	for {
		n := m.Node()
		if name, _ := n.Leader(); name == "" && !asked && operatorWrite(path) && time.Since(began) > quorumAfter {
			// No leader past an election's usual length: ask whether a majority of voters
			// answers at all. Without one an operator waits for nothing, and deploy, undo and
			// pause waited out the 30 s before saying so (found by an outside probe). A node's
			// own writes (reports, registration) wait on: they are retried, and the voters may
			// be back by then.
			asked = true
			if err := m.quorum(ctx); err != nil {
				return err
			}
		}
		if n.IsLeader() {
			// Leadership lost under an entry means it may or may not commit: every command
			// through here is safe to propose again (commits of the same bundle, reports and
			// registrations are idempotent), so go find the new leader and do.
			err := local(n)
			if !errors.Is(err, consensus.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
				return err
			}
		}
		name, _ := n.Leader()
		if r, ok := n.Member(name); ok && name != m.self.Name {
			index, err := m.cfg.Peers.Forward(ctx, r.APIAddr, path, in, out)
			if err == nil && path != "/v1/report" {
				// Whoever asked this node reads from it next (`rollout undo`, then the rollout
				// it prints): answer once this node's state holds the write too. A node's own
				// reports need no such wait: its rollout loop acts on the log as it arrives.
				err = m.awaitIndex(ctx, index)
			}
			var ae *api.APIError
			if err == nil || errors.As(err, &ae) || ctx.Err() != nil {
				return err
			}
			// The leader did not answer: it may have just died, before this node noticed. Wait
			// for the next one rather than fail a call a new leader would take.
			m.log.Debug("leader unreachable, waiting for the next", "leader", name, "err", err)
			unreachable = fmt.Errorf("%w: leader %s at %s does not answer (%v): `members` shows who is reachable", ErrNoLeader, name, r.APIAddr, err)
		}
		select {
		case <-ctx.Done():
			if unreachable != nil {
				return unreachable
			}
			if name != "" && name != m.self.Name {
				return fmt.Errorf("%w: leader %s has not registered its API address yet; retry in a moment", ErrNoLeader, name)
			}
			return fmt.Errorf("%w elected: is a majority of the cluster up? `members` shows who is reachable", ErrNoLeader)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// operatorWrite reports whether a write through path is an operator's (deploy, and what
// `rollout` changes), told at once when no majority of voters answers.
func operatorWrite(path string) bool { return path == "/v1/commit" || path == "/v1/rollout" }

// quorumAfter is how long a write waits for a leader before it asks whether enough voters
// answer to elect one (an election here takes well under a second).
const quorumAfter = 1500 * time.Millisecond

// awaitIndex waits until this node's state holds the log up to index, or ctx ends (OnLeader
// bounds it at 30 s). A follower learns of a commit up to raft's CommitTimeout after the leader.
func (m *Membership) awaitIndex(ctx context.Context, index uint64) error {
	for {
		n := m.Node()
		changed := n.Changed()
		if n.Index() >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the leader took the change, but node %s has not applied it (at %d of %d): `rollout status` on the leader shows it", m.self.Name, n.Index(), index)
		case <-changed:
		}
	}
}

// catchUpBound bounds CatchUp: past it a read answers from what this node holds.
const catchUpBound = 2 * time.Second

// CatchUp waits, briefly, until this node's state holds every entry the leader's state held
// when asked, so that a read through any node shows what an earlier answer through another
// showed (`rollout undo` through one node says reverted; `rollout history` through the next
// must not say reverting). Only reads call it. Without a leader in reach it returns and the
// caller answers from what this node holds: a cluster that lost its leader still shows its
// state. A leader deposed without knowing it yet answers with what it holds, which may miss
// the newest entries of its successor for up to an election timeout.
func (m *Membership) CatchUp(ctx context.Context) {
	n := m.Node()
	if n.IsLeader() {
		// Every write this leader acknowledged was applied to its state before it answered.
		return
	}
	name, _ := n.Leader()
	r, ok := n.Member(name)
	if !ok || name == m.self.Name {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, catchUpBound)
	defer cancel()
	var p api.Ping
	if err := m.cfg.Peers.Do(ctx, r.APIAddr, http.MethodGet, "/v1/ping", nil, &p); err != nil {
		m.log.Debug("read without catching up: the leader did not answer", "leader", name, "err", err)
		return
	}
	if err := m.awaitIndex(ctx, p.StateIndex); err != nil {
		m.log.Debug("read without catching up", "leader", name, "err", err)
	}
}

// Apply has the leader commit c; a follower sends it to path on the leader, in the log's JSON.
func (m *Membership) Apply(ctx context.Context, path string, c consensus.Change) error {
	b, err := consensus.Encode(c)
	if err != nil {
		return err
	}
	return m.OnLeader(ctx, path, api.Entry(b), nil, func(n *consensus.Node) error { return n.Apply(c, ApplyTimeout) })
}

// Connect joins this node to the cluster at addr. A node gives up its own (one-node) history
// to join, so only a fresh node may: merging two histories is not something Raft can do.
func (m *Membership) Connect(ctx context.Context, addr string) error {
	var theirs []api.MemberStatus
	if err := m.cfg.Peers.Do(ctx, addr, http.MethodGet, "/v1/members", nil, &theirs); err != nil {
		return fmt.Errorf("cannot reach %s: %w", addr, err)
	}
	for _, r := range theirs {
		if r.Name != m.self.Name {
			continue
		}
		if r.RaftAddr == m.self.RaftAddr {
			return nil // already connected: Node.connect is idempotent too
		}
		return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("%v: a node named %s is already a member of %s's cluster (raft %s); start this node with another --name", consensus.ErrNameTaken, r.Name, addr, r.RaftAddr)}
	}
	n := m.Node()
	if !n.Fresh(m.self.Name) {
		return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("%v (members %s): only a fresh node joins another cluster; connect the other node to this one instead, or start this one on an empty --data-dir", ErrHasHistory, strings.Join(n.MemberNames(), ", "))}
	}

	m.log.Info("joining", "via", addr)
	if err := m.Reset(false); err != nil {
		return fmt.Errorf("prepare to join: %w", err)
	}
	if err := m.cfg.Peers.Do(ctx, addr, http.MethodPost, "/v1/join", m.self, nil); err != nil {
		// Back to being a cluster of one, as before the attempt.
		if rerr := m.Reset(true); rerr != nil {
			m.log.Error("could not return to a cluster of one after a failed join", "err", rerr)
		}
		return fmt.Errorf("join through %s: %w", addr, err)
	}
	for !m.Registered() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("joined through %s, but this node has not caught up with the log yet; check `members` in a moment", addr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Written down at once: a node killed a moment after joining, and forgotten, had nobody to
	// ask whether it was still a member once started again (its state starts from a snapshot
	// it had not taken yet).
	m.rememberKnown()
	// Caught up (the log has reached our own registration): now we may vote.
	if err := m.Promote(ctx, m.self.Name); err != nil {
		return fmt.Errorf("joined through %s as a non-voter, but could not ask to vote: %w; run connect again", addr, err)
	}
	leader, _ := m.Node().Leader()
	m.log.Info("joined", "via", addr, "leader", leader)
	return nil
}

// Join has the leader add member r to Raft's configuration, as a non-voter.
func (m *Membership) Join(ctx context.Context, r consensus.Member) error {
	return m.OnLeader(ctx, "/v1/join", r, nil, func(n *consensus.Node) error {
		return n.Join(r, ApplyTimeout)
	})
}

// Register has the leader record member r's addresses.
func (m *Membership) Register(ctx context.Context, r consensus.Member) error {
	return m.OnLeader(ctx, "/v1/register", r, nil, func(n *consensus.Node) error {
		return n.Register(r, ApplyTimeout)
	})
}

// Promote has the leader make member name a voter, while there are fewer than the leader's
// number of voters.
func (m *Membership) Promote(ctx context.Context, name string) error {
	return m.OnLeader(ctx, "/v1/promote", api.NameRequest{Name: name}, nil, func(n *consensus.Node) error {
		return n.Promote(name, m.cfg.Voters, ApplyTimeout, func() error { return m.readyToVote(ctx, n, name) })
	})
}

// SyncLog makes this node's copy of the log durable (see consensus.Node.SyncLog): a leader asks
// it of a non-voter before it makes it a voter.
func (m *Membership) SyncLog() error { return m.Node().SyncLog() }

// readyToVote has member name sync its log, on the leader n, before n makes it a voter: a
// non-voter's log is not synced (consensus/logstore), and a voter's copy counts towards
// commits. A member that cannot say it did stays a non-voter.
func (m *Membership) readyToVote(ctx context.Context, n *consensus.Node, name string) error {
	if name == m.self.Name {
		return n.SyncLog()
	}
	mem, ok := n.Member(name)
	if !ok || mem.APIAddr == "" {
		return fmt.Errorf("%s is not registered: no address to ask it to sync its log", name)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Named: the address may be another node's by now, which must not answer for it.
	err := m.cfg.Peers.Do(ctx, mem.APIAddr, http.MethodPost, "/v1/sync-log", api.NameRequest{Name: name}, nil)
	var ae *api.APIError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		// A node of an earlier release, which has no such route: it syncs its log at every
		// write. (Refusing it would leave the autopilot unable to replace a lost voter while
		// the nodes themselves are being upgraded.)
		return nil
	}
	if err != nil {
		return fmt.Errorf("asking %s to sync its log: %w", name, err)
	}
	return nil
}

// Remove has the leader take member name out of the cluster.
func (m *Membership) Remove(ctx context.Context, name string) error {
	if err := m.quorum(ctx); err != nil {
		return err
	}
	return m.OnLeader(ctx, "/v1/remove", api.NameRequest{Name: name}, nil, func(n *consensus.Node) error {
		if err := m.votersLeftAnswer(ctx, n, name); err != nil {
			return err
		}
		return n.Remove(name, ApplyTimeout)
	})
}

// votersLeftAnswer refuses, on the leader, the removal of voter name when the voters left
// behind do not answer as a majority. The leader's own heartbeat view (consensus.Node.Remove
// checks it too) starts empty at each election and learns of a member that stopped only when a
// heartbeat to it fails, up to raft's transport timeout later: a removal in those seconds went
// ahead, waited out its time limit and left the member half out. So the leader also asks each
// of them.
func (m *Membership) votersLeftAnswer(ctx context.Context, n *consensus.Node, name string) error {
	servers, err := n.Servers()
	if err != nil {
		return nil // consensus.Node.Remove says why
	}
	var left []string
	isVoter := false
	for _, s := range servers {
		switch {
		case s.Suffrage != raft.Voter:
		case string(s.ID) == name:
			isVoter = true
		default:
			left = append(left, string(s.ID))
		}
	}
	if !isVoter || len(left) == 0 {
		return nil // not a voter, or the only one: consensus.Node.Remove says which
	}
	slices.Sort(left)
	down := m.silent(ctx, n, left)
	if len(left)-len(down) > len(left)/2 {
		return nil
	}
	return consensus.NoMajorityLeft(name, left, down)
}

// silent is, of the members named, those other than this node that do not answer a ping
// within a second, sorted.
func (m *Membership) silent(ctx context.Context, n *consensus.Node, names []string) []string {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var down []string
	for _, name := range names {
		if name == m.self.Name {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := false
			if r, known := n.Member(name); known && r.APIAddr != "" {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				var p api.Ping
				ok = m.cfg.Peers.Do(pctx, r.APIAddr, http.MethodGet, "/v1/ping", nil, &p) == nil && p.Name == name
				cancel()
			}
			if !ok {
				mu.Lock()
				down = append(down, name)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(down)
	return down
}

// quorum says, while this node knows no leader, whether too few voters answer for one to be
// elected: `forget` and `leave` waited out OnLeader's 30 s before saying there was no leader,
// where `status` knew at once that the cluster could not commit. With a leader known, or a
// majority answering (an election under way), it says nothing and the change goes ahead.
func (m *Membership) quorum(ctx context.Context) error {
	if why := m.removed.Load(); why != nil {
		return &api.APIError{Status: http.StatusConflict, Message: *why}
	}
	n := m.Node()
	if name, _ := n.Leader(); name != "" {
		return nil
	}
	servers, err := n.Servers()
	if err != nil {
		return nil
	}
	var voters []string
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters = append(voters, string(s.ID))
		}
	}
	down := m.silent(ctx, n, voters)
	up := len(voters) - len(down)
	if len(voters) == 0 || up > len(voters)/2 {
		return nil
	}
	return &api.APIError{Status: http.StatusServiceUnavailable, Message: fmt.Sprintf("%v: only %d of the %d voters answer (%s do not), fewer than the %d needed to elect a leader and commit the change; bring them back first (`members` shows who is reachable)", ErrNoLeader, up, len(voters), strings.Join(down, ", "), len(voters)/2+1)}
}

// Leave takes this node out of its cluster; it carries on as a fresh cluster of one, so it can
// connect elsewhere, as a node does after Node.disconnect. forget runs once the node is out,
// before it starts again alone: what it remembers of the old cluster's rollouts goes with it.
func (m *Membership) Leave(ctx context.Context, forget func()) error {
	if len(m.Node().MemberNames()) <= 1 {
		return &api.APIError{Status: http.StatusConflict, Message: "this node is a cluster of one: there is nothing to leave"}
	}
	m.leaving.Store(true)
	defer m.leaving.Store(false)
	if err := m.Remove(ctx, m.self.Name); err != nil {
		return err
	}
	forget()
	if err := m.Reset(true); err != nil {
		return fmt.Errorf("left the cluster, but could not restart as a cluster of one: %w; restart the node", err)
	}
	return nil
}

// WatchRemoval notices, until ctx ends, that this node was taken out of its cluster while it was
// down (`forget`, then the node started again on its old data folder): its peers ignore it, and
// it campaigned for ever while every write through it waited out its time limit with "no
// answer" (found by trying it). After removalAfter without a leader it asks the members it
// remembers, each removalAfter, whether it is still one of theirs (askWhetherMember says whom it
// believes); once the leader of its own cluster says no, writes through this node fail at once
// saying what to do, and the log says it once. A later yes, or a leader, clears it.
func (m *Membership) WatchRemoval(ctx context.Context) {
	t := time.NewTicker(removalAfter)
	defer t.Stop()
	var alone time.Time // since when no leader is known
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := m.Node()
		if name, _ := n.Leader(); name != "" || m.leaving.Load() {
			alone = time.Time{}
			m.removed.Store(nil) // led again: a member after all
			continue
		}
		if alone.IsZero() {
			alone = time.Now()
		}
		if time.Since(alone) < removalAfter {
			continue
		}
		why, known := m.askWhetherMember(ctx, n)
		if !known || m.Node() != n {
			continue // no leader answered, or this node was reset meanwhile
		}
		was := m.removed.Swap(nilIfEmpty(why))
		if why != "" && was == nil {
			m.log.Error(why)
		}
	}
}

// Removed says why this node is no longer a member of its cluster, once WatchRemoval found it
// taken out; "" while it is one (or does not know otherwise).
func (m *Membership) Removed() string {
	if why := m.removed.Load(); why != nil {
		return *why
	}
	return ""
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// known is what this node last knew of its cluster, kept beside its Raft data (and gone with it
// at a reset): after a restart its state holds only what was committed up to its snapshot
// until a leader says how far the log is committed, and a node taken out of its cluster never
// hears from one (its peers ignore it). Without this it had nobody to ask whether it was still
// a member, and `status` through it showed every member with no address.
type known struct {
	Cluster string            `json:"cluster,omitempty"`
	Members map[string]string `json:"members"` // name -> API address
}

func (m *Membership) knownPath() string { return filepath.Join(m.cfg.RaftDir, "known.json") }

// rememberKnown writes what this node's state says of its cluster when it differs from what was
// written last, and only while the node has a leader: a restarted node's state starts from its
// snapshot, older than the file, until a leader says what is committed, and a node taken out
// never hears from one.
func (m *Membership) rememberKnown() {
	n := m.Node()
	if leader, _ := n.Leader(); leader == "" {
		return
	}
	now := known{Cluster: n.Cluster(), Members: apiAddrs(n)}
	if len(now.Members) == 0 {
		return
	}
	// Under mu, and only for the node still in place: a Reset (connect, leave) between the
	// read and the write put the old cluster into the new Raft folder.
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.node != n || m.lastKnown != nil && m.lastKnown.Cluster == now.Cluster && maps.Equal(m.lastKnown.Members, now.Members) {
		return
	}
	b, _ := json.Marshal(now)
	if err := atomicfile.Write(m.knownPath(), b, 0o600); err != nil {
		m.log.Debug("remembering the cluster", "err", err)
		return
	}
	m.lastKnown = &now
}

// remembered is the members to ask whether this node is still one of them (name -> API
// address) and its cluster's name: its state's, completed by what it wrote last.
func (m *Membership) remembered(n *consensus.Node) (map[string]string, string) {
	var k known
	if b, err := os.ReadFile(m.knownPath()); err == nil {
		json.Unmarshal(b, &k)
	}
	out := apiAddrs(n)
	for name, addr := range k.Members {
		if _, ok := out[name]; !ok {
			out[name] = addr
		}
	}
	return out, cmp.Or(n.Cluster(), k.Cluster)
}

// apiAddrs is the API address of every member n's state records one for.
func apiAddrs(n *consensus.Node) map[string]string {
	out := map[string]string{}
	for name, r := range n.Members() {
		if r.APIAddr != "" {
			out[name] = r.APIAddr
		}
	}
	return out
}

// removalAfter is how long a node goes without a leader before it asks whether it was removed,
// and how often it asks again.
const removalAfter = 6 * time.Second

// askWhetherMember asks a few of the members this node remembers whether it is one of theirs. It
// believes only a leader of this node's own cluster: a member that answers with a leader is asked
// who its members are, and the answer counts only if that leader is one this node remembers and
// the members overlap with the ones it remembers beyond the one asked (a member that has since
// left is a cluster of one, whose leader knows nothing of this node). known is false when no
// such answer came; why is empty while this node is a member.
func (m *Membership) askWhetherMember(ctx context.Context, n *consensus.Node) (why string, known bool) {
	remembered, own := m.remembered(n)
	asked := 0
	for name, apiAddr := range remembered {
		if name == m.self.Name {
			continue
		}
		if asked == 3 {
			break // the rest next round: no node asks a whole cluster while there is no leader
		}
		asked++
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		var p api.Ping
		err := m.cfg.Peers.Do(actx, apiAddr, http.MethodGet, "/v1/ping", nil, &p)
		if err != nil || p.Name != name || p.Leader == "" {
			cancel()
			continue // down, or no wiser than this node
		}
		if _, ok := remembered[p.Leader]; !ok {
			cancel()
			continue // led by a node this one never knew: another cluster
		}
		// Named clusters say outright whether the member is of this node's cluster: one that
		// left leads a cluster of its own with another name, and the cluster this node was
		// taken out of may be down to one member, which the overlap below cannot tell apart.
		sameCluster := own != "" && p.Cluster == own
		if own != "" && p.Cluster != "" && !sameCluster {
			cancel()
			continue
		}
		var ms []api.MemberStatus
		err = m.cfg.Peers.Do(actx, apiAddr, http.MethodGet, "/v1/members", nil, &ms)
		cancel()
		if err != nil {
			continue
		}
		in, overlap := false, 0
		for _, s := range ms {
			if s.Name == m.self.Name {
				in = true
			} else if _, ok := remembered[s.Name]; ok && s.Name != name {
				overlap++
			}
		}
		switch {
		case in:
			return "", true
		case overlap == 0 && !sameCluster:
			continue
		}
		return fmt.Sprintf("this node (%s) is not a member of its cluster any more: it was taken out (`forget` while it was down, or a `leave` that did not finish), so the other members ignore it (%s, led by %s, says so). To bring it back, stop it, move its --data-dir aside, start it on an empty one and `connect` it to a member", m.self.Name, name, p.Leader), true
	}
	return "", false
}

// maxTrailing is how many entries a non-voter's state may be behind the leader's and still be
// promoted, as Consul's autopilot allows 250 (MaxTrailingLogs): entries arrive in batches, so a
// member that follows the log is seldom exactly level.
const maxTrailing = 256

// caughtUp asks member name how far its state holds the log: a non-voter the leader's
// heartbeats reach may still be receiving an old stretch of it (just joined, or back from a
// partition), and promoted then it counts in the quorum before it can help make one.
func (m *Membership) caughtUp(ctx context.Context, n *consensus.Node, name string) bool {
	mem, ok := n.Member(name)
	if !ok || mem.APIAddr == "" {
		return false
	}
	want := n.Index()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var p api.Ping
	if err := m.cfg.Peers.Do(ctx, mem.APIAddr, http.MethodGet, "/v1/ping", nil, &p); err != nil || p.Name != name {
		m.log.Debug("not promoted: did not answer", "member", name, "err", err)
		return false
	}
	if p.StateIndex+maxTrailing < want {
		m.log.Info("not promoted yet: behind the log", "member", name, "at", p.StateIndex, "leader at", want)
		return false
	}
	return true
}

// KeepVoters is the leader's autopilot, until ctx ends: it keeps the cluster at its number of
// voters, replacing a voter it has lost for long with a non-voter it reaches
// and that holds the log (consensus.PlanVoters decides).
func (m *Membership) KeepVoters(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	replaceAfter := cmp.Or(m.cfg.ReplaceVoterAfter, 10*time.Second)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := m.Node()
		// A voter whose log is unsynced (promoted without being asked to sync it, by a leader
		// of an earlier release) syncs it now, leader or not: its copy counts.
		if did, err := n.SyncLogIfVoter(); err != nil {
			m.log.Error("syncing the log of this voter", "err", err)
		} else if did {
			m.log.Warn("this node votes but its log was not synced: synced it now")
		}
		if !n.IsLeader() {
			continue
		}
		if n.Cluster() == "" {
			// A cluster from before clusters had names, or just started: name it, once.
			var b [8]byte
			rand.Read(b[:])
			if err := n.Apply(consensus.NameCluster{Name: hex.EncodeToString(b[:])}, ApplyTimeout); err != nil {
				m.log.Warn("naming the cluster", "err", err)
			}
		}
		if dropped, err := n.DropUnconfigured(ApplyTimeout); err != nil {
			m.log.Warn("dropping registrations of nodes taken out", "err", err)
		} else if len(dropped) > 0 {
			m.log.Info("dropped the registrations of nodes taken out of the cluster", "names", dropped)
		}
		servers, err := n.Servers()
		if err != nil {
			continue
		}
		ch := consensus.PlanVoters(servers, n.Silence(), m.self.Name, m.cfg.Voters, replaceAfter, func(name string) bool { return m.caughtUp(ctx, n, name) })
		switch {
		case ch.Promote != "":
			err = n.Promote(ch.Promote, len(servers), ApplyTimeout, func() error { return m.readyToVote(ctx, n, ch.Promote) })
		case ch.Demote != "":
			err = n.Demote(ch.Demote, ApplyTimeout)
		default:
			continue
		}
		if err != nil {
			m.log.Warn("voters", "promote", ch.Promote, "demote", ch.Demote, "err", err)
			continue
		}
		m.log.Info("voters", "promote", ch.Promote, "demote", ch.Demote, "why", ch.Why)
	}
}
