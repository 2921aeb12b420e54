package systemtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/localcluster"
	"github.com/duckraft/duckraft/wire"
)

// The Erlang walkthrough's opening (README): isolated nodes, Node.connect, Node.list from every
// node.
func TestThreeNodesConnectAndAgreeOnMembers(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	for _, n := range nodes {
		ms := members(c, n.API)
		if len(ms) != 1 || ms[0].Name != n.Name || ms[0].Role != "leader" {
			t.Fatalf("fresh node %s is not a cluster of one: %s", n.Name, view(ms))
		}
	}
	connectAll(t, c, nodes)
	want := "a:leader:true:voter b:follower:true:voter c:follower:true:voter"
	for _, n := range nodes {
		waitFor(t, n.Name+" to list three voters with a leading", 10*time.Second, func() bool {
			return view(members(c, n.API)) == want
		})
	}
	// Connecting again is harmless, as Node.connect is.
	if out := cli(t, c, nodes[1].API, "connect", nodes[2].API); strings.TrimSpace(out) != "true" {
		t.Fatalf("second connect printed %q", out)
	}
}

// kill -9 the leader: a new one is elected, the old one shows unreachable; restarted from its
// data folder it comes back as a follower under the same name.
func TestLeaderKilledAndRestarted(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	leader := nodes[0]
	waitFor(t, "a to lead three voters", 10*time.Second, func() bool {
		ms := members(c, leader.API)
		return leaderOf(ms) == "a" && len(ms) == 3 && strings.Count(view(ms), ":voter") == 3
	})

	leader.Kill()
	for _, n := range nodes[1:] {
		waitFor(t, n.Name+" to see a new leader and a unreachable", 15*time.Second, func() bool {
			ms := members(c, n.API)
			l := leaderOf(ms)
			return len(ms) == 3 && l != "" && l != "a" && strings.Contains(view(ms), "a:unknown:false")
		})
	}

	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, n.Name+" to see a back as a follower", 15*time.Second, func() bool {
			ms := members(c, n.API)
			return len(ms) == 3 && strings.Contains(view(ms), "a:follower:true:voter") && leaderOf(ms) != ""
		})
	}
}

func TestWrongCookieCannotConnect(t *testing.T) {
	c, nodes := newCluster(t, "a", "b")
	connectAll(t, c, nodes)
	before := view(members(c, nodes[0].API))

	// x runs with another cookie: its own client reaches it, but it cannot reach the cluster.
	other := &localcluster.Cluster{Bin: bin, Root: reachableTempDir(t), Cookie: randomCookie()}
	t.Cleanup(func() { other.StopAll(10 * time.Second) })
	x, err := other.Start("x")
	if err != nil {
		t.Fatal(err)
	}
	_, errOut, err := tryCLI(other, x.API, "connect", nodes[0].API)
	if err == nil || !strings.Contains(errOut, "cookies differ") {
		t.Fatalf("connect with another cookie: err=%v, stderr=%q; want a refusal naming the cookies", err, errOut)
	}
	waitFor(t, "a to log that the cookies differ", 10*time.Second, func() bool {
		return strings.Contains(nodes[0].Log(), "cookies differ")
	})
	if after := view(members(c, nodes[0].API)); after != before {
		t.Fatalf("membership changed: %q, was %q", after, before)
	}
	if ms := members(other, x.API); len(ms) != 1 || ms[0].Name != "x" {
		t.Fatalf("x is no longer a cluster of one: %s", view(ms))
	}
	// And a client with x's cookie cannot talk to the cluster at all.
	_, errOut, err = tryCLI(other, nodes[0].API, "members")
	if err == nil || !strings.Contains(errOut, "cookies differ") {
		t.Fatalf("members with another cookie: err=%v, stderr=%q", err, errOut)
	}
}

