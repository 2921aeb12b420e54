package consensus

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// next is the leader's next change for r at now, every member in contact; nil to wait.
func next(r *rollout.Rollout, now time.Time) Step {
	st := r.Next(now, nil)
	if st.Op == "" {
		return nil
	}
	return StepOf(r, st, now)
}

// cluster3 is an FSM with members a, b, c and a first version rolled out everywhere.
func cluster3(t *testing.T) (*fsm, *clock) {
	t.Helper()
	f := newFSM()
	clk := &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	for _, n := range []string{"c", "a", "b"} {
		mustApply(t, f, Register{Member: Member{Name: n}})
	}
	commit(t, f, clk, "v1", false)
	drive(t, f, clk, func(name string, phase rollout.Phase) rollout.Phase { return rollout.Running })
	if r := f.Rollout(); r.State != rollout.Done {
		t.Fatalf("first rollout ended %s", r.State)
	}
	return f, clk
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { c.t = c.t.Add(100 * time.Millisecond); return c.t }

var logIndex uint64

func mustApply(t *testing.T, f *fsm, c Change) {
	t.Helper()
	if err := apply(t, f, c); err != nil {
		t.Fatalf("apply %T: %v", c, err)
	}
}

func apply(t *testing.T, f *fsm, c Change) error {
	t.Helper()
	logIndex++
	if err, ok := f.Apply(entry(t, logIndex, c)).(error); ok {
		return err
	}
	return nil
}

func commit(t *testing.T, f *fsm, clk *clock, src string, canary bool) error {
	t.Helper()
	return apply(t, f, Commit{Time: clk.now(), Canary: canary,
		Version: Version{ID: idOf(src), Message: src, Bundle: []byte(src)}})
}

// drive plays leader and nodes until the rollout needs nobody: the leader commits what Next
// says; a granted node answers with outcome(name, phase). It returns the grants in order.
func drive(t *testing.T, f *fsm, clk *clock, outcome func(name string, phase rollout.Phase) rollout.Phase) []string {
	t.Helper()
	var grants []string
	for range 100 {
		r := f.Rollout()
		step := next(r, clk.now())
		if step == nil {
			// Waiting: for builds, which every node reports as done here; else for nobody.
			built := false
			for _, name := range r.Order {
				if p := r.Nodes[name].Phase; r.State == rollout.Rolling && (p == rollout.Pending || p == rollout.Building) {
					mustApply(t, f, Report{N: r.Version, Node: name, Phase: rollout.Built, Time: clk.now()})
					built = true
				}
			}
			if built {
				continue
			}
			return grants
		}
		mustApply(t, f, step)
		g, ok := step.(Grant)
		if !ok {
			continue
		}
		name, phase := g.Node, g.Phase
		grants = append(grants, string(phase)+":"+name)
		if phase == rollout.Granted {
			mustApply(t, f, Report{N: r.Version, Node: name, Phase: rollout.Swapping, Time: clk.now()})
		}
		res := outcome(name, phase)
		if res == "" {
			continue // the node says nothing (down)
		}
		errMsg := ""
		switch res {
		case rollout.Failed:
			errMsg = "duck exited with status 3"
		case couldNotGoBack:
			res, errMsg = rollout.Reverted, "could not go back: no Migrate reads schema 3"
		}
		mustApply(t, f, Report{N: r.Version, Node: name, Phase: res, Error: errMsg, Time: clk.now()})
	}
	t.Fatal("rollout did not settle in 100 steps")
	return nil
}

func TestRolloutUpgradesOneNodeAtATimeInOrder(t *testing.T) {
	f, clk := cluster3(t)
	if err := commit(t, f, clk, "v2", false); err != nil {
		t.Fatal(err)
	}
	r := f.Rollout()
	if r.Version != 2 || r.From != 1 || !slices.Equal(r.Order, []string{"a", "b", "c"}) {
		t.Fatalf("rollout = %+v", r)
	}
	grants := drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Running })
	if want := []string{"granted:a", "granted:b", "granted:c"}; !slices.Equal(grants, want) {
		t.Fatalf("grants %v, want %v", grants, want)
	}
	r = f.Rollout()
	if r.State != rollout.Done || r.Desired("b") != idOf("v2") {
		t.Fatalf("after rollout: %s, b should run %s", r.State, r.Desired("b"))
	}
	if v, _ := f.Current(); v.N != 2 {
		t.Fatalf("current version %d, want 2", v.N)
	}
	if len(f.State().Past) != 1 {
		t.Fatalf("history holds %d past rollouts, want 1", len(f.State().Past))
	}
}

