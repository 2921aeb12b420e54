// Package consensus owns the cluster's agreement: a hashicorp/raft node whose log and stable
// store are a bbolt file and whose snapshots are files, all in the node's data folder; the FSM
// that holds what the cluster agrees on; and membership (join, remove). Raft talks over the
// wire package's cookie-keyed TLS.
package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/consensus/logstore"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/wire"
)

// ErrNotLeader means the call must be made on the leader; callers forward it there.
var ErrNotLeader = raft.ErrNotLeader

// ErrRefused wraps the FSM's refusal of a committed command (a version already rolling out, a
// report about another rollout): the log worked, the command was not valid. Anything else Apply
// returns is Raft's own error (lost leadership, a timeout) and may be tried again.
var ErrRefused = errors.New("refused")

// ErrNameTaken means another node already uses the name in this cluster.
var ErrNameTaken = errors.New("name already in the cluster")

// Config says how to open a node.
type Config struct {
	Name string // the node's name, also its Raft server ID
	Dir  string // the Raft folder: raft.db and snapshots/

	// Bind and Advertise are the Raft address listened on and the one peers dial; Advertise
	// defaults to Bind's host with the port actually bound.
	Bind, Advertise string
	Identity        *wire.Identity

	// Bootstrap makes a node without history a cluster of one. A node about to join another
	// cluster opens without it and waits for the leader to add it.
	Bootstrap bool

	// Transport replaces the TCP transport (tests use raft's in-memory one); Bind, Advertise
	// and Identity are then ignored.
	Transport raft.Transport

	Log *slog.Logger
}

// Node is a running Raft member.
type Node struct {
	raft *raft.Raft
	fsm  *fsm

	name      string
	store     *logstore.Store
	transport raft.Transport
	log       *slog.Logger
	contacts  *contacts
	stopFit   chan struct{} // stops fitTimeouts
	fitDone   chan struct{}

	promoting sync.Mutex // held by Promote: one promotion at a time
	cfgMu     sync.Mutex // held while a member is taken out, and by Promote's last check
	removals  uint64     // members taken out of the voters or the cluster (Promote checks)
}

// Timings for a cluster on one machine or a LAN.
//
// The heartbeat and election timeouts follow the cluster's size (fitTimeouts): 400 ms while it
// has fewer than largeCluster members, so that a node started alone leads at once and a dead
// leader is replaced within about a second, and raft's 1 s from there on. The leader heartbeats
// every follower every HeartbeatTimeout/10 to 2/10, each an RPC over TLS: at 400 ms that was
// 1,700 RPCs a second at a hundred members, and the idle cluster took 0.9 of the machine's 2
// cores; at 1 s it takes 0.65, and a 100-node rollout finished in 3.4 to 4.3 s against 3.8 to
// 7.8 s (`bench --nodes 100`, alternated, docs/BENCHMARKS.md section 6).
func tune(c *raft.Config) {
	c.HeartbeatTimeout = smallTimeout
	c.ElectionTimeout = smallTimeout
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 50 * time.Millisecond
}

// The heartbeat and election timeouts by the cluster's size (see tune).
const (
	smallTimeout = 400 * time.Millisecond
	largeTimeout = time.Second
	largeCluster = 10 // members (voters and not) from which largeTimeout applies
)

// timeoutFor is the heartbeat and election timeout for a cluster of this many members.
func timeoutFor(members int) time.Duration {
	if members >= largeCluster {
		return largeTimeout
	}
	return smallTimeout
}

// fitTimeouts keeps raft's timeouts fitted to the size of the cluster this node sees, looking
// once a second. Each node decides for itself; raft's timeouts are local, so nodes that see a
// change a moment apart disagree safely.
func (n *Node) fitTimeouts() {
	defer close(n.fitDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if servers, err := n.Servers(); err == nil {
			if err := n.fit(len(servers)); err != nil {
				n.log.Warn("fit raft's timeouts to the cluster's size", "members", len(servers), "err", err)
			}
		}
		select {
		case <-n.stopFit:
			return
		case <-t.C:
		}
	}
}

// fit sets raft's heartbeat and election timeouts for a cluster of this many members.
func (n *Node) fit(members int) error {
	want := timeoutFor(members)
	rc := n.raft.ReloadableConfig()
	if rc.HeartbeatTimeout == want && rc.ElectionTimeout == want {
		return nil
	}
	rc.HeartbeatTimeout, rc.ElectionTimeout = want, want
	return n.raft.ReloadConfig(rc)
}