func TestConnectToNothingFailsWithClearMessage(t *testing.T) {
	c, nodes := newCluster(t, "a")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	// The client's own timeout is far above a refused connection's answer: a message about
	// nothing listening proves it did not just time out.
	_, errOut, err := tryCLI(c, nodes[0].API, "connect", "--timeout", "20s", dead)
	if err == nil || !strings.Contains(errOut, "nothing listens at "+dead) {
		t.Fatalf("connect to a dead address: err=%v, stderr=%q", err, errOut)
	}
	if ms := members(c, nodes[0].API); len(ms) != 1 || leaderOf(ms) != "a" {
		t.Fatalf("a failed join left a broken node: %s", view(ms))
	}
	// Asking a dead node directly says so too.
	_, errOut, err = tryCLI(c, dead, "members")
	if err == nil || !strings.Contains(errOut, "nothing listens") {
		t.Fatalf("members on a dead address: err=%v, stderr=%q", err, errOut)
	}
	// A node's Raft port speaks the same wire but not HTTP: it said only "EOF".
	_, errOut, err = tryCLI(c, nodes[0].Raft, "members")
	if err == nil || !strings.Contains(errOut, "is that the node's --api-addr? (its --raft-addr answers only other nodes)") {
		t.Fatalf("members on the Raft port: err=%v, stderr=%q", err, errOut)
	}
}

func TestSecondNodeWithSameNameIsRefused(t *testing.T) {
	c, nodes := newCluster(t, "a", "b")
	connectAll(t, c, nodes)
	before := view(members(c, nodes[0].API))

	twin := &localcluster.Cluster{Bin: bin, Root: reachableTempDir(t), Cookie: c.Cookie}
	t.Cleanup(func() { twin.StopAll(10 * time.Second) })
	b2, err := twin.Start("b")
	if err != nil {
		t.Fatal(err)
	}
	_, errOut, err := tryCLI(twin, b2.API, "connect", nodes[0].API)
	if err == nil || !strings.Contains(errOut, "already a member") {
		t.Fatalf("second b connecting: err=%v, stderr=%q", err, errOut)
	}
	if after := view(members(c, nodes[0].API)); after != before {
		t.Fatalf("membership changed: %q, was %q", after, before)
	}
}

func TestNodeWithHistoryRefusesToJoin(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes[:2])
	// a and b share a history now; a may not throw it away to join c.
	_, errOut, err := tryCLI(c, nodes[0].API, "connect", nodes[2].API)
	if err == nil || !strings.Contains(errOut, "history of its own") || !strings.Contains(errOut, "connect the other node to this one") {
		t.Fatalf("connect of a node with history: err=%v, stderr=%q", err, errOut)
	}
	if ms := members(c, nodes[0].API); len(ms) != 2 {
		t.Fatalf("a's cluster changed: %s", view(ms))
	}
}

func TestForgetDeadMemberAndLeave(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	_, errOut, err := tryCLI(c, nodes[0].API, "forget", "c")
	if err == nil || !strings.Contains(errOut, "is alive") {
		t.Fatalf("forget of a live member: err=%v, stderr=%q", err, errOut)
	}
	nodes[2].Kill()
	// b may not leave while c is down: a and c would be the voters, and c cannot agree. It hung
	// for 30 s and left b half out (found by trying it); now it is refused at once, as soon as
	// the leader's heartbeats miss c, and b stays a member.
	waitFor(t, "the leader to miss c", 15*time.Second, func() bool {
		for _, n := range nodes[:2] {
			var p api.Ping
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := c.Do(ctx, n.API, http.MethodGet, "/v1/ping", nil, &p)
			cancel()
			if _, missed := p.Unreached["c"]; err == nil && p.State == "leader" && missed {
				return true
			}
		}
		return false
	})
	start := time.Now()
	_, errOut, err = tryCLI(c, nodes[1].API, "leave")
	if err == nil || !strings.Contains(errOut, "without b the voters are a, c, and c does not answer") || !strings.Contains(errOut, "`forget c`") {
		t.Fatalf("leave of b with c down: err=%v, stderr=%q", err, errOut)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refused leave took %v", took)
	}
	if v := view(members(c, nodes[0].API)); !strings.Contains(v, "b:") || !strings.Contains(v, "c:") {
		t.Fatalf("a refused leave changed the members: %s", v)
	}
	waitFor(t, "c to be forgotten", 15*time.Second, func() bool {
		_, _, err := tryCLI(c, nodes[1].API, "forget", "c")
		return err == nil
	})
	waitFor(t, "a and b to list only themselves", 10*time.Second, func() bool {
		return view(members(c, nodes[1].API)) == "a:leader:true:voter b:follower:true:voter" ||
			view(members(c, nodes[1].API)) == "a:follower:true:voter b:leader:true:voter"
	})
	cli(t, c, nodes[1].API, "leave")
	waitFor(t, "b to be a cluster of one and a alone", 15*time.Second, func() bool {
		ms := members(c, nodes[1].API)
		return len(ms) == 1 && ms[0].Name == "b" && len(members(c, nodes[0].API)) == 1
	})
}

