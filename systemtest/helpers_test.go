// Package systemtest drives real node processes on 127.0.0.1 the way a user does, through the
// node binary's own commands. Every end-to-end test uses the helpers in this file.
package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/internal/waitfor"
	"github.com/duckraft/duckraft/localcluster"
	"github.com/duckraft/duckraft/wire"
)

// bin is the node binary under test, built once for the whole package.
var bin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "duckraft-systemtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Nodes and clients must not read or make the developer's own ~/.duckraft.cookie. The Go
	// build cache stays where it is: with an empty one every duck build takes seconds.
	// The module cache too, or the node binary's build downloads every module again.
	for _, v := range []string{"GOCACHE", "GOMODCACHE"} {
		if out, err := exec.Command("go", "env", v).Output(); err == nil {
			os.Setenv(v, strings.TrimSpace(string(out)))
		}
	}
	os.Setenv("HOME", dir)
	os.Unsetenv("DUCKRAFT_COOKIE")
	os.Unsetenv("DUCKRAFT_ADDR")
	bin = filepath.Join(dir, "duckraft")
	build := exec.Command("go", "build", "-o", bin, "../cmd/node")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build node binary:", err)
		return 1
	}
	return m.Run()
}

// randomCookie is a cookie as `duckraft cookie` makes one: strong enough for nodes that listen
// beyond loopback (the partition test's do).
func randomCookie() string {
	c, err := wire.NewCookie()
	if err != nil {
		panic(err)
	}
	return c
}

// emptyCluster is a cluster with no node yet, every node it starts stopped when the test ends
// and its log printed if the test failed.
func emptyCluster(t testing.TB) *localcluster.Cluster {
	t.Helper()
	c := &localcluster.Cluster{Bin: bin, Root: reachableTempDir(t), Cookie: randomCookie()}
	t.Cleanup(func() {
		if err := c.StopAll(30 * time.Second); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
		if t.Failed() {
			nodes := c.Nodes()
			if len(nodes) > 10 {
				nodes = nodes[:3] // a hundred logs bury the failure
			}
			for _, n := range nodes {
				t.Logf("--- log of node %s:\n%s", n.Name, n.Log())
			}
		}
	})
	return c
}

// newCluster starts the named nodes, each a cluster of one, stopping them all when the test
// ends and printing their logs if it failed.
func newCluster(t testing.TB, names ...string) (*localcluster.Cluster, []*localcluster.Node) {
	t.Helper()
	return newClusterWith(t, nil, names...)
}

// newClusterWith is newCluster with extra flags for every node's start.
func newClusterWith(t testing.TB, extra []string, names ...string) (*localcluster.Cluster, []*localcluster.Node) {
	t.Helper()
	c := emptyCluster(t)
	var nodes []*localcluster.Node
	for _, name := range names {
		n, err := c.Start(name, extra...)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	return c, nodes
}

// leaderAndFollower finds the cluster's leader and one other node to send commands through.
func leaderAndFollower(t testing.TB, dc *duckCluster) (lead, via *localcluster.Node) {
	t.Helper()
	leader := leaderOf(members(dc.c, dc.nodes[0].API))
	for _, n := range dc.nodes {
		if n.Name == leader {
			lead = n
		} else if via == nil {
			via = n
		}
	}
	if lead == nil || via == nil {
		t.Fatalf("no leader and follower among %s", view(members(dc.c, dc.nodes[0].API)))
	}
	return lead, via
}

// reachableTempDir is t.TempDir with its parent (0700, root's when the tests run as root) made
// traversable, not listable, by others: a root node's ducks run as another user, who must reach
// the data folders inside to execute their binaries, as under /var/lib.
func reachableTempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cli runs a client command against addr and fails the test if it fails.
func cli(t testing.TB, c *localcluster.Cluster, addr string, args ...string) string {
	t.Helper()
	out, errOut, err := tryCLI(c, addr, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", "node", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// cliPaused runs a command that must return with the rollout paused for the operator: exit
// status 3, told apart from done (0) and halted (1).
func cliPaused(t testing.TB, c *localcluster.Cluster, addr string, args ...string) string {
	t.Helper()
	out, errOut, err := tryCLI(c, addr, args...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("%s %s: %v, want exit status 3 (paused)\n%s%s", "node", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func tryCLI(c *localcluster.Cluster, addr string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return c.Run(ctx, addr, args...)
}

// members asks the node at addr for the member list; nil if it cannot answer.
func members(c *localcluster.Cluster, addr string) []api.MemberStatus {
	out, _, err := tryCLI(c, addr, "members", "--json")
	if err != nil {
		return nil
	}
	var ms []api.MemberStatus
	if json.Unmarshal([]byte(out), &ms) != nil {
		return nil
	}
	return ms
}

// connectAll connects every node after the first to the first's cluster.
func connectAll(t testing.TB, c *localcluster.Cluster, nodes []*localcluster.Node) {
	t.Helper()
	for _, n := range nodes[1:] {
		if out := cli(t, c, n.API, "connect", nodes[0].API); strings.TrimSpace(out) != "true" {
			t.Fatalf("connect %s printed %q, want true", n.Name, out)
		}
	}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	waitfor.Until(t, what, timeout, cond)
}

// view summarises a member list as "name:role:reachable" entries, for comparing nodes' answers.
func view(ms []api.MemberStatus) string {
	var parts []string
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s:%s:%v:%s", m.Name, m.Role, m.Reachable, m.Suffrage))
	}
	return strings.Join(parts, " ")
}

func leaderOf(ms []api.MemberStatus) string {
	leader := ""
	for _, m := range ms {
		if m.Role == "leader" {
			if leader != "" {
				return "" // two claim it: not settled
			}
			leader = m.Name
		}
	}
	return leader
}