// Open starts the Raft node described by cfg, bootstrapping a cluster of one when asked and the
// folder holds no history.
func Open(cfg Config) (*Node, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("raft folder: %w", err)
	}
	rlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})

	// A node opened to join a cluster joins as a non-voter: its log is not synced until it is
	// about to vote (SyncLog). One bootstrapped alone is a voter from the start.
	store, err := logstore.Open(filepath.Join(cfg.Dir, "raft.db"), !cfg.Bootstrap, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w (is another node running on this data folder?)", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	logs, err := raft.NewLogCache(512, store)
	if err != nil {
		store.Close()
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, rlog)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("snapshot store: %w", err)
	}

	trans := cfg.Transport
	if trans == nil {
		trans, err = newTCPTransport(cfg, rlog)
		if err != nil {
			store.Close()
			return nil, err
		}
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.Logger = rlog
	tune(rc)

	f := newFSM()
	r, err := raft.NewRaft(rc, f, logs, store, snaps, trans)
	if err != nil {
		closeTransport(trans)
		store.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n := &Node{raft: r, fsm: f, name: cfg.Name, store: store, transport: trans, log: cfg.Log, contacts: watchContacts(r),
		stopFit: make(chan struct{}), fitDone: make(chan struct{})}
	go n.fitTimeouts()

	if cfg.Bootstrap {
		has, err := raft.HasExistingState(logs, store, snaps)
		if err != nil {
			n.Close()
			return nil, err
		}
		if !has {
			// A node that bootstraps votes: its log is synced whatever it was opened as (a node
			// stopped in the middle of a connect, say, opened unsynced to join).
			if err := store.Sync(); err != nil {
				n.Close()
				return nil, err
			}
			boot := raft.Configuration{Servers: []raft.Server{{
				Suffrage: raft.Voter, ID: raft.ServerID(cfg.Name), Address: trans.LocalAddr(),
			}}}
			if err := r.BootstrapCluster(boot).Error(); err != nil {
				n.Close()
				return nil, fmt.Errorf("bootstrap a cluster of one: %w", err)
			}
		}
	}
	return n, nil
}

func newTCPTransport(cfg Config, rlog hclog.Logger) (*raft.NetworkTransport, error) {
	ln, err := cfg.Identity.Listen("tcp", cfg.Bind, false, cfg.Log.With("listener", "raft"))
	if err != nil {
		return nil, fmt.Errorf("raft address %s: %w", cfg.Bind, err)
	}
	adv, err := advertised(cfg.Advertise, ln.Addr())
	if err != nil {
		ln.Close()
		return nil, err
	}
	layer := &streamLayer{Listener: ln, id: cfg.Identity, advertise: adv}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: 3,
		Timeout: 5 * time.Second,
		Logger:  rlog,
		// One AppendEntries in flight: raft v1.7.3's pipeline (2 in flight, the default) can
		// deadlock once a follower answers Success=false (after a cut, say): the sender waits
		// on a queue the reader of responses no longer drains. The follower then gets no
		// entry until the leader changes, and the leader's Shutdown hangs (a nemesis run
		// caught a node that did not stop). Raft's own notes find pipelining of little use
		// but on high-latency links.
		MaxRPCsInFlight: 1,
	}), nil
}

// advertised is the address peers dial: the configured one, or the bound one. A node bound to
// 0.0.0.0 must be told what to advertise, since peers cannot dial "any address".
func advertised(adv string, bound net.Addr) (net.Addr, error) {
	tcp := bound.(*net.TCPAddr)
	if adv == "" {
		if tcp.IP.IsUnspecified() {
			return nil, fmt.Errorf("raft listens on %s, which peers cannot dial: pass --advertise HOST", tcp)
		}
		return tcp, nil
	}
	host, port, err := net.SplitHostPort(adv)
	if err != nil {
		host, port = adv, ""
	}
	if port == "" || port == "0" {
		port = fmt.Sprint(tcp.Port)
	}
	return net.ResolveTCPAddr("tcp", net.JoinHostPort(host, port))
}

func closeTransport(t raft.Transport) {
	if c, ok := t.(io.Closer); ok {
		c.Close()
	}
}

// Name is this node's name.
func (n *Node) Name() string { return n.name }

// Addr is the Raft address peers dial.
func (n *Node) Addr() string { return string(n.transport.LocalAddr()) }

