// Package agent is the node agent, one per host: it owns the node's identity and data folder and
// wires together the parts that do the work, each in a package of its own: its place in the
// cluster (membership), what it runs (ducks), the rollout's loops (driver, follower), the
// cluster-wide answers (views) and the HTTP+JSON API the CLI and the other nodes call over the
// cookie-keyed channel (httpapi). It never stops for a code change; ducks are what get swapped.
package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/agent/driver"
	"github.com/duckraft/duckraft/agent/ducks"
	"github.com/duckraft/duckraft/agent/follower"
	"github.com/duckraft/duckraft/agent/membership"
	"github.com/duckraft/duckraft/agent/views"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/atomicfile"
	"github.com/duckraft/duckraft/consensus"
	"github.com/duckraft/duckraft/owned"
	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/duckuser"
	"github.com/duckraft/duckraft/runtime/supervise"
	"github.com/duckraft/duckraft/wire"
)

// Config is what `node start` is told.
type Config struct {
	Name     string
	DataDir  string
	APIAddr  string // listen address of the API
	RaftAddr string // listen address of Raft
	// Advertise is the host peers and clients dial when the node binds 0.0.0.0.
	Advertise string
	Identity  *wire.Identity
	Log       *slog.Logger

	// MetricsAddr, when set, serves /metrics (Prometheus, plain HTTP, no cookie) there.
	MetricsAddr string

	// ReadyTimeout bounds how long a new duck generation may take to become Ready, and Healthy
	// how long it must then stay up for a swap to count; zero means the supervisor's defaults.
	ReadyTimeout, Healthy time.Duration
	// Labels describe the node (zone=eu-1): a rollout can go in waves by one of them.
	Labels map[string]string
	// GoBin is the go command the node builds ducks with; empty: go on PATH.
	GoBin string
	// Voters is how many members vote (0: consensus.DefaultVoters); the leader's setting
	// applies. ReplaceVoterAfter is how long a voter may be unreachable before a reachable
	// non-voter takes its place (0: 10s).
	Voters            int
	ReplaceVoterAfter time.Duration
	// DuckUser, when set, is who ducks run as (a root node's); nil runs them as the node's user.
	DuckUser *duckuser.User
}

// DefaultVoters is how many members vote unless a node is told otherwise (see Config.Voters).
const DefaultVoters = consensus.DefaultVoters

// Default addresses of a node started without flags: loopback only, so nothing off the machine
// can reach a node unless it is told to listen there. 4369 is Erlang's epmd; these sit beside it.
const (
	DefaultAPIAddr  = "127.0.0.1:4370"
	DefaultRaftAddr = "127.0.0.1:4371"
)

// applyTimeout bounds one log entry's round trip; past it the caller hears why.
const applyTimeout = membership.ApplyTimeout

// Agent is a running node.
type Agent struct {
	cfg    Config
	lock   *os.File // the data folder's lock, held while the node runs
	self   consensus.Member
	client *api.Client
	log    *slog.Logger
	follow *follower.Follower // this node's side of rollouts
	drive  *driver.Driver     // the leader's side

	api    *wire.Listener
	server *http.Server

	mem   *membership.Membership
	views *views.Views

	builder *build.Builder
	sup     *supervise.Supervisor
	host    *ducks.Host

	metrics     *metrics
	metricsSrv  *http.Server
	metricsAddr string

	stop    chan struct{}
	started time.Time
	// ctx ends when the agent stops, so that builds, swaps and reports in flight end with it
	// rather than report a stop as a failure.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// identity is what a data folder remembers of its node, so that a restart comes back as the
// same member at the same addresses.
type identity struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
}

