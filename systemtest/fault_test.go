package systemtest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/duckraft/duckraft/localcluster"
	"github.com/duckraft/duckraft/rollout"
)

// The fault suite: something is killed or breaks in the middle of a rollout. Each test checks
// what was served, that nothing committed was lost (every duck's count equals the POSTs it
// answered), and logs how long the cluster took to converge.

// postInitial sends one POST to every duck so each count starts at one known request.
func postInitial(t *testing.T, dc *duckCluster) {
	t.Helper()
	for name, addr := range dc.ducks {
		if _, err := askDuck("POST", addr); err != nil {
			t.Fatalf("duck on %s: %v", name, err)
		}
	}
}

// checkNothingLost compares every duck's count with the POSTs it answered (plus the first one).
func checkNothingLost(t *testing.T, dc *duckCluster, l *load) {
	t.Helper()
	checkCounts(t, dc, l, nil)
}

// checkCounts is checkNothingLost where the ducks in crashed were killed -9 while serving: such
// a duck restarts from the state it last saved (at its last hand-over or stop), as a crashed
// Erlang process restarts from its init, so it may have lost what it answered since, but it
// never counts a POST it did not answer.
func checkCounts(t *testing.T, dc *duckCluster, l *load, crashed map[string]bool) {
	t.Helper()
	for name, addr := range dc.ducks {
		want := int(l.ok[name].Load()) + 1
		var got duckReply
		waitFor(t, "the duck on "+name+" to answer", 30*time.Second, func() bool {
			var err error
			got, err = askDuck("GET", addr)
			return err == nil
		})
		if crashed[name] {
			if got.Count > want {
				t.Errorf("duck on %s counts %d, but answered only %d POSTs: counted twice", name, got.Count, want)
			}
			t.Logf("duck on %s, killed -9 while serving: counts %d of the %d POSTs it answered", name, got.Count, want)
			continue
		}
		if got.Count != want {
			t.Errorf("duck on %s counts %d, but answered %d POSTs: something committed was lost or counted twice", name, got.Count, want)
		}
	}
}

// waitPhase waits until node's phase in rollout n is phase.
func waitPhase(t *testing.T, dc *duckCluster, via string, n rollout.Number, node string, phase rollout.Phase) {
	t.Helper()
	waitFor(t, node+" to be "+string(phase), 60*time.Second, func() bool {
		r := rolloutOf(t, dc.c, via).Rollout
		return r != nil && r.Version == n && r.Nodes[node].Phase == phase
	})
}

func TestAgentKilledMidSwapLosesNothing(t *testing.T) {
	dc := newDuckCluster(t)
	postInitial(t, dc)
	l := startLoad(dc.ducks)
	b := dc.nodes[1]
	cli(t, dc.c, dc.nodes[0].API, "deploy", "--detach", "../testdata/duck-slow")
	waitPhase(t, dc, dc.nodes[0].API, 2, "b", rollout.Swapping)
	b.KillAgent() // its ducks stop through their lifeline, saving their state
	failedWhileDown := l.failed.Load()
	t0 := time.Now()
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rollout to complete", 90*time.Second, func() bool {
		return rolloutOf(t, dc.c, dc.nodes[0].API).Rollout.State == rollout.Done
	})
	waitFor(t, "b's duck on the new version", 30*time.Second, func() bool {
		got, err := askDuck("GET", dc.ducks["b"])
		return err == nil && got.Version == "v2"
	})
	l.finish()
	t.Logf("agent b killed mid-swap: converged %s after its restart; %d requests failed (b's duck was down with its agent, %d by the restart), %d served", time.Since(t0).Round(time.Millisecond), l.failed.Load(), failedWhileDown, l.ok["a"].Load()+l.ok["b"].Load()+l.ok["c"].Load())
	for _, name := range []string{"a", "c"} {
		if n := l.ok[name].Load(); n == 0 {
			t.Errorf("duck on %s served nothing", name)
		}
	}
	checkNothingLost(t, dc, l)
}

func TestDuckKilledMidSwapLosesNothing(t *testing.T) {
	dc := newDuckCluster(t)
	postInitial(t, dc)
	l := startLoad(dc.ducks)
	b := dc.nodes[1]
	cli(t, dc.c, dc.nodes[0].API, "deploy", "--detach", "../testdata/duck-slow")
	waitPhase(t, dc, dc.nodes[0].API, 2, "b", rollout.Swapping)
	ds := ducksOn(dc.c, b.API)
	var pid int
	for _, d := range ds {
		if d.Node == "b" {
			pid = d.PID
		}
	}
	if pid == 0 {
		t.Fatalf("no duck on b: %+v", ds)
	}
	syscall.Kill(pid, syscall.SIGKILL) // the generation that handed its state over
	t0 := time.Now()
	waitFor(t, "the rollout to end", 90*time.Second, func() bool {
		return !rolloutOf(t, dc.c, dc.nodes[0].API).Rollout.Active()
	})
	r := rolloutOf(t, dc.c, dc.nodes[0].API).Rollout
	waitFor(t, "b's duck to serve again", 30*time.Second, func() bool {
		_, err := askDuck("GET", dc.ducks["b"])
		return err == nil
	})
	l.finish()
	t.Logf("duck on b killed mid-swap: rollout %s (%s) after %s; %d requests failed, %d served", r.State, r.Reason, time.Since(t0).Round(time.Millisecond), l.failed.Load(), l.ok["a"].Load()+l.ok["b"].Load()+l.ok["c"].Load())
	checkNothingLost(t, dc, l)
}

// The leader is killed while a commit is really in flight: the test watches the leader's own
// log for the moment the forwarded commit reaches it ("committing version") and kills it then,
// or a few milliseconds later, under load. Whichever way each race goes, the log holds the
// version once or not at all, a deploy that said it committed is in it, the survivors converge
// and every duck's count is exact.
func TestLeaderKilledWhileCommitting(t *testing.T) {
	dc := newDuckCluster(t)
	postInitial(t, dc)
	l := startLoad(dc.ducks)
	defer l.stopOnce()
	srcs := []string{"../testdata/duck-v2", "../duck"}
	for i, offset := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond} {
		lead, via := leaderAndFollower(t, dc)
		before := len(rolloutOf(t, dc.c, via.API).Versions)
		msg := fmt.Sprintf("racing the leader's death, %s after the commit reached it", offset)
		done := make(chan error, 1)
		returned := make(chan struct{})
		go func() {
			_, _, err := tryCLI(dc.c, via.API, "deploy", "--detach", "-m", msg, srcs[i%2])
			close(returned)
			done <- err
		}()
		reached := waitLine(lead, "committing version", 30*time.Second)
		time.Sleep(offset)
		lead.Kill()
		inFlight := false
		select {
		case <-returned:
		default:
			inFlight = reached
		}
		t0 := time.Now()
		deployErr := <-done
		waitFor(t, "the rollout to end on the survivors", 90*time.Second, func() bool {
			r := rolloutOf(t, dc.c, via.API).Rollout
			return r != nil && !r.Active()
		})
		converged := time.Since(t0)
		v := rolloutOf(t, dc.c, via.API)
		added := len(v.Versions) - before
		if added > 1 || deployErr == nil && added != 1 {
			t.Fatalf("offset %s: the deploy returned %v and the log gained %d versions; want exactly one if it said it committed, at most one if not: %+v", offset, deployErr, added, v.Versions)
		}
		if added == 1 && v.Versions[len(v.Versions)-1].Message != msg {
			t.Fatalf("offset %s: the new version is %+v", offset, v.Versions[len(v.Versions)-1])
		}
		t.Logf("leader %s killed %s after the commit reached it (reached=%v, in flight=%v): deploy error %v, %d version(s) added, rollout %s %s after the kill",
			lead.Name, offset, reached, inFlight, deployErr, added, v.Rollout.State, converged.Round(time.Millisecond))
		if err := lead.Restart(); err != nil {
			t.Fatal(err)
		}
		want := "v" + strconv.Itoa(int(v.Versions[len(v.Versions)-1].N))
		if v.Rollout.State != rollout.Done {
			want = "" // went back: every duck on what it had, checked by the counts below
		}
		for name, addr := range dc.ducks {
			waitFor(t, "the duck on "+name+" to serve "+want, 60*time.Second, func() bool {
				got, err := askDuck("GET", addr)
				return err == nil && (want == "" || got.Version == want)
			})
		}
		waitFor(t, "the restarted node to see the leader", 30*time.Second, func() bool {
			return leaderOf(members(dc.c, lead.API)) != ""
		})
	}
	l.finish()
	t.Logf("leader killed while committing, 4 races: %d requests failed (ducks down with their node), %d served", l.failed.Load(), l.total())
	checkNothingLost(t, dc, l)
}

// waitLine polls a node's output for s; it reports whether s appeared before the timeout.
func waitLine(n *localcluster.Node, s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(n.Log(), s) {
			return true
		}
		time.Sleep(200 * time.Microsecond)
	}
	return false
}

// A node whose disk refuses writes (its build cache replaced by a file: as root, a read-only
// mode would not stop the writes) fails its build; the rollout halts there and every duck keeps
// serving the old version.
func TestDiskWriteFailingHaltsAtThatNode(t *testing.T) {
	dc := newDuckCluster(t)
	postInitial(t, dc)
	l := startLoad(dc.ducks)
	defer l.stopOnce()
	t0 := time.Now()
	c := dc.nodes[2]
	builds := filepath.Join(c.Dir, "builds")
	if err := os.RemoveAll(builds); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(builds, []byte("not a folder"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := tryCLI(dc.c, dc.nodes[0].API, "deploy", "../testdata/duck-v2")
	if err == nil || !strings.Contains(errOut, "c failed") {
		t.Fatalf("deploy with c's disk failing: err=%v\n%s", err, errOut)
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v1" {
			t.Fatalf("duck on %s: %+v %v; want v1 still serving", name, got, err)
		}
	}
	// Mended, the same version goes out.
	os.Remove(builds)
	if out := cli(t, dc.c, dc.nodes[0].API, "deploy", "../testdata/duck-v2"); !strings.Contains(out, "runs on every node") {
		t.Fatalf("deploy after mending the disk:\n%s", out)
	}
	l.finish()
	t.Logf("disk refusing writes on c: halted at c, then mended and rolled out, %s in all; %d requests failed, %d served", time.Since(t0).Round(time.Millisecond), l.failed.Load(), l.total())
	if l.failed.Load() != 0 {
		t.Errorf("%d requests failed: no duck was down in this test", l.failed.Load())
	}
	checkNothingLost(t, dc, l)
}

// A node stopped (SIGTERM) in the middle of its turn is not a failed version: the rollout waits,
// and the restarted node takes its turn again; the cluster never goes back.
func TestNodeStoppedMidTurnTakesItAgain(t *testing.T) {
	dc := newDuckCluster(t)
	postInitial(t, dc)
	l := startLoad(dc.ducks)
	defer l.stopOnce()
	b := dc.nodes[1]
	// Long enough a down-after that the leader waits for b rather than skip it: this test is
	// about the turn taken again (a node down longer is skipped, see TestNemesis).
	cli(t, dc.c, dc.nodes[0].API, "deploy", "--detach", "--down-after", "2m", "../testdata/duck-slow")
	waitPhase(t, dc, dc.nodes[0].API, 2, "b", rollout.Swapping)
	if err := b.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if r := rolloutOf(t, dc.c, dc.nodes[0].API).Rollout; r.State != rollout.Rolling || r.Nodes["b"].Phase != rollout.Swapping {
		t.Fatalf("after b stopped mid-turn the rollout is %s and b %s (%s); want it still rolling, b still in its turn", r.State, r.Nodes["b"].Phase, r.Reason)
	}
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rollout to complete", 90*time.Second, func() bool {
		return rolloutOf(t, dc.c, dc.nodes[0].API).Rollout.State == rollout.Done
	})
	for name, addr := range dc.ducks {
		waitFor(t, "the duck on "+name+" on version 2", 30*time.Second, func() bool {
			got, err := askDuck("GET", addr)
			return err == nil && got.Version == "v2"
		})
	}
	l.finish()
	t.Logf("node b stopped mid-turn and restarted: %d requests failed (b's duck stopped with its node), %d served", l.failed.Load(), l.total())
	checkNothingLost(t, dc, l)
}

// A non-voter's log is not synced (consensus/logstore). Killed -9 at a moment the seed picks
// in a rollout, and started again on the same boot, it keeps its log (the kernel's page cache
// has every write), catches up, takes or catches up on the version, and its log stays unsynced;
// nothing the ducks answered is lost elsewhere. DUCKRAFT_NONVOTER_KILL_SEED=N replays a
// moment; a seed that ever failed joins nonVoterKillSeeds.
func TestANonVoterKilledAtSeededMomentsCatchesUp(t *testing.T) {
	seeds := append(slices.Clone(nonVoterKillSeeds), uint64(time.Now().UnixNano()))
	if s := os.Getenv("DUCKRAFT_NONVOTER_KILL_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DUCKRAFT_NONVOTER_KILL_SEED=%q is not a number", s)
		}
		seeds = []uint64{n}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d; replay with DUCKRAFT_NONVOTER_KILL_SEED=%d go test ./systemtest/ -run TestANonVoterKilledAtSeededMomentsCatchesUp -v", seed, seed)
			nonVoterKilled(t, seed)
		})
	}
}

// nonVoterKillSeeds are the seeds of TestANonVoterKilledAtSeededMomentsCatchesUp that ever
// failed, run every time (none yet).
var nonVoterKillSeeds = []uint64{}

func nonVoterKilled(t *testing.T, seed uint64) {
	after := time.Duration(seed%2000) * time.Millisecond // from the commit to past the rollout
	down := time.Duration(seed/2000%1500) * time.Millisecond
	dc := newDuckCluster(t, "--voters", "2")
	c := dc.nodes[2]
	waitUnsyncedNonVoter(t, dc, c)
	postInitial(t, dc)
	l := startLoad(dc.ducks)
	defer l.stopOnce()
	cli(t, dc.c, dc.nodes[0].API, "deploy", "--detach", "../testdata/duck-v2")
	time.Sleep(after)
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(down)
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("c killed -9 %s after the commit, started again %s later", after, down)
	waitFor(t, "the rollout to end", 90*time.Second, func() bool {
		return rolloutOf(t, dc.c, dc.nodes[0].API).Rollout.State == rollout.Done
	})
	for name, addr := range dc.ducks {
		waitFor(t, "the duck on "+name+" on version 2", 60*time.Second, func() bool {
			got, err := askDuck("GET", addr)
			return err == nil && got.Version == "v2"
		})
	}
	for _, m := range members(dc.c, c.API) {
		if m.Name == c.Name && (m.Suffrage != "nonvoter" || m.Log != "unsynced" || !m.Reachable) {
			t.Fatalf("c after its restart: %+v; want a reachable non-voter with its log unsynced", m)
		}
	}
	if strings.Contains(c.Log(), "throwing the log away") {
		t.Fatalf("c threw its log away after a kill on the same boot:\n%s", c.Log())
	}
	l.finish()
	checkCounts(t, dc, l, map[string]bool{c.Name: true})
}

// After a restart of the machine a non-voter's unsynced log may be torn, so the node throws it
// away and the leader sends it again. Here the restart of the machine is the marker's boot ID
// changed while the node was down (a reboot cannot be had in a test): the node comes back with
// an empty log but a term, does not bootstrap a cluster of its own, catches up, answers for the
// cluster's state and takes the next version.
func TestANonVoterAfterAMachineRestartGetsItsLogAgain(t *testing.T) {
	dc := newDuckCluster(t, "--voters", "2")
	c := dc.nodes[2]
	waitUnsyncedNonVoter(t, dc, c)
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(c.Dir, "raft", "raft.db.unsynced")
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the non-voter's log has no marker: %v", err)
	}
	if err := os.WriteFile(marker, []byte("00000000-0000-0000-0000-a-boot-before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.Log(), "throwing the log away") {
		t.Fatalf("c did not say it threw its log away:\n%s", c.Log())
	}
	// Its own view: still a member of the cluster, led by a, with version 1 rolled out.
	waitFor(t, "c to catch up with the log", 30*time.Second, func() bool {
		r := rolloutOf(t, dc.c, c.API).Rollout
		if r == nil || r.Version != 1 || r.State != rollout.Done {
			return false
		}
		for _, m := range members(dc.c, c.API) {
			if m.Name == c.Name && m.Role == "follower" && m.Suffrage == "nonvoter" && m.Log == "unsynced" {
				return true
			}
		}
		return false
	})
	out := cli(t, dc.c, dc.nodes[0].API, "deploy", "../testdata/duck-v2")
	if !strings.Contains(out, "runs on every node") {
		t.Fatalf("deploy after c's log was thrown away:\n%s", out)
	}
	waitFor(t, "the duck on c on version 2", 30*time.Second, func() bool {
		got, err := askDuck("GET", dc.ducks[c.Name])
		return err == nil && got.Version == "v2"
	})
}

// waitUnsyncedNonVoter waits until the leader lists n as a non-voter whose log is not synced.
func waitUnsyncedNonVoter(t *testing.T, dc *duckCluster, n *localcluster.Node) {
	t.Helper()
	waitFor(t, n.Name+" to follow as a non-voter with its log unsynced", 30*time.Second, func() bool {
		for _, m := range members(dc.c, dc.nodes[0].API) {
			if m.Name == n.Name {
				return m.Suffrage == "nonvoter" && m.Log == "unsynced"
			}
		}
		return false
	})
}