// IsLeader reports whether this node leads now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader names the current leader and its Raft address; both empty when none is known.
func (n *Node) Leader() (name, addr string) {
	a, id := n.raft.LeaderWithID()
	return string(id), string(a)
}

// Servers is Raft's current configuration: who is in the cluster and who votes.
func (n *Node) Servers() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	return f.Configuration().Servers, nil
}

// SyncLog makes this node's copy of the log durable, now and at every later write: a node joins
// as a non-voter with its log unsynced (consensus/logstore), and must call this before it is
// made a voter, since from then on its copy counts towards commits.
func (n *Node) SyncLog() error { return n.store.Sync() }

// LogSynced says whether this node's log is synced at every write (a voter's must be).
func (n *Node) LogSynced() bool { return !n.store.Unsynced() }

// SyncLogIfVoter syncs the log of a node that votes in the configuration it sees although its
// log is unsynced: made a voter without SyncLog (by a leader of an older release). It says
// whether it did.
func (n *Node) SyncLogIfVoter() (bool, error) {
	if !n.store.Unsynced() {
		return false, nil
	}
	servers, err := n.Servers()
	if err != nil {
		return false, err
	}
	for _, s := range servers {
		if string(s.ID) == n.name && s.Suffrage == raft.Voter {
			return true, n.store.Sync()
		}
	}
	return false, nil
}

// Apply commits a change through the log and returns the FSM's verdict. Only the leader may.
func (n *Node) Apply(c Change, timeout time.Duration) error {
	b, err := Encode(c)
	if err != nil {
		return err
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		return err
	}
	if err, ok := f.Response().(error); ok {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return nil
}

// leaderServers is Raft's configuration, for a change only the leader may make.
func (n *Node) leaderServers() ([]raft.Server, error) {
	if !n.IsLeader() {
		return nil, ErrNotLeader
	}
	return n.Servers()
}

// Join adds m to the cluster as a non-voter and records its addresses. A new member only votes
// once it has caught up (see Promote): added as a voter at once, a node that never comes up
// would leave a cluster of one without a majority. Join is idempotent for a node already in the
// cluster at the same Raft address, and refuses a name or an address another node holds.
func (n *Node) Join(m Member, timeout time.Duration) error {
	servers, err := n.leaderServers()
	if err != nil {
		return err
	}
	for _, s := range servers {
		switch {
		case string(s.ID) == m.Name && string(s.Address) != m.RaftAddr:
			return fmt.Errorf("%w: a node named %s is already a member (raft %s); start the new node with another --name, or `forget %s` first if the old one is gone for good", ErrNameTaken, m.Name, s.Address, m.Name)
		case string(s.ID) != m.Name && string(s.Address) == m.RaftAddr:
			return fmt.Errorf("raft address %s already belongs to member %s: give the new node its own --raft-addr", m.RaftAddr, s.ID)
		case string(s.ID) == m.Name && s.Suffrage == raft.Voter:
			return n.Apply(Register{Member: m}, timeout)
		}
	}
	if err := n.raft.AddNonvoter(raft.ServerID(m.Name), raft.ServerAddress(m.RaftAddr), 0, timeout).Error(); err != nil {
		return fmt.Errorf("add %s: %w", m.Name, err)
	}
	return n.Apply(Register{Member: m}, timeout)
}

// ErrNotConfigured means a node asked to be registered is not in Raft's configuration: it was
// taken out (forgotten while down, or its leave did not finish).
var ErrNotConfigured = errors.New("not in the cluster's configuration")

// Register records member m's addresses, on the leader, if m is in Raft's configuration. A
// node forgotten while it was down and started again on its old data still thinks it is a
// member and registers itself; recorded, it was put in the order of every later rollout (and
// counted for --canary) as a node that is never there, and `forget` could not find it.
func (n *Node) Register(m Member, timeout time.Duration) error {
	servers, err := n.leaderServers()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == m.Name }) {
		return fmt.Errorf("%w: %s was taken out of the cluster (forgotten while it was down, or a leave that did not finish); to bring it back, stop it, move its --data-dir aside, start it on an empty one and `connect` it", ErrNotConfigured, m.Name)
	}
	return n.Apply(Register{Member: m}, timeout)
}

