// Package localcluster starts real node processes on 127.0.0.1, each in its own folder under one
// root, on free loopback ports. The demo shows a cluster with it and the end-to-end tests
// drive one, so both exercise exactly what a user runs.
package localcluster

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/wire"
)

// Cluster is a set of node processes sharing a binary, a cookie and a root folder.
type Cluster struct {
	Bin    string // the node binary
	Root   string // each node's data folder is Root/NAME
	Cookie string
	// Output, when set, receives every line the nodes print, prefixed with the node's name.
	Output io.Writer

	mu    sync.Mutex
	nodes map[string]*Node
	api   *api.Client
}

// Nodes lists every node started, in name order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Node, 0, len(c.nodes))
	for _, n := range c.nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Node is one node process.
type Node struct {
	Name string
	Dir  string
	API  string // API address, from its ready line
	Raft string // Raft address, from its ready line
	// Metrics is the /metrics URL, from its ready line, when started with --metrics-addr.
	Metrics string
	Args    []string

	// Prefix runs the node under another command, e.g. `ip netns exec NS` to put it on a test
	// host of its own.
	Prefix []string

	c    *Cluster
	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, once done is closed

	logMu sync.Mutex
	log   bytes.Buffer
}

var readyLine = regexp.MustCompile(`ready: api ([^\s,]+), raft ([^\s,]+)(?:, data [^,]+)?(?:, metrics (\S+))?`)

// ReadyTimeout bounds how long a node may take to print its ready line.
const ReadyTimeout = 30 * time.Second

// Start starts node name with --api-addr and --raft-addr on free loopback ports below the
// kernel's ephemeral range (see loopbackAddr) unless extra sets them, and waits for its ready
// line.
func (c *Cluster) Start(name string, extra ...string) (*Node, error) {
	return c.StartWith(nil, name, extra...)
}

// StartWith is Start with the node run under prefix (see Node.Prefix).
func (c *Cluster) StartWith(prefix []string, name string, extra ...string) (*Node, error) {
	args := []string{"start", "--name", name, "--data-dir", filepath.Join(c.Root, name)}
	for _, flag := range []string{"--api-addr", "--raft-addr"} {
		if !hasFlag(extra, flag) {
			addr, err := loopbackAddr()
			if err != nil {
				return nil, err
			}
			args = append(args, flag, addr)
		}
	}
	n := &Node{Name: name, Dir: filepath.Join(c.Root, name), Args: append(args, extra...), Prefix: prefix, c: c}
	if err := n.start(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.nodes == nil {
		c.nodes = map[string]*Node{}
	}
	c.nodes[name] = n
	c.mu.Unlock()
	return n, nil
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

func (n *Node) start() error {
	argv := append(append(slices.Clone(n.Prefix), n.c.Bin), n.Args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "DUCKRAFT_COOKIE="+n.c.Cookie)
	// Own process group, so a stop reaches the node and anything it started. Killed when the
	// process that started it dies: a test that timed out (Go's test binary panics and exits)
	// left its nodes running, with their ducks, ports and CPU, until someone found them. The
	// node's ducks die with it through their lifeline. (The signal comes when the thread that
	// started the node ends; Go ends a thread only when a goroutine locked to it exits, which
	// nothing here does.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start node %s: %w", n.Name, err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	ready := make(chan [3]string, 1)
	var pipes sync.WaitGroup
	pipes.Add(2)
	go n.copyLines(stdout, ready, &pipes)
	go n.copyLines(stderr, nil, &pipes)
	go func() {
		pipes.Wait()
		n.err = cmd.Wait()
		close(n.done)
	}()
	select {
	case addrs := <-ready:
		n.API, n.Raft, n.Metrics = addrs[0], addrs[1], addrs[2]
		return nil
	case <-n.done:
		return fmt.Errorf("node %s exited before it was ready (%v):\n%s", n.Name, n.err, n.Log())
	case <-time.After(ReadyTimeout):
		n.Kill()
		return fmt.Errorf("node %s printed no ready line within %s:\n%s", n.Name, ReadyTimeout, n.Log())
	}
}

func (n *Node) copyLines(r io.Reader, ready chan [3]string, wg *sync.WaitGroup) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		n.logMu.Lock()
		n.log.WriteString(line + "\n")
		n.logMu.Unlock()
		if n.c.Output != nil {
			fmt.Fprintf(n.c.Output, "%s| %s\n", n.Name, line)
		}
		if ready != nil {
			if m := readyLine.FindStringSubmatch(line); m != nil {
				select {
				case ready <- [3]string{m[1], m[2], m[3]}:
				default:
				}
			}
		}
	}
}

// Log is everything the node printed so far.
func (n *Node) Log() string {
	n.logMu.Lock()
	defer n.logMu.Unlock()
	return n.log.String()
}

// Running reports whether the process is still alive.
func (n *Node) Running() bool {
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Kill kills the node's process group with SIGKILL, as a crash would, and waits for it.
func (n *Node) Kill() error {
	syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.done
	return nil
}

// KillAgent kills the node process alone with SIGKILL, as a crash of the agent would; its ducks
// run in their own process groups and notice through their lifeline.
func (n *Node) KillAgent() {
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
}

// Stop asks the node to stop (SIGTERM) and waits; it kills it if it has not gone within timeout.
func (n *Node) Stop(timeout time.Duration) error {
	if !n.Running() {
		return nil
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
		var ee *exec.ExitError
		if errors.As(n.err, &ee) {
			return fmt.Errorf("node %s stopped with %v", n.Name, n.err)
		}
		return nil
	case <-time.After(timeout):
		// SIGQUIT first: the Go runtime writes every goroutine's stack to the node's log, which
		// says where it was stuck.
		n.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-n.done:
		case <-time.After(2 * time.Second):
		}
		n.Kill()
		return fmt.Errorf("node %s did not stop within %s and was killed (its log ends with its goroutines' stacks)", n.Name, timeout)
	}
}

// Restart starts the node again with the same arguments, from its data folder.
func (n *Node) Restart() error {
	if n.Running() {
		return fmt.Errorf("node %s is still running", n.Name)
	}
	n.logMu.Lock()
	n.log.Reset()
	n.logMu.Unlock()
	return n.start()
}

// StopAll stops every node, killing those that do not stop in time.
func (c *Cluster) StopAll(timeout time.Duration) error {
	c.mu.Lock()
	nodes := make([]*Node, 0, len(c.nodes))
	for _, n := range c.nodes {
		nodes = append(nodes, n)
	}
	c.mu.Unlock()
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.Stop(timeout); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Command prepares a client command of the node binary against addr with the cluster's cookie,
// for callers that stream its output.
func (c *Cluster) Command(ctx context.Context, addr string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Bin, args...)
	cmd.Env = append(os.Environ(), "DUCKRAFT_COOKIE="+c.Cookie, "DUCKRAFT_ADDR="+addr)
	return cmd
}

// Do calls a node's API directly with the cluster's cookie.
func (c *Cluster) Do(ctx context.Context, addr, method, path string, in, out any) error {
	c.mu.Lock()
	if c.api == nil {
		id, err := wire.FromCookie(c.Cookie)
		if err != nil {
			c.mu.Unlock()
			return err
		}
		c.api = api.NewClient(id)
	}
	api := c.api
	c.mu.Unlock()
	return api.Do(ctx, addr, method, path, in, out)
}

// PID is the node process's ID.
func (n *Node) PID() int { return n.cmd.Process.Pid }

// Run runs a client command of the node binary against addr with the cluster's cookie and
// returns what it printed.
func (c *Cluster) Run(ctx context.Context, addr string, args ...string) (stdout, stderr string, err error) {
	cmd := c.Command(ctx, addr, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// StartMany starts the named nodes, parallel at a time, each with extra flags, and returns them
// in the order of names. On an error the nodes already started keep running: StopAll stops them.
func (c *Cluster) StartMany(names []string, parallel int, extra ...string) ([]*Node, error) {
	out := make([]*Node, len(names))
	errs := make([]error, len(names))
	sem := make(chan struct{}, max(1, parallel))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = c.Start(name, extra...)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// SpawnEach starts a duck on each node with the CLI (`spawn --detach`), parallel at a time, each
// with the extra environment env (KEY=VALUE), and returns every duck's address by node name. A
// spawn that fails is an error with the end of its node's log; the ducks started stay.
func (c *Cluster) SpawnEach(ctx context.Context, nodes []*Node, parallel int, env ...string) (map[string]string, error) {
	args := []string{"spawn", "--detach"}
	for _, kv := range env {
		args = append(args, "--env", kv)
	}
	ducks := map[string]string{}
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, max(1, parallel))
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, errOut, err := c.Run(ctx, n.API, args...)
			var id, addr string
			_, serr := fmt.Sscanf(out, "%s on "+n.Name+" serving http://%s", &id, &addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || serr != nil {
				log := n.Log()
				errs = append(errs, fmt.Errorf("spawn on %s: %v %q %s\nits log ends:\n%s", n.Name, cmp.Or(err, serr), out, errOut, log[max(0, len(log)-2000):]))
				return
			}
			ducks[n.Name] = addr
		}()
	}
	wg.Wait()
	return ducks, errors.Join(errs...)
}

// ConnectAll joins every other node to the cluster of nodes[0], parallel at a time, retrying a
// join the leader was too busy to take.
func (c *Cluster) ConnectAll(ctx context.Context, nodes []*Node, parallel int) error {
	sem := make(chan struct{}, max(1, parallel))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes[1:] {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var err error
			for attempt := 0; attempt < 5; attempt++ {
				if err = c.Do(ctx, n.API, "POST", "/v1/connect", api.ConnectRequest{Addr: nodes[0].API}, nil); err == nil {
					return
				}
				time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
			}
			errs[i+1] = fmt.Errorf("connect %s: %w", n.Name, err)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