// A member forgotten while it was down and then started again on its old data folder is ignored
// by the others; it used to campaign for ever while every write through it waited out its time
// limit and said "no answer" (found by trying it). It now finds out from the members it
// remembers, and says what to do.
func TestAForgottenNodeStartedAgainSaysItWasRemoved(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	nodes[2].Kill()
	waitFor(t, "c to be forgotten", 15*time.Second, func() bool {
		_, _, err := tryCLI(c, nodes[0].API, "forget", "c")
		return err == nil
	})
	if err := nodes[2].Restart(); err != nil {
		t.Fatal(err)
	}
	var errOut string
	defer func() { t.Logf("last answer: %s", errOut) }()
	waitFor(t, "c to say that it was taken out", 40*time.Second, func() bool {
		_, errOut, _ = tryCLI(c, nodes[2].API, "deploy", "--timeout", "3s", "../duck")
		return strings.Contains(errOut, "not a member of its cluster any more")
	})
	if !strings.Contains(errOut, "start it on an empty one and `connect` it") {
		t.Errorf("c's refusal does not say what to do: %s", errOut)
	}
	// The rollouts of a and b leave c out: it registers itself as before, and a registration
	// from outside the configuration is refused (it was recorded, and every later rollout
	// waited for c in its order and skipped it).
	cli(t, c, nodes[0].API, "deploy", "--detach", "../duck")
	if r := rolloutOf(t, c, nodes[1].API).Rollout; r == nil || slices.Contains(r.Order, "c") {
		t.Errorf("a rollout after c was forgotten has c in its order: %+v", r)
	}
	// status through c says so first, not only a write through it.
	if out, _, err := tryCLI(c, nodes[2].API, "status"); err != nil || !strings.Contains(strings.SplitN(out, "\n", 2)[0], "not a member of its cluster any more") {
		t.Errorf("status through c: err=%v\n%s\nwant its first line to say c was taken out", err, out)
	}
	if v := view(members(c, nodes[0].API)); v != "a:leader:true:voter b:follower:true:voter" && v != "a:follower:true:voter b:leader:true:voter" {
		t.Errorf("a and b list %s, want only themselves", v)
	}
}