// DropUnconfigured unregisters, on the leader, every recorded member that is not in Raft's
// configuration, and returns their names: registrations a removed node made before
// Register refused them (recorded by an older duckraft) go this way. A member is added to the
// configuration before it is registered, and unregistered before it is removed, so no member
// on its way in or out is taken for one.
func (n *Node) DropUnconfigured(timeout time.Duration) ([]string, error) {
	// The registry first: a join adds to the configuration before it registers, so a member
	// that joins between the two reads is in the configuration read second.
	names := n.MemberNames()
	servers, err := n.leaderServers()
	if err != nil {
		return nil, err
	}
	var dropped []string
	for _, name := range names {
		if slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == name }) {
			continue
		}
		if err := n.Apply(Unregister{Name: name}, timeout); err != nil {
			return dropped, err
		}
		dropped = append(dropped, name)
	}
	return dropped, nil
}

// removing makes a change that takes a member out of the voters or the cluster, counted (see
// Promote).
func (n *Node) removing(change func() error) error {
	n.cfgMu.Lock()
	defer n.cfgMu.Unlock()
	n.removals++
	return change()
}

// Promote makes a member that has caught up with the log a voter, unless the cluster already
// has max voters (0: DefaultVoters): then it stays a non-voter that follows the log. ready, when
// not nil, is called just before: it must have the member sync its log (SyncLog), since the
// leader counts the member's copy from the configuration that makes it a voter on.
//
// Promotions through this node run one at a time, so that two (a member's own, after it joins,
// and the voters' autopilot; or the first members joining together) do not each have a member
// sync for one free seat. One is refused if this node took a member out of the voters or the
// cluster while ready ran (removed, and back from an empty folder, unsynced, at the same
// address): raft's own guard, AddVoter's prevIndex, cannot be used, since raft v1.7.3's
// GetConfiguration reports index 0.
func (n *Node) Promote(name string, max int, timeout time.Duration, ready func() error) error {
	n.promoting.Lock()
	defer n.promoting.Unlock()
	n.cfgMu.Lock()
	before := n.removals
	n.cfgMu.Unlock()
	s, voters, err := n.seat(name)
	if err != nil {
		return err
	}
	if max <= 0 {
		max = DefaultVoters
	}
	if s.Suffrage == raft.Voter || voters >= max {
		return nil
	}
	if ready != nil {
		if err := ready(); err != nil {
			return fmt.Errorf("%s is not ready to vote, so it stays a non-voter: %w", name, err)
		}
	}
	n.cfgMu.Lock()
	defer n.cfgMu.Unlock()
	if n.removals != before {
		return fmt.Errorf("a member was taken out while %s synced its log: not promoted now; the voters' autopilot, or `connect`, tries again", name)
	}
	if again, _, err := n.seat(name); err != nil {
		return err
	} else if again.Suffrage == raft.Voter {
		return nil
	} else if again.Address != s.Address {
		return fmt.Errorf("%s moved to raft address %s while it synced its log: not promoted now", name, again.Address)
	}
	if err := n.raft.AddVoter(s.ID, s.Address, 0, timeout).Error(); err != nil {
		return fmt.Errorf("make %s a voter: %w", name, err)
	}
	return nil
}

// seat is member name's place in the leader's configuration, and how many vote.
func (n *Node) seat(name string) (raft.Server, int, error) {
	servers, err := n.leaderServers()
	if err != nil {
		return raft.Server{}, 0, err
	}
	voters := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	for _, s := range servers {
		if string(s.ID) == name {
			return s, voters, nil
		}
	}
	return raft.Server{}, 0, fmt.Errorf("%s is not a member: connect it first", name)
}

// Remove takes name out of the cluster: out of the voters and out of the registry.
func (n *Node) Remove(name string, timeout time.Duration) error {
	servers, err := n.leaderServers()
	if err != nil {
		return err
	}
	// Raft commits a configuration with the majority of the new one: taking out a voter while
	// the voters left behind lack a reachable majority waits out the time limit and leaves the
	// member half out (unregistered, still in the configuration until the others come back).
	// Refuse it before anything changes.
	if err := n.canLoseVoter(servers, name); err != nil {
		return err
	}
	// Registry first: once the leader has removed itself it can no longer apply anything. If the
	// removal then fails, the member re-registers itself (see the agent), so nothing is lost.
	if err := n.Apply(Unregister{Name: name}, timeout); err != nil {
		return err
	}
	if err := n.removing(func() error { return n.raft.RemoveServer(raft.ServerID(name), 0, timeout).Error() }); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// ErrNoMajorityLeft means a voter's removal would leave voters without a reachable majority.
var ErrNoMajorityLeft = errors.New("the voters left would have no majority")

// canLoseVoter refuses the removal of voter name when the voters left behind, as this leader's
// heartbeats see them, are not a majority of themselves. A member that is not a voter can go.
func (n *Node) canLoseVoter(servers []raft.Server, name string) error {
	var left, down []string
	isVoter := false
	for _, s := range servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		if string(s.ID) == name {
			isVoter = true
			continue
		}
		left = append(left, string(s.ID))
	}
	if !isVoter {
		return nil
	}
	if len(left) == 0 {
		return fmt.Errorf("%w: %s is the only voter, and the cluster cannot commit without one; start or promote another member first (--voters), or stop the whole cluster instead", ErrNoMajorityLeft, name)
	}
	unreached := n.Unreached()
	for _, v := range left {
		if _, ok := unreached[v]; ok {
			down = append(down, v)
		}
	}
	if len(left)-len(down) > len(left)/2 {
		return nil
	}
	return NoMajorityLeft(name, left, down)
}