// Start opens the data folder, starts Raft and serves the API. A node without history becomes a
// working cluster of one before Start returns.
func Start(cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Name == "" {
		return nil, errors.New("a node needs a name: pass --name")
	}
	// The folder holds the Raft log (every committed bundle) and built binaries the node runs:
	// nobody else on the machine should read or plant anything there, nor have made it first.
	if err := owned.Dir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("data folder: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			lock.Close()
		}
	}()
	if u := cfg.DuckUser; u != nil {
		if err := openToDucks(cfg.DataDir, u); err != nil {
			return nil, fmt.Errorf("data folder: %w", err)
		}
		if err := closeGoCache(); err != nil {
			return nil, err
		}
		if err := u.CheckReach(filepath.Join(cfg.DataDir, "ducks")); err != nil {
			cfg.Log.Warn("ducks will not start until this is fixed", "err", err)
		}
	}
	stored, err := loadIdentity(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if stored != nil {
		if stored.Name != cfg.Name {
			return nil, fmt.Errorf("data folder %s belongs to node %s: start it with --name %s, or give %s its own --data-dir", cfg.DataDir, stored.Name, stored.Name, cfg.Name)
		}
		cfg.RaftAddr = keepStored(cfg.RaftAddr, stored.RaftAddr)
		cfg.APIAddr = keepStored(cfg.APIAddr, stored.APIAddr)
	}
	cfg.RaftAddr = cmp.Or(cfg.RaftAddr, DefaultRaftAddr)
	cfg.APIAddr = cmp.Or(cfg.APIAddr, DefaultAPIAddr)
	if err := cfg.Identity.CheckReach(cfg.APIAddr, cfg.RaftAddr, cfg.Advertise); err != nil {
		return nil, err
	}

	a := &Agent{
		started: time.Now(),
		cfg:     cfg,
		client:  api.NewClient(cfg.Identity),
		log:     cfg.Log,
		stop:    make(chan struct{}),
		lock:    lock,
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	if err := a.startRuntime(); err != nil {
		return nil, err
	}
	a.api, err = cfg.Identity.Listen("tcp", cfg.APIAddr, true, cfg.Log.With("listener", "api"))
	if err != nil {
		return nil, fmt.Errorf("api address %s: %w", cfg.APIAddr, err)
	}
	apiAddr, err := advertise(a.api.Addr(), cfg.Advertise)
	if err != nil {
		a.api.Close()
		return nil, err
	}
	a.mem, err = membership.Open(membership.Config{
		Name: cfg.Name, APIAddr: apiAddr, Labels: cfg.Labels,
		RaftDir: filepath.Join(cfg.DataDir, "raft"), Bind: cfg.RaftAddr, Advertise: cfg.Advertise, Identity: cfg.Identity,
		Voters: cfg.Voters, ReplaceVoterAfter: cfg.ReplaceVoterAfter, Peers: a.client, Logger: a.log,
	}, true)
	if err != nil {
		a.api.Close()
		return nil, err
	}
	a.self = a.mem.Self()
	if stored != nil && stored.RaftAddr != a.self.RaftAddr {
		a.Close()
		return nil, fmt.Errorf("this data folder's node is at raft address %s, not %s: start it with --raft-addr %s (its peers dial that address)", stored.RaftAddr, a.self.RaftAddr, stored.RaftAddr)
	}
	if err := saveIdentity(cfg.DataDir, identity{Name: cfg.Name, RaftAddr: a.self.RaftAddr, APIAddr: a.self.APIAddr}); err != nil {
		a.Close()
		return nil, err
	}

	a.views = &views.Views{Self: a.self.Name, Cluster: clusterView{a}, Local: localAnswers{a}, Peers: a.client, Tolerates: consensus.FailureTolerance, Removed: a.mem.Removed}
	a.metrics = newMetrics(a)
	if cfg.MetricsAddr != "" {
		if a.metricsAddr, err = a.serveMetrics(cfg.MetricsAddr); err != nil {
			a.Close()
			return nil, err
		}
	}
	a.drive = &driver.Driver{Log: nodeLog{a}, Logger: a.log, Tell: a.tellGranted, CanaryHealth: a.canaryHealth}
	a.follow = follower.New(follower.Config{Name: a.self.Name, Log: nodeLog{a}, Leader: leader{a}, Builder: builder{a}, Ducks: hostDucks{a}, Logger: a.log})
	a.server = &http.Server{
		Handler:           a.service().Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		// Only cookie holders get this far (see wire.Listener), but a keep-alive connection a
		// client forgot still holds a place under wire.MaxConns until it is closed.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(cfg.Log.Handler(), slog.LevelDebug),
	}
	drive := a.drive
	follow := a.follow
	a.wg.Add(7)
	go func() {
		defer a.wg.Done()
		drive.Run(a.ctx)
	}()
	go func() {
		defer a.wg.Done()
		follow.Run(a.ctx)
	}()
	go func() {
		defer a.wg.Done()
		a.host.RestartAll(a.ctx)
	}()
	go func() {
		defer a.wg.Done()
		a.server.Serve(a.api)
	}()
	go func() {
		defer a.wg.Done()
		a.mem.KeepRegistered(a.ctx, a.mirrorDucks)
	}()
	go func() {
		defer a.wg.Done()
		a.mem.KeepVoters(a.ctx)
	}()
	go func() {
		defer a.wg.Done()
		a.mem.WatchRemoval(a.ctx)
	}()

	if a.mem.Node().Fresh(cfg.Name) {
		// A fresh node is a cluster of one: wait until it leads and has recorded itself, so that
		// "ready" means every command works.
		deadline := time.Now().Add(10 * time.Second)
		for !a.mem.Registered() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	started = true
	return a, nil
}

// keepStored prefers the address this data folder's node had over a flag asking for any port,
// so a node started with port 0 comes back where its peers knew it.
func keepStored(flag, stored string) string {
	if flag == "" {
		return stored
	}
	if _, port, err := net.SplitHostPort(flag); err == nil && port == "0" {
		return stored
	}
	return flag
}

func advertise(bound net.Addr, host string) (string, error) {
	tcp := bound.(*net.TCPAddr)
	if host != "" {
		return net.JoinHostPort(host, fmt.Sprint(tcp.Port)), nil
	}
	if tcp.IP.IsUnspecified() {
		return "", fmt.Errorf("the API listens on %s, which peers cannot dial: pass --advertise HOST", tcp)
	}
	return tcp.String(), nil
}

// Node is the current consensus member.
func (a *Agent) Node() *consensus.Node { return a.mem.Node() }

// MetricsAddr is where /metrics is served, empty when it is not.
func (a *Agent) MetricsAddr() string { return a.metricsAddr }

// Self is this node as the registry records it.
func (a *Agent) Self() consensus.Member { return a.self }

// ErrNoLeader means no leader is known: the cluster has lost its majority or is electing.
var ErrNoLeader = membership.ErrNoLeader

// Close stops serving and shuts Raft down.
func (a *Agent) Close() error {
	select {
	case <-a.stop:
		return nil
	default:
		close(a.stop)
		a.cancel()
	}
	if a.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		a.server.Shutdown(ctx)
		cancel()
	}
	if a.metricsSrv != nil {
		a.metricsSrv.Close()
	}
	a.api.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Ducks stop gracefully, each saving its state for the next start.
	serr := a.sup.Close(ctx)
	a.wg.Wait()
	err := errors.Join(serr, a.mem.Close())
	a.lock.Close()
	return err
}

// LockFile is the file in a data folder that a running node holds locked.
const LockFile = "lock"

// lockDataDir takes the data folder for this process: a second node started on it waited
// without a word for bbolt's lock on the Raft log, holding its API port, deaf to SIGTERM (found
// by an outside probe). The lock is the kernel's (flock), so it goes with a process that dies,
// and the file names the PID that holds it, for the message.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data folder: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another process"
			if pid := strings.TrimSpace(string(holder)); pid != "" {
				who = "another node process (PID " + pid + ")"
			}
			return nil, fmt.Errorf("data folder %s is in use by %s: stop that node first, or give this one its own --data-dir", dir, who)
		}
		return nil, fmt.Errorf("data folder: locking %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

func loadIdentity(dir string) (*identity, error) {
	b, err := os.ReadFile(filepath.Join(dir, "node.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read node identity: %w", err)
	}
	var id identity
	if err := json.Unmarshal(b, &id); err != nil {
		return nil, fmt.Errorf("node identity %s is corrupt (%v): restore it or start on an empty --data-dir", filepath.Join(dir, "node.json"), err)
	}
	return &id, nil
}

func saveIdentity(dir string, id identity) error {
	b, _ := json.MarshalIndent(id, "", "  ")
	return atomicfile.Write(filepath.Join(dir, "node.json"), append(b, '\n'), 0o600)
}