// A client without the cookie is refused before any handler runs: a TLS client with no key gets
// a 401 naming the cookie, and a plain HTTP one too.
func TestClientWithoutCookieGets401(t *testing.T) {
	_, nodes := newCluster(t, "a")
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Post("https://"+nodes[0].API+"/v1/connect", "application/json", strings.NewReader(`{"addr":"127.0.0.1:1"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "cookie") {
		t.Fatalf("TLS client without the cookie: %s %s", resp.Status, body)
	}
	resp, err = http.Get("http://" + nodes[0].API + "/v1/members")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "cookie") {
		t.Fatalf("plain HTTP client: %s %s", resp.Status, body)
	}
}

func TestRestartKeepsIdentityAndRefusesAnotherName(t *testing.T) {
	c, nodes := newCluster(t, "a")
	a := nodes[0]
	api := a.API
	if err := a.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	if a.API != api {
		t.Fatalf("restarted at %s, was %s", a.API, api)
	}
	if ms := members(c, a.API); len(ms) != 1 || ms[0].Name != "a" {
		t.Fatalf("after restart: %s", view(ms))
	}
	a.Stop(10 * time.Second)
	_, err := c.Start("z", "--data-dir", a.Dir)
	if err == nil || !strings.Contains(err.Error(), "belongs to node a") {
		t.Fatalf("start z on a's folder: %v", err)
	}
}

// A cookie holder sending a malformed body gets a 400 that says what is wrong, never a stack
// trace.
func TestMalformedBodyGets400(t *testing.T) {
	c, nodes := newCluster(t, "a")
	id, err := wire.FromCookie(c.Cookie)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return id.Dial(ctx, network, addr)
	}}}
	for _, body := range []string{`{"addr":`, `{"addr": 7}`, `{"nonsense": true}`, "\x00\x01"} {
		resp, err := hc.Post("https://"+nodes[0].API+"/v1/connect", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "malformed request body") || strings.Contains(string(b), "goroutine") {
			t.Fatalf("body %q: %s %s", body, resp.Status, b)
		}
	}
	if ms := members(c, nodes[0].API); len(ms) != 1 {
		t.Fatalf("malformed requests changed the cluster: %s", view(ms))
	}
}

// The cluster a node was taken out of may be down to one member, and a member that left leads a
// cluster of one of its own: by their members alone the two look alike, and the forgotten node
// never found out (found by an outside probe). Clusters have names: it asks its own.
func TestAForgottenNodeFindsOutFromAClusterDownToOne(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	ping := func(n *localcluster.Node) api.Ping {
		var p api.Ping
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c.Do(ctx, n.API, http.MethodGet, "/v1/ping", nil, &p)
		return p
	}
	// c has been a member for a while: it holds the cluster's name and its members' addresses.
	waitFor(t, "c to hold the cluster's name", 15*time.Second, func() bool {
		own := ping(nodes[0]).Cluster
		return own != "" && ping(nodes[2]).Cluster == own
	})
	// ...and has written down what it knows, for a restart (it is written at most half a
	// second after the state learns it).
	waitFor(t, "c to remember its cluster", 5*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(nodes[2].Dir, "raft", "known.json"))
		return err == nil
	})
	nodes[2].Kill()
	waitFor(t, "c to be forgotten", 15*time.Second, func() bool {
		_, _, err := tryCLI(c, nodes[0].API, "forget", "c")
		return err == nil
	})
	cli(t, c, nodes[1].API, "leave")
	if b, a := ping(nodes[1]).Cluster, ping(nodes[0]).Cluster; b == a {
		t.Fatalf("b left and leads a cluster named %q, the name of the cluster it left", b)
	}
	waitFor(t, "a alone", 15*time.Second, func() bool { return len(members(c, nodes[0].API)) == 1 })
	if err := nodes[2].Restart(); err != nil {
		t.Fatal(err)
	}
	var out string
	defer func() {
		if t.Failed() {
			t.Logf("c's status:\n%s\nc's log:\n%s", out, nodes[2].Log())
		}
	}()
	waitFor(t, "c to say that it was taken out", 40*time.Second, func() bool {
		out, _, _ = tryCLI(c, nodes[2].API, "status")
		return strings.Contains(out, "not a member of its cluster any more")
	})
	if testing.Verbose() {
		t.Logf("c's log:\n%s", nodes[2].Log())
	}
	if !strings.Contains(out, "(a, led by a, says so)") {
		t.Errorf("c believed another than a, its own cluster's last member:\n%s", out)
	}
}

// Without a majority of voters there is no leader to take a membership change: forget and leave
// waited out 30 s before saying so, where status knew at once. They say it at once now.
func TestForgetAndLeaveWithoutAMajoritySayItAtOnce(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	nodes[1].Kill()
	nodes[2].Kill()
	waitFor(t, "a to know no leader", 20*time.Second, func() bool {
		var p api.Ping
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.Do(ctx, nodes[0].API, http.MethodGet, "/v1/ping", nil, &p) == nil && p.Leader == ""
	})
	// And every other write through a, deploy included (it waited 30 s; an outside probe).
	for _, args := range [][]string{{"forget", "c"}, {"leave"}, {"deploy", "../duck"}} {
		start := time.Now()
		_, errOut, err := tryCLI(c, nodes[0].API, args...)
		if err == nil || !strings.Contains(errOut, "only 1 of the 3 voters answer (b, c do not)") {
			t.Fatalf("%v without a majority: err=%v\n%s", args, err, errOut)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("%v took %v to say there is no majority", args, took)
		}
	}
	if ms := members(c, nodes[0].API); len(ms) != 3 {
		t.Fatalf("a refused change changed the members: %s", view(ms))
	}
}

// Right after an election the new leader has not yet found out which members its heartbeats
// cannot reach (a stopped process takes raft's transport timeout, 5 s, to fail one), and a
// removal that left the voters without a majority went ahead in those seconds: it waited out
// its time limit and left the member half out. The leader now asks the voters left first.
func TestRemovalRightAfterAnElectionAsksTheVotersLeft(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	leader := leaderOf(members(c, nodes[0].API))
	var stopped *localcluster.Node
	var live []*localcluster.Node
	for _, n := range nodes {
		if n.Name == leader {
			stopped = n
		} else {
			live = append(live, n)
		}
	}
	if stopped == nil {
		t.Fatalf("no leader among the three: %s", view(members(c, nodes[0].API)))
	}
	// Stopped, not killed: its listeners still take connections (the kernel accepts them), so
	// nothing fails at once and the new leader's heartbeat view stays empty for seconds.
	if err := syscall.Kill(stopped.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(stopped.PID(), syscall.SIGCONT)
	var newLeader, other *localcluster.Node
	waitFor(t, "a new leader", 20*time.Second, func() bool {
		for i, n := range live {
			var p api.Ping
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := c.Do(ctx, n.API, http.MethodGet, "/v1/ping", nil, &p)
			cancel()
			if err == nil && p.Leader == n.Name {
				newLeader, other = n, live[1-i]
				return true
			}
		}
		return false
	})
	start := time.Now()
	_, errOut, err := tryCLI(c, other.API, "leave")
	if err == nil || !strings.Contains(errOut, "does not answer") || !strings.Contains(errOut, stopped.Name) {
		t.Fatalf("%s leaving right after %s was elected, with %s stopped: err=%v\n%s", other.Name, newLeader.Name, stopped.Name, err, errOut)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refusal took %v", took)
	}
	syscall.Kill(stopped.PID(), syscall.SIGCONT)
	waitFor(t, "all three members again", 20*time.Second, func() bool {
		ms := members(c, newLeader.API)
		up := 0
		for _, m := range ms {
			if m.Reachable {
				up++
			}
		}
		return len(ms) == 3 && up == 3 && leaderOf(ms) != ""
	})
}

// /proc/PID/cmdline is readable by every process on the host, ducks of another user included: a
// node started with --cookie starts itself again with the cookie in its environment (which it
// keeps to itself) instead of its arguments, and serves with it.
func TestACookieGivenOnTheCommandLineLeavesIt(t *testing.T) {
	c, nodes := newCluster(t, "a")
	b, err := c.Start("b", "--cookie", " "+c.Cookie+" ", "--cookie-file", "/nonexistent/cookie")
	if err != nil {
		t.Fatal(err)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", b.PID()))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if strings.Contains(string(cmdline), c.Cookie) || slices.Contains(args, "--cookie") || slices.Contains(args, "--cookie-file") {
		t.Fatalf("node b's command line holds its cookie: %q", args)
	}
	if !slices.Contains(args, "--name") || !slices.Contains(args, "b") {
		t.Fatalf("node b's command line lost its other arguments: %q", args)
	}
	connectAll(t, c, []*localcluster.Node{nodes[0], b})
	if ms := members(c, b.API); len(ms) != 2 {
		t.Fatalf("b with the cookie given on its command line (spaces around it): %s", view(ms))
	}
}

// TestASecondNodeOnADataFolderInUseIsRefused: a node started on a data folder another node
// process runs on waited without a word (bbolt's lock on the Raft log), holding its API port
// and deaf to SIGTERM (found by an outside probe). It is refused at once, naming the holder.
func TestASecondNodeOnADataFolderInUseIsRefused(t *testing.T) {
	c, nodes := newCluster(t, "a")
	a := nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, errOut, err := c.Run(ctx, "", "start", "--name", "a", "--data-dir", filepath.Join(c.Root, "a"),
		"--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	want := fmt.Sprintf("is in use by another node process (PID %d)", a.PID())
	if err == nil || ctx.Err() != nil || !strings.Contains(errOut, want) {
		t.Fatalf("a second start on a's data folder: err=%v (deadline: %v)\n%s\nwant it refused at once with %q", err, ctx.Err(), errOut, want)
	}
	if out := cli(t, c, a.API, "status"); !strings.Contains(out, "a") {
		t.Fatalf("a after the refused start:\n%s", out)
	}
}