// NoMajorityLeft is the refusal to remove voter name when, of the voters left behind, those in
// down do not answer and the rest are no majority.
func NoMajorityLeft(name string, left, down []string) error {
	verb, them := "do not answer", "them"
	if len(down) == 1 {
		verb, them = "does not answer", "it"
	}
	return fmt.Errorf("%w: without %s the voters are %s, and %s %s, so the change could never be committed; bring %s back, or take %s out first (`forget %s` through a member that answers)",
		ErrNoMajorityLeft, name, strings.Join(left, ", "), strings.Join(down, " and "), verb, them, them, down[0])
}

// Close shuts Raft down and closes its files and listener.
func (n *Node) Close() error {
	err := n.raft.Shutdown().Error()
	close(n.stopFit)
	<-n.fitDone
	n.contacts.stop(n.raft)
	closeTransport(n.transport)
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// streamLayer carries Raft's transport over the cookie-keyed TLS listener and dialer.
type streamLayer struct {
	*wire.Listener
	id        *wire.Identity
	advertise net.Addr
}

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := s.id.Dial(ctx, "tcp", string(addr))
	if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
		// wire explains a refused dial to a user who typed an address (is that the node's
		// --api-addr?); here it is a member's Raft port, logged at every heartbeat.
		return nil, fmt.Errorf("member's raft address %s refuses connections: the node is down or restarting", addr)
	}
	return c, err
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

// What the rest of the node reads of the cluster's state and of Raft, without reaching into
// either: the FSM and the *raft.Raft stay this package's.

// State returns a copy of the cluster's state as this node has applied it.
func (n *Node) State() State { return n.fsm.State() }

// Members returns a copy of the registry.
func (n *Node) Members() map[string]Member { return n.fsm.Members() }

// Member returns one registered member.
func (n *Node) Member(name string) (Member, bool) { return n.fsm.Member(name) }

// Ducks returns a copy of the duck placements.
func (n *Node) Ducks() map[string]Placement { return n.fsm.Ducks() }

// Versions returns a copy of the committed versions.
func (n *Node) Versions() []Version { return n.fsm.Versions() }

// Rollout returns a copy of the latest rollout, nil if there was none.
func (n *Node) Rollout() *rollout.Rollout { return n.fsm.Rollout() }

// Changed returns a channel closed at the next change of the state.
func (n *Node) Changed() <-chan struct{} { return n.fsm.Changed() }

// Cluster is the cluster's name (State.Cluster), "" until its leader named it.
func (n *Node) Cluster() string { return n.fsm.Cluster() }

// Index is the log index of the last command this node's state applied.
func (n *Node) Index() uint64 { return n.fsm.Index() }

// Fresh reports whether the cluster's history is only self's own start (see FSM.Fresh).
func (n *Node) Fresh(self string) bool { return n.fsm.Fresh(self) }

// MemberNames lists the registered names in order.
func (n *Node) MemberNames() []string { return n.fsm.MemberNames() }

// Version returns committed version v.
func (n *Node) Version(v rollout.Number) (Version, bool) { return n.fsm.Version(v) }

// RaftState is this node's Raft role: follower, candidate, leader or shutdown.
func (n *Node) RaftState() raft.RaftState { return n.raft.State() }

// Term is the current Raft term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// CommitIndex is the index of the last entry this node knows to be committed.
func (n *Node) CommitIndex() uint64 { return n.raft.CommitIndex() }

// AppliedIndex is the index of the last entry Raft handed to the FSM.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }
