package systemtest

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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
	for name, addr := range dc.ducks {
		want := int(l.ok[name].Load()) + 1
		var got duckReply
		waitFor(t, "the duck on "+name+" to answer", 30*time.Second, func() bool {
			var err error
			got, err = askDuck("GET", addr)
			return err == nil
		})
		if got.Count != want {
			t.Errorf("duck on %s counts %d, but answered %d POSTs: something committed was lost or counted twice", name, got.Count, want)
		}
	}
}

// waitPhase waits until node's phase in rollout n is phase.
func waitPhase(t *testing.T, dc *duckCluster, via string, n int, node string, phase rollout.Phase) {
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

func TestLeaderKilledWhileCommitting(t *testing.T) {
	dc := newDuckCluster(t)
	a, b := dc.nodes[0], dc.nodes[1]
	if l := leaderOf(members(dc.c, a.API)); l != "a" {
		t.Skipf("leader is %s, not a", l)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := tryCLI(dc.c, b.API, "deploy", "--detach", "-m", "racing the leader's death", "../testdata/duck-v2")
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // aim at the commit in flight; either outcome is valid
	a.Kill()
	t0 := time.Now()
	if err := <-done; err != nil {
		t.Logf("the deploy failed as the leader died (%v); deploying again", err)
		cli(t, dc.c, b.API, "deploy", "--detach", "../testdata/duck-v2")
	}
	waitFor(t, "the rollout to finish on the survivors", 90*time.Second, func() bool {
		r := rolloutOf(t, dc.c, b.API).Rollout
		return r.Version >= 2 && r.State == rollout.Done
	})
	v := rolloutOf(t, dc.c, b.API)
	if len(v.Versions) != 2 || v.Versions[1].Message != "racing the leader's death" && v.Versions[1].Message != "" {
		t.Fatalf("versions after the race: %+v; want exactly v1 and v2", v.Versions)
	}
	for _, name := range []string{"b", "c"} {
		if got, err := askDuck("GET", dc.ducks[name]); err != nil || got.Version != "v2" {
			t.Fatalf("duck on %s: %+v %v", name, got, err)
		}
	}
	t.Logf("leader killed while committing: converged %s after the kill; a was %s", time.Since(t0).Round(time.Millisecond), v.Rollout.Nodes["a"].Phase)
}

// A node whose disk refuses writes (its build cache replaced by a file: as root, a read-only
// mode would not stop the writes) fails its build; the rollout halts there and every duck keeps
// serving the old version.
func TestDiskWriteFailingHaltsAtThatNode(t *testing.T) {
	dc := newDuckCluster(t)
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
}

// A node stopped (SIGTERM) in the middle of its turn is not a failed version: the rollout waits,
// and the restarted node takes its turn again; the cluster never goes back.
func TestNodeStoppedMidTurnTakesItAgain(t *testing.T) {
	dc := newDuckCluster(t)
	postInitial(t, dc)
	b := dc.nodes[1]
	cli(t, dc.c, dc.nodes[0].API, "deploy", "--detach", "../testdata/duck-slow")
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
			return err == nil && got.Version == "v2" && got.Count == 1
		})
	}
}