func TestSameBundleTwiceIsNotANewVersion(t *testing.T) {
	f, clk := cluster3(t)
	err := commit(t, f, clk, "v1", false)
	if !errors.Is(err, ErrSameVersion) {
		t.Fatalf("committing the running bundle again: %v", err)
	}
	if n := len(f.State().Versions); n != 1 {
		t.Fatalf("%d versions after a repeated commit", n)
	}
}

// couldNotGoBack, as drive's outcome of a turn back, is a node whose revert failed (reported as
// Reverted with the reason, as the agent does).
const couldNotGoBack rollout.Phase = "test: could not go back"

// A rollout whose going back failed on a node ends halted with nodes on its target: the cluster
// runs two versions, and the previous one's source is a new version, not "already running" (a
// deploy of it was refused, and so was every way back).
func TestAFailedGoingBackLeavesThePreviousSourceDeployable(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	grants := drive(t, f, clk, func(name string, phase rollout.Phase) rollout.Phase {
		switch {
		case phase == rollout.Reverting:
			return couldNotGoBack
		case name == "c":
			return rollout.Failed
		}
		return rollout.Running
	})
	if want := []string{"granted:a", "granted:b", "granted:c", "reverting:b"}; !slices.Equal(grants, want) {
		t.Fatalf("grants %v, want %v (the going back stops at the first node that could not)", grants, want)
	}
	r := f.Rollout()
	if r.State != rollout.Halted || !strings.Contains(r.Reason, "going back failed on b") || !strings.Contains(r.Reason, "version 2 still runs on a, b") {
		t.Fatalf("rollout %s (%s)", r.State, r.Reason)
	}
	if err := commit(t, f, clk, "v1", false); err != nil {
		t.Fatalf("deploying version 1's source again after a failed going back: %v", err)
	}
	if r := f.Rollout(); r.Version != 3 || r.Target != idOf("v1") {
		t.Fatalf("the new rollout: %+v", r)
	}
}

// A going back that failed at its first node leaves every node on the target: the cluster runs
// it, and the next version comes from it. It came from the version before, and when that next
// version went back every node tried, every 5 s, to catch up to a version whose state it could
// not take (found by trying it from outside).
func TestAFailedGoingBackAtTheFirstNodeLeavesTheClusterOnTheTarget(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Running })
	mustApply(t, f, SetState{N: 2, State: rollout.GoingBack, Reason: "undo by hand", Time: clk.now()})
	drive(t, f, clk, func(name string, phase rollout.Phase) rollout.Phase { return couldNotGoBack })
	if r := f.Rollout(); r.State != rollout.Halted || !r.HaltedOnTarget() {
		t.Fatalf("after a failed going back: %s (%s)", r.State, r.Reason)
	}
	if v, _ := f.Current(); v.N != 2 {
		t.Fatalf("the cluster runs version %d, want 2 (every node stayed on it)", v.N)
	}
	if err := commit(t, f, clk, "v2", false); !errors.Is(err, ErrSameVersion) {
		t.Fatalf("version 2's source again: %v, want it refused as the version the cluster runs", err)
	}
	if err := commit(t, f, clk, "v3", false); err != nil {
		t.Fatal(err)
	}
	if r := f.Rollout(); r.From != 2 || r.FromID != idOf("v2") {
		t.Fatalf("the next rollout comes from version %d, want 2", r.From)
	}
}

func TestFailureHaltsAndRevertsInReverseOrder(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	grants := drive(t, f, clk, func(name string, phase rollout.Phase) rollout.Phase {
		switch {
		case phase == rollout.Reverting:
			return rollout.Reverted
		case name == "c":
			return rollout.Failed
		}
		return rollout.Running
	})
	want := []string{"granted:a", "granted:b", "granted:c", "reverting:b", "reverting:a"}
	if !slices.Equal(grants, want) {
		t.Fatalf("grants %v, want %v", grants, want)
	}
	r := f.Rollout()
	if r.State != rollout.WentBack || !strings.Contains(r.Reason, "c failed: duck exited") {
		t.Fatalf("rollout %s (%s)", r.State, r.Reason)
	}
	for _, n := range r.Order {
		if r.Desired(n) != idOf("v1") {
			t.Fatalf("%s should be back on v1, desired %s", n, r.Desired(n))
		}
	}
	if v, _ := f.Current(); v.N != 1 {
		t.Fatalf("current version %d after a revert, want 1", v.N)
	}
	// Nothing was lost: a new version may be committed.
	if err := commit(t, f, clk, "v3", false); err != nil {
		t.Fatal(err)
	}
}

func TestBuildFailureHaltsBeforeAnySwap(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "broken", false)
	mustApply(t, f, Report{N: 2, Node: "b", Phase: rollout.Failed, Error: "main.go:3: undefined: x", Time: clk.now()})
	grants := drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Running })
	if len(grants) != 0 {
		t.Fatalf("a version that does not build was granted: %v", grants)
	}
	if r := f.Rollout(); r.State != rollout.WentBack || r.Desired("a") != idOf("v1") {
		t.Fatalf("rollout %s; a desired %s", r.State, r.Desired("a"))
	}
}

func TestCanaryPausesAfterFirstNode(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", true)
	grants := drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Running })
	if !slices.Equal(grants, []string{"granted:a"}) || f.Rollout().State != rollout.Paused {
		t.Fatalf("canary: grants %v, state %s", grants, f.Rollout().State)
	}
	if err := commit(t, f, clk, "v3", false); err == nil {
		t.Fatal("a new version was committed over a paused canary")
	}
	mustApply(t, f, SetState{N: 2, State: rollout.Rolling, Time: clk.now()})
	grants = drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Running })
	if !slices.Equal(grants, []string{"granted:b", "granted:c"}) || f.Rollout().State != rollout.Done {
		t.Fatalf("resume: grants %v, state %s", grants, f.Rollout().State)
	}
}

func TestNodeThatNeverAnswersIsSkipped(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	if step := next(f.Rollout(), clk.now()); step != nil {
		t.Fatalf("a node that has not built yet was granted at once: %+v", step)
	}
	// a never reports building: after the ack timeout it is granted anyway, to be skipped.
	clk.t = clk.t.Add(rollout.DefaultStartDeadline + time.Second)
	grant, ok := next(f.Rollout(), clk.now()).(Grant)
	if !ok || grant.Node != "a" {
		t.Fatalf("a silent node was not granted after the ack timeout: %+v", grant)
	}
	mustApply(t, f, grant)
	clk.t = clk.t.Add(rollout.DefaultStartDeadline + time.Second)
	step, ok := next(f.Rollout(), clk.now()).(Report)
	if !ok || step.Phase != rollout.Skipped || step.Node != "a" {
		t.Fatalf("after the ack timeout: %+v", step)
	}
	mustApply(t, f, step)
	grants := drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Running })
	if !slices.Equal(grants, []string{"granted:b", "granted:c"}) || f.Rollout().State != rollout.Done {
		t.Fatalf("after skipping a: grants %v, state %s", grants, f.Rollout().State)
	}
	if f.Rollout().Desired("a") != idOf("v2") {
		t.Fatal("a skipped node must catch up to the target when it returns")
	}
}

func TestStaleCommandsAreRefused(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	err := apply(t, f, Report{N: 1, Node: "a", Phase: rollout.Running, Time: clk.now()})
	if !errors.Is(err, ErrStale) {
		t.Fatalf("report about version 1 during version 2's rollout: %v", err)
	}
	err = apply(t, f, Report{N: 2, Node: "a", Phase: rollout.Swapping, Time: clk.now()})
	if !errors.Is(err, ErrStale) {
		t.Fatalf("swapping without a grant: %v", err)
	}
}

func TestSnapshotKeepsRollout(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	snap, _ := f.Snapshot()
	var sink memSink
	snap.Persist(&sink)
	g := newFSM()
	if err := g.Restore(nopCloser{&sink}); err != nil {
		t.Fatal(err)
	}
	if r := g.Rollout(); r == nil || r.Version != 2 || r.State != rollout.Rolling || len(g.State().Versions) != 2 {
		t.Fatalf("restored rollout %+v", r)
	}
}

type nopCloser struct{ *memSink }

func (nopCloser) Close() error { return nil }

func TestCommitRetriedAfterLostLeaderIsTheSameVersion(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	if err := commit(t, f, clk, "v2", false); err != nil {
		t.Fatalf("the same commit proposed again while it rolls out: %v", err)
	}
	if st := f.State(); len(st.Versions) != 2 || st.Rollout.Version != 2 || len(st.Past) != 1 {
		t.Fatalf("a retried commit changed the state: %d versions, rollout %d, %d past", len(st.Versions), st.Rollout.Version, len(st.Past))
	}
	if err := commit(t, f, clk, "v3", false); err == nil {
		t.Fatal("another version was committed while version 2 rolls out")
	}
}

func TestRestoreRefusesARolloutNoApplyCouldMake(t *testing.T) {
	for _, snap := range []string{
		`{"members":{"a":{"name":"a"}},"rollout":{"version":1,"order":["a"],"nodes":{"a":null},"state":"rolling"}}`,
		`{"members":{"a":{"name":"a"}},"rollout":{"version":1,"order":["a","b"],"nodes":{"a":{"phase":"pending"}},"state":"rolling"}}`,
		`{"members":{},"past":[{"version":1,"order":["x"],"nodes":{},"state":"done"}]}`,
	} {
		f, _ := cluster3(t)
		before := f.State()
		if err := f.Restore(io.NopCloser(strings.NewReader(snap))); err == nil {
			t.Fatalf("restored %s", snap)
		}
		if after := f.State(); after.Rollout.Version != before.Rollout.Version || len(after.Members) != 3 {
			t.Fatalf("a refused snapshot changed the state")
		}
	}
}

// A node fails while an earlier one is still swapping: the one mid-swap finishes its turn and is
// then taken back too, so no node is left on the failed version.
func TestFailureWhileAnotherNodeSwapsRevertsThatNodeToo(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	for _, n := range []string{"a", "b", "c"} {
		mustApply(t, f, Report{N: 2, Node: n, Phase: rollout.Built, Time: clk.now()})
	}
	mustApply(t, f, next(f.Rollout(), clk.now())) // grant a
	mustApply(t, f, Report{N: 2, Node: "a", Phase: rollout.Swapping, Time: clk.now()})
	mustApply(t, f, Report{N: 2, Node: "c", Phase: rollout.Failed, Error: "disk full", Time: clk.now()})
	if r := f.Rollout(); r.State != rollout.GoingBack {
		t.Fatalf("state %s after c failed", r.State)
	}
	if step := next(f.Rollout(), clk.now()); step != nil {
		t.Fatalf("the rollout went back while a was mid-swap: %+v", step)
	}
	mustApply(t, f, Report{N: 2, Node: "a", Phase: rollout.Running, Time: clk.now()})
	grants := drive(t, f, clk, func(name string, phase rollout.Phase) rollout.Phase { return rollout.Reverted })
	if !slices.Equal(grants, []string{"reverting:a"}) || f.Rollout().State != rollout.WentBack {
		t.Fatalf("grants %v, state %s; want a taken back", grants, f.Rollout().State)
	}
	for _, n := range []string{"a", "b", "c"} {
		if d := f.Rollout().Desired(n); d != idOf("v1") {
			t.Fatalf("%s should run v1 after the revert, desired %s", n, d)
		}
	}
}

// idOf is the version ID the tests give a source: its sha256, as a real bundle's.
func idOf(src string) bundle.ID {
	sum := sha256.Sum256([]byte(src))
	return bundle.ID(hex.EncodeToString(sum[:]))
}

func TestSwappingReportedTwiceIsTheSameTurn(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	for _, n := range []string{"a", "b", "c"} {
		mustApply(t, f, Report{N: 2, Node: n, Phase: rollout.Built, Time: clk.now()})
	}
	mustApply(t, f, next(f.Rollout(), clk.now())) // grant a
	mustApply(t, f, Report{N: 2, Node: "a", Phase: rollout.Swapping, Time: clk.now()})
	since := f.Rollout().Nodes["a"].Since
	if err := apply(t, f, Report{N: 2, Node: "a", Phase: rollout.Swapping, Time: clk.now()}); err != nil {
		t.Fatalf("a node restarted mid-turn reporting swapping again: %v", err)
	}
	if nr := f.Rollout().Nodes["a"]; nr.Phase != rollout.Swapping || !nr.Since.Equal(since) {
		t.Fatalf("the repeated report changed the turn: %+v", nr)
	}
}

// A round's grants go through the log as one entry; one refused step refuses the whole entry and
// leaves the rollout as it was.
func TestStepsApplyAllOrNone(t *testing.T) {
	f := newFSM()
	clk := &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	for i := 1; i <= 10; i++ {
		mustApply(t, f, Register{Member: Member{Name: "n" + strconv.Itoa(i)}})
	}
	mustApply(t, f, Commit{Time: clk.now(), Policy: rollout.Policy{MaxParallel: 4},
		Version: Version{ID: idOf("v1"), Bundle: []byte("v1")}})
	r := f.Rollout()
	for _, name := range r.Order {
		mustApply(t, f, Report{N: r.Version, Node: name, Phase: rollout.Built, Time: clk.now()})
	}
	r = f.Rollout()
	now := clk.now()
	steps := r.Steps(now, nil, 100)
	var granted []string
	for _, st := range steps {
		if st.Op != rollout.OpGrant {
			t.Fatalf("step %+v in a round of grants", st)
		}
		granted = append(granted, st.Node)
	}
	if want := []string{"n1", "n2", "n3", "n4"}; !slices.Equal(granted, want) {
		t.Fatalf("one round grants %v, want %v (max-parallel 4, natural order)", granted, want)
	}
	if r.Nodes["n1"].Phase != rollout.Built {
		t.Fatalf("Steps changed the rollout it was given: n1 is %s", r.Nodes["n1"].Phase)
	}

	// The same round with a step that cannot apply (n9 is not in its turn) is refused whole.
	bad := RoundOf(r, append(slices.Clone(steps), rollout.Step{Op: rollout.OpReport, Node: "n9", Phase: rollout.Running}), now)
	rolloutJSON := func() string { b, _ := json.Marshal(f.Rollout()); return string(b) }
	before := rolloutJSON()
	if err := apply(t, f, bad); err == nil || !strings.Contains(err.Error(), "step 5 of 5") {
		t.Fatalf("a round with a refused step: %v, want it refused naming step 5", err)
	}
	if after := rolloutJSON(); after != before {
		t.Fatalf("a refused round changed the state:\nbefore %s\nafter  %s", before, after)
	}

	mustApply(t, f, RoundOf(r, steps, now))
	r = f.Rollout()
	for _, name := range granted {
		if nr := r.Nodes[name]; nr.Phase != rollout.Granted || !nr.Since.Equal(now) {
			t.Errorf("%s after the round: %s since %v, want granted since %v", name, nr.Phase, nr.Since, now)
		}
	}
	if ph := r.Nodes["n5"].Phase; ph != rollout.Built {
		t.Errorf("n5 is %s: the round took more than max-parallel", ph)
	}
	if more := r.Steps(clk.now(), nil, 100); len(more) != 0 {
		t.Errorf("with every slot taken the leader still has moves: %+v", more)
	}
}

// Failed versions no longer push the last good ones' bundles out: after six versions that
// failed at their first node, `undo --to` still reaches the good versions before the one the
// cluster runs.
func TestTheLastGoodVersionsKeepTheirBundles(t *testing.T) {
	f, clk := cluster3(t)
	for _, src := range []string{"v2", "v3"} {
		commit(t, f, clk, src, false)
		drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Running })
	}
	for i := range 6 {
		if err := commit(t, f, clk, fmt.Sprintf("bad%d", i), false); err != nil {
			t.Fatal(err)
		}
		drive(t, f, clk, func(string, rollout.Phase) rollout.Phase { return rollout.Failed })
		if r := f.Rollout(); r.Active() || r.State == rollout.Done {
			t.Fatalf("bad version %d: %s", i, r.State)
		}
	}
	st := f.State()
	kept := map[rollout.Number]bool{}
	for _, v := range st.Versions {
		kept[v.N] = len(v.Bundle) > 0
	}
	if !kept[2] || !kept[3] {
		t.Fatalf("versions 2 and 3, good ones, lost their bundles: %v", kept)
	}
	if kept[4] {
		t.Fatalf("version 4, failed and older than the newest five, kept its bundle: %v", kept)
	}
}
