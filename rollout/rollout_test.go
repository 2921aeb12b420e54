package rollout

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// three is version 2 rolling out over a, b, c from version 1.
func three() *Rollout {
	return New(2, "v2", 1, "v1", Members("a", "b", "c"), false, true, Policy{}, t0)
}

func inContact(string) time.Duration { return 0 }

func silentFor(node string, d time.Duration) Silence {
	return func(name string) time.Duration {
		if name == node {
			return d
		}
		return 0
	}
}

// TestEveryPhaseHasAWayOut is the rule of issue "a rollout always ends": for each phase a node
// can be in during a rollout, a node that is down, or silent, or stuck there is moved on within
// a bounded time.
func TestEveryPhaseHasAWayOut(t *testing.T) {
	p := Policy{}.WithDefaults()
	cases := []struct {
		name  string
		state State
		phase Phase
		since time.Duration // how long before now the node entered the phase
		quiet Silence
		want  Step
	}{
		{"pending, down", Rolling, Pending, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"pending, in contact but silent", Rolling, Pending, p.StartDeadline + time.Second, inContact, Step{Op: OpGrant, Node: "a", Phase: Granted}},
		{"building, down (the leader killed after the commit)", Rolling, Building, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"building past the build deadline", Rolling, Building, p.BuildDeadline + time.Second, inContact, Step{Op: OpReport, Node: "a", Phase: Failed}},
		{"built, down at its turn", Rolling, Built, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"granted, down", Rolling, Granted, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"granted, silent", Rolling, Granted, p.StartDeadline + time.Second, inContact, Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"swapping, down", Rolling, Swapping, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"swapping (or in its healthy wait) past the progress deadline", Rolling, Swapping, p.ProgressDeadline + time.Second, inContact, Step{Op: OpReport, Node: "a", Phase: Failed}},
		{"swapping while paused, down", Paused, Swapping, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"swapping while going back, stuck", GoingBack, Swapping, p.ProgressDeadline + time.Second, inContact, Step{Op: OpReport, Node: "a", Phase: Failed}},
		{"granted when the rollout went back", GoingBack, Granted, 0, inContact, Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"going back, down", GoingBack, Reverting, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
		{"going back past the progress deadline", GoingBack, Reverting, p.ProgressDeadline + time.Second, inContact, Step{Op: OpReport, Node: "a", Phase: Failed}},
		{"running, down when its turn to go back comes", GoingBack, Running, time.Second, silentFor("a", p.DownAfter+time.Second), Step{Op: OpReport, Node: "a", Phase: Skipped}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := three()
			now := t0.Add(time.Hour)
			r.State = c.state
			r.Started = now.Add(-c.since)
			r.Nodes["a"].Phase, r.Nodes["a"].Since = c.phase, now.Add(-c.since)
			got := r.Next(now, c.quiet)
			if got.Op != c.want.Op || got.Node != c.want.Node || got.Phase != c.want.Phase {
				t.Fatalf("Next = %+v, want %s %s %s", got, c.want.Op, c.want.Node, c.want.Phase)
			}
			// Whatever the step is, the log takes it.
			var err error
			switch got.Op {
			case OpGrant:
				err = r.Grant(got.Node, got.Phase, now)
			case OpReport:
				err = r.Report(got.Node, got.Phase, got.Message, now)
			}
			if err != nil {
				t.Fatalf("the log refused the leader's own step %+v: %v", got, err)
			}
			// And within the bound, nobody waits: the same node in contact and fresh waits.
			r2 := three()
			r2.State, r2.Started = c.state, now
			r2.Nodes["a"].Phase, r2.Nodes["a"].Since = c.phase, now
			if c.phase != Granted || c.state != GoingBack {
				if st := r2.Next(now, inContact); st.Op == OpReport {
					t.Fatalf("a node fresh in %s and in contact was already reported %s", c.phase, st.Phase)
				}
			}
		})
	}
}

func TestLeaderKilledAfterCommitIsSkippedAndTheRestUpgrade(t *testing.T) {
	// The case from the field: a recorded itself building and died with its leadership; b and c
	// built. The new leader must move on, not wait for ever.
	r := three()
	r.Report("a", Building, "", t0.Add(time.Second))
	r.Report("b", Built, "", t0.Add(2*time.Second))
	r.Report("c", Built, "", t0.Add(2*time.Second))
	aDown := silentFor("a", 0)
	now := t0.Add(3 * time.Second)
	if st := r.Next(now, aDown); st.Op != "" {
		t.Fatalf("a, still in contact and building, got %+v", st)
	}
	aDown = silentFor("a", Policy{}.WithDefaults().DownAfter+time.Millisecond)
	for range 20 {
		now = now.Add(100 * time.Millisecond)
		st := r.Next(now, aDown)
		var err error
		switch st.Op {
		case OpGrant:
			err = r.Grant(st.Node, st.Phase, now)
			if err == nil {
				r.Report(st.Node, Swapping, "", now)
				err = r.Report(st.Node, Running, "", now)
			}
		case OpReport:
			err = r.Report(st.Node, st.Phase, st.Message, now)
		case OpState:
			err = r.SetState(st.State, st.Message, now)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if r.State != Done || r.Nodes["a"].Phase != Skipped || r.Nodes["b"].Phase != Running || r.Nodes["c"].Phase != Running {
		t.Fatalf("rollout %s: a %s, b %s, c %s", r.State, r.Nodes["a"].Phase, r.Nodes["b"].Phase, r.Nodes["c"].Phase)
	}
	if r.Desired("a") != "v2" {
		t.Fatal("a skipped node must catch up with the target once the rollout is done")
	}
}

func TestRolloutWhereEveryNodeWasSkippedIsNotDone(t *testing.T) {
	r := three()
	for _, n := range r.Order {
		r.Report(n, Skipped, "down", t0)
	}
	st := r.Next(t0, inContact)
	if st.Op != OpState || st.State != Halted {
		t.Fatalf("Next = %+v, want halted: nothing ran the version", st)
	}
	r.SetState(st.State, st.Message, t0)
	if r.Desired("a") != "v1" {
		t.Fatalf("nodes should stay on v1, not catch up with a version nobody ran")
	}
}

func TestSkippedNodeWaitsForTheEndBeforeCatchingUp(t *testing.T) {
	r := three()
	r.Report("a", Skipped, "down", t0)
	if d := r.Follow("a", Local{Have: "v1"}); d.Kind != Idle || r.Desired("a") != "v1" {
		t.Fatalf("a skipped node while the rollout rolls: duty %+v, desired %s", d, r.Desired("a"))
	}
	r.State = Done
	d := r.Follow("a", Local{Have: "v1"})
	if d.Kind != CatchUp || d.Version != "v2" {
		t.Fatalf("after the rollout: duty %+v, want catch up with v2", d)
	}
	if d2 := r.Follow("a", Local{Have: "v1", Synced: d.Key}); d2.Kind != Idle {
		t.Fatalf("once caught up it must not switch again: %+v", d2)
	}
}

func TestTurnTakenOncePerGrantAcrossRestarts(t *testing.T) {
	r := three()
	r.Report("a", Built, "", t0)
	r.Grant("a", Granted, t0)
	d := r.Follow("a", Local{Have: "v1"})
	if d.Kind != Turn || d.Version != "v2" || d.Success != Running {
		t.Fatalf("granted: %+v", d)
	}
	r.Report("a", Swapping, "", t0)
	if again := r.Follow("a", Local{Have: "v1"}); again != d {
		t.Fatalf("restarted mid-swap, the same turn goes on: %+v, want %+v", again, d)
	}
	// Finished here, but the log never heard (the report died with its process): the node says
	// again how it went, from what it runs, and never swaps again.
	if done := r.Follow("a", Local{Have: "v2", Acted: d.Key}); done.Kind != Report || done.Success != Running {
		t.Fatalf("a finished turn whose report was lost: %+v; want running reported again", done)
	}
	if done := r.Follow("a", Local{Have: "v1", Acted: d.Key}); done.Kind != Report || done.Success != Failed {
		t.Fatalf("a finished turn that left the ducks on v1: %+v; want failed reported", done)
	}
	r.Report("a", Running, "", t0)
	if done := r.Follow("a", Local{Have: "v2", Acted: d.Key}); done.Kind != Idle {
		t.Fatalf("once the log has the report: %+v", done)
	}
	// The start is said beside the swap: a turn finished here before the log heard even that
	// (granted still) is reported too, from what the node runs.
	r2 := three()
	r2.Report("b", Built, "", t0)
	r2.Grant("b", Granted, t0)
	turn := r2.Follow("b", Local{Have: "v1"})
	if again := r2.Follow("b", Local{Have: "v2", Acted: turn.Key}); again.Kind != Report || again.Success != Running {
		t.Fatalf("a finished turn the log knows only as granted: %+v; want running reported", again)
	}
}

func TestBuildsStartAtCommitAndAgainAfterARestart(t *testing.T) {
	r := three()
	if !r.NeedsBuild("a", false) || r.NeedsBuild("a", true) {
		t.Fatal("a pending node builds once per process")
	}
	r.Report("a", Building, "", t0)
	if !r.NeedsBuild("a", false) {
		t.Fatal("a node restarted while building must build again: nothing else will")
	}
	r.Report("a", Built, "", t0)
	if r.NeedsBuild("a", false) {
		t.Fatal("a built node built again")
	}
}

func TestStaleChangesAreRefused(t *testing.T) {
	r := three()
	if err := r.Report("a", Running, "", t0); err == nil {
		t.Fatal("running without a turn was taken")
	}
	if err := r.Grant("a", Reverting, t0); err == nil {
		t.Fatal("a revert grant while rolling forward was taken")
	}
	r.Report("a", Skipped, "down", t0)
	if err := r.Report("a", Failed, "late build failure", t0); err == nil {
		t.Fatal("a late failure of a node already skipped changed it")
	}
	if err := r.Grant("a", Granted, t0); err == nil {
		t.Fatal("a skipped node was granted again")
	}
}

func TestPolicyRefusesWhatNoRolloutCanKeep(t *testing.T) {
	if err := (Policy{BuildDeadline: -time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "build deadline") {
		t.Fatalf("negative build deadline: %v", err)
	}
	if err := (Policy{Healthy: time.Minute, ProgressDeadline: 30 * time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "--progress-deadline") {
		t.Fatalf("healthy wait longer than the turn: %v", err)
	}
	if err := (Policy{}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestOrderIsNatural(t *testing.T) {
	got := Order([]string{"n10", "n2", "n1", "b", "a", "n11", "n02", "z9", "z10a", "z10"})
	want := []string{"a", "b", "n1", "n02", "n2", "n10", "n11", "z9", "z10", "z10a"}
	if !slices.Equal(got, want) {
		t.Fatalf("Order = %v, want %v", got, want)
	}
}

func TestPlanPutsCanariesFirstThenWavesByLabelInNaturalOrder(t *testing.T) {
	zone := func(name, z string) Member {
		if z == "" {
			return Member{Name: name}
		}
		return Member{Name: name, Labels: map[string]string{"zone": z}}
	}
	members := []Member{zone("n10", "eu-2"), zone("n2", "eu-10"), zone("n1", "eu-2"), zone("n3", ""), zone("n4", "eu-2"), zone("n11", "eu-10")}
	order, wave := Plan(members, Policy{Canaries: 1, WaveBy: "zone"})
	if want := []string{"n1", "n4", "n10", "n2", "n11", "n3"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	want := map[string]int{"n1": 0, "n4": 1, "n10": 1, "n2": 2, "n11": 2, "n3": 3}
	for name, w := range want {
		if wave[name] != w {
			t.Errorf("%s in wave %d, want %d", name, wave[name], w)
		}
	}
}

// drive plays the leader and well-behaved nodes: every node builds at once; a granted node
// reports swapping and then outcome(name). It returns the grants in the order made and the
// largest number of nodes in their turn at once.
func drive(t *testing.T, r *Rollout, outcome func(string) Phase) (grants []string, most int) {
	t.Helper()
	now := t0
	for _, n := range r.Order {
		r.Report(n, Built, "", now)
	}
	inTurn := map[string]bool{}
	for range 1000 {
		now = now.Add(100 * time.Millisecond)
		st := r.Next(now, inContact)
		switch st.Op {
		case "":
			if len(inTurn) == 0 {
				return grants, most
			}
			for n := range inTurn { // the turns under way end, one a round
				delete(inTurn, n)
				if err := r.Report(n, outcome(n), "", now); err != nil {
					t.Fatal(err)
				}
				break
			}
		case OpGrant:
			if err := r.Grant(st.Node, st.Phase, now); err != nil {
				t.Fatal(err)
			}
			grants = append(grants, string(st.Phase)+":"+st.Node)
			if st.Phase == Granted {
				r.Report(st.Node, Swapping, "", now)
				inTurn[st.Node] = true
			} else {
				r.Report(st.Node, Reverted, "", now)
			}
			most = max(most, len(inTurn))
		case OpReport:
			if err := r.Report(st.Node, st.Phase, st.Message, now); err != nil {
				t.Fatal(err)
			}
		case OpState:
			if err := r.SetState(st.State, st.Message, now); err != nil {
				t.Fatal(err)
			}
			if st.State == Paused {
				return grants, most
			}
		}
	}
	t.Fatal("the rollout did not settle")
	return nil, 0
}

func TestWavesGoInOrderWithMaxParallelInside(t *testing.T) {
	var names []string
	for i := 1; i <= 10; i++ {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	r := New(2, "v2", 1, "v1", Members(names...), false, true, Policy{MaxParallelPercent: 20}, t0)
	grants, most := drive(t, r, func(string) Phase { return Running })
	if r.State != Done || most != 2 || len(grants) != 10 {
		t.Fatalf("rollout %s, %d grants, at most %d at once; want done, 10 grants, 2 at once (20%% of 10)", r.State, len(grants), most)
	}
	if grants[0] != "granted:n1" || grants[1] != "granted:n2" || grants[9] != "granted:n10" {
		t.Fatalf("grants %v: want natural order", grants)
	}
}

func TestFailureBudgetHaltsOnlyPastIt(t *testing.T) {
	r := New(2, "v2", 1, "v1", Members("a", "b", "c", "d"), false, true, Policy{FailureBudget: 1}, t0)
	drive(t, r, func(n string) Phase {
		if n == "b" {
			return Failed
		}
		return Running
	})
	if r.State != Done || r.Desired("b") != "v1" || r.Desired("c") != "v2" {
		t.Fatalf("one failure within a budget of one: rollout %s, b should stay on v1 (%s), c run v2 (%s)", r.State, r.Desired("b"), r.Desired("c"))
	}
	r = New(3, "v3", 2, "v2", Members("a", "b", "c", "d"), false, true, Policy{FailureBudget: 1}, t0)
	drive(t, r, func(n string) Phase {
		if n == "b" || n == "c" {
			return Failed
		}
		return Running
	})
	if r.State != WentBack || !strings.Contains(r.Reason, "over the failure budget") || r.Nodes["d"].Phase != Built {
		t.Fatalf("two failures over a budget of one: rollout %s (%s), d %s; want gone back before d", r.State, r.Reason, r.Nodes["d"].Phase)
	}
}

// When no node ran the version, the halt says whether the version failed everywhere (it does
// not work) or the nodes were away (deploy again once they are back): it said the latter for both.
func TestNoNodeRanTheVersionSaysWhy(t *testing.T) {
	r := New(2, "v2", 1, "v1", Members("a", "b"), false, true, Policy{FailureBudget: 5}, t0)
	drive(t, r, func(string) Phase { return Failed })
	if r.State != Halted || !strings.Contains(r.Reason, "all 2 failed") || strings.Contains(r.Reason, "once the nodes are back") {
		t.Fatalf("every node failed: %s (%s)", r.State, r.Reason)
	}
	r = New(2, "v2", 1, "v1", Members("a", "b"), false, true, Policy{FailureBudget: 5}, t0)
	r.Report("a", Skipped, "down", t0)
	drive(t, r, func(string) Phase { return Failed })
	if r.State != Halted || !strings.Contains(r.Reason, "1 failed and 1 were skipped") {
		t.Fatalf("one failed, one skipped: %s (%s)", r.State, r.Reason)
	}
}

func TestCanariesPauseThenPromoteThemselves(t *testing.T) {
	p := Policy{Canaries: 2, AutoPromoteAfter: time.Minute}
	r := New(2, "v2", 1, "v1", Members("a", "b", "c", "d"), false, true, p, t0)
	grants, _ := drive(t, r, func(string) Phase { return Running })
	if r.State != Paused || len(grants) != 2 {
		t.Fatalf("after the canaries: %s with grants %v", r.State, grants)
	}
	if st := r.Next(r.PausedAt.Add(30*time.Second), inContact); st.Op != "" {
		t.Fatalf("promoted before the canaries were healthy for a minute: %+v", st)
	}
	st := r.Next(r.PausedAt.Add(time.Minute), inContact)
	if st.Op != OpState || st.State != Rolling {
		t.Fatalf("a minute on, Next = %+v, want the rollout promoted", st)
	}
	r.SetState(st.State, st.Message, r.PausedAt.Add(time.Minute))
	drive(t, r, func(string) Phase { return Running })
	if r.State != Done {
		t.Fatalf("after promotion: %s", r.State)
	}
}

func TestGoingBackTakesTheWavesInReverse(t *testing.T) {
	members := []Member{{Name: "a", Labels: map[string]string{"zone": "1"}}, {Name: "b", Labels: map[string]string{"zone": "1"}}, {Name: "c", Labels: map[string]string{"zone": "2"}}, {Name: "d", Labels: map[string]string{"zone": "2"}}}
	r := New(2, "v2", 1, "v1", members, false, true, Policy{WaveBy: "zone", MaxParallel: 2}, t0)
	drive(t, r, func(string) Phase { return Running })
	if err := r.SetState(GoingBack, "undo by hand", t0); err != nil {
		t.Fatal(err)
	}
	grants, _ := drive(t, r, func(string) Phase { return Running })
	if want := []string{"reverting:d", "reverting:c", "reverting:b", "reverting:a"}; !slices.Equal(grants, want) || r.State != WentBack {
		t.Fatalf("going back: %v, %s; want %v", grants, r.State, want)
	}
}

func TestNoCanaryRanHaltsInsteadOfPausing(t *testing.T) {
	r := New(2, "v2", 1, "v1", Members("a", "b", "c"), true, true, Policy{}, t0)
	r.Report("a", Skipped, "down", t0)
	st := r.Next(t0, inContact)
	if st.Op != OpState || st.State != Halted {
		t.Fatalf("Next = %+v, want halted: no canary ran", st)
	}
}

func TestDriftedBinaryHaltsWithSameBinary(t *testing.T) {
	r := New(2, "v2", 1, "v1", Members("a", "b", "c"), false, true, Policy{SameBinary: true}, t0)
	r.ReportBuilt("a", BuildInfo{Sum: "aaaa", Toolchain: "go1.26.8"}, nil, t0)
	r.ReportBuilt("b", BuildInfo{Sum: "aaaa", Toolchain: "go1.26.8"}, nil, t0)
	r.ReportBuilt("c", BuildInfo{Sum: "cccc", Toolchain: "go1.26.7"}, nil, t0)
	st := r.Next(t0, inContact)
	if st.Op != OpReport || st.Node != "c" || st.Phase != Failed || !strings.Contains(st.Message, "c built cccc with go1.26.7") || !strings.Contains(st.Message, "a, b built aaaa with go1.26.8") {
		t.Fatalf("Next = %+v; want c failed, naming the nodes and toolchains", st)
	}
	if g := r.Binaries(); len(g) != 2 || len(g[0].Nodes) != 2 {
		t.Fatalf("binaries %+v", g)
	}
	// With a failure budget the failed node does not halt the rollout; the drift still does,
	// before any node of the odd build takes its turn.
	for _, revert := range []bool{true, false} {
		rb := New(2, "v2", 1, "v1", Members("a", "b", "c", "d"), false, revert, Policy{SameBinary: true, FailureBudget: 2}, t0)
		for _, n := range []string{"a", "b"} {
			rb.ReportBuilt(n, BuildInfo{Sum: "aaaa", Toolchain: "go1.26.8"}, nil, t0)
		}
		for _, n := range []string{"c", "d"} {
			rb.ReportBuilt(n, BuildInfo{Sum: "cccc", Toolchain: "go1.26.7"}, nil, t0)
		}
		for i := 0; rb.forward() && i < 10; i++ {
			st := rb.Next(t0, inContact)
			if st.Op == OpGrant && (st.Node == "c" || st.Node == "d") {
				t.Fatalf("budget 2, revert %v: %s of the drifted build granted its turn", revert, st.Node)
			}
			if err := rb.Apply(st, t0); err != nil {
				t.Fatalf("apply %+v: %v", st, err)
			}
		}
		want := Halted
		if revert {
			want = GoingBack
		}
		if rb.State != want || !strings.Contains(rb.Reason, "2 distinct binaries with --same-binary") || !strings.Contains(rb.Reason, "c, d built cccc with go1.26.7") {
			t.Fatalf("budget 2, revert %v: %s (%s), want %s naming the drift", revert, rb.State, rb.Reason, want)
		}
	}
	// Without the policy, drift is shown, not acted on.
	r.Policy.SameBinary = false
	if st := r.Next(t0, inContact); st.Op != OpGrant || st.Node != "a" {
		t.Fatalf("without --same-binary: %+v", st)
	}
}

func TestAVersionWhoseStateCannotGoBackIsRefusedBeforeAnySwap(t *testing.T) {
	r := three()
	r.ReportBuilt("a", BuildInfo{Sum: "s"}, &StateInfo{Schema: 3, FromSchema: 1}, t0)
	st := r.Next(t0, inContact)
	if st.Op != OpState || st.State != Halted || !strings.Contains(st.Message, "--no-revert") {
		t.Fatalf("Next = %+v, want halted before any swap, pointing to --no-revert", st)
	}
	// With a way back, or without auto-revert, it goes ahead.
	r = three()
	r.ReportBuilt("a", BuildInfo{Sum: "s"}, &StateInfo{Schema: 2, Downgrades: []int{1}, FromSchema: 1}, t0)
	if st := r.Next(t0, inContact); st.Op != OpGrant {
		t.Fatalf("with a Downgrade to schema 1: %+v", st)
	}
	r = New(2, "v2", 1, "v1", Members("a", "b", "c"), false, false, Policy{}, t0)
	r.ReportBuilt("a", BuildInfo{Sum: "s"}, &StateInfo{Schema: 3, FromSchema: 1}, t0)
	if st := r.Next(t0, inContact); st.Op != OpGrant {
		t.Fatalf("with --no-revert: %+v", st)
	}
}

func TestGrantedWithinReadsTheLeadersStamp(t *testing.T) {
	r := three()
	r.Report("a", Built, "", t0)
	if r.GrantedWithin("a", t0, time.Second) {
		t.Fatal("a node never granted counts as granted")
	}
	r.Grant("a", Granted, t0)
	for _, c := range []struct {
		now  time.Time
		want bool
	}{
		{t0, true},
		{t0.Add(999 * time.Millisecond), true},
		{t0.Add(time.Second), false},             // stale: ask the leader
		{t0.Add(-100 * time.Millisecond), false}, // a clock behind the leader's proves nothing
		{t0.Add(time.Hour), false},
	} {
		if got := r.GrantedWithin("a", c.now, time.Second); got != c.want {
			t.Errorf("granted at %s, now %s: within a second %v, want %v", t0.Format(time.TimeOnly), c.now.Format(time.StampMilli), got, c.want)
		}
	}
	if r.GrantedWithin("zed", t0, time.Second) {
		t.Fatal("a node outside the rollout counts as granted")
	}
}

// A running report said again (a retry whose first answer was lost) is taken as it was: refused,
// it would tell the node that the log did not take its turn, and the node would go back.
func TestRunningSaidAgainIsTheSameTurn(t *testing.T) {
	r := three()
	r.Report("a", Built, "", t0)
	r.Grant("a", Granted, t0)
	if err := r.Report("a", Running, "", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := r.Report("a", Running, "", t0.Add(2*time.Second)); err != nil {
		t.Fatalf("running said again: %v", err)
	}
	if nr := r.Nodes["a"]; nr.Phase != Running || !nr.Done.Equal(t0.Add(time.Second)) {
		t.Fatalf("after running said again: %+v; want running since the first report", nr)
	}
}

// Back to an older schema after a migration: the way back is the newer version's own Migrate,
// which read the older state on the way up. A plain deploy of the older version after the
// migration was refused as if it needed a Downgrade to the newer schema (found by trying it).
func TestAnOlderSchemaAfterAMigrationGoesBackThroughTheNewerMigrate(t *testing.T) {
	r := three()
	r.ReportBuilt("a", BuildInfo{Sum: "s"}, &StateInfo{Schema: 1, FromSchema: 2, FromMigrates: true}, t0)
	if st := r.Next(t0, inContact); st.Op != OpGrant {
		t.Fatalf("schema 2 -> 1 with the schema 2 version's Migrate to come back through: %+v", st)
	}
	r = three()
	r.ReportBuilt("a", BuildInfo{Sum: "s"}, &StateInfo{Schema: 1, FromSchema: 2}, t0)
	st := r.Next(t0, inContact)
	if st.Op != OpState || st.State != Halted || !strings.Contains(st.Message, "no Config.Migrate") || strings.Contains(st.Message, "Downgrade") {
		t.Fatalf("schema 2 -> 1 with no Migrate in the schema 2 version: %+v, want halted naming the missing Migrate", st)
	}
	for _, c := range []struct {
		s    StateInfo
		want bool
	}{
		{StateInfo{Schema: 2, FromSchema: 2}, true},
		{StateInfo{Schema: 3, Downgrades: []int{2, 1}, FromSchema: 1}, true},
		{StateInfo{Schema: 3, Downgrades: []int{2}, FromSchema: 1}, false},
		{StateInfo{Schema: 3, FromSchema: 1, FromMigrates: true}, false}, // a Migrate that reads newer state: unknowable
		{StateInfo{Schema: 1, FromSchema: 3, FromMigrates: true}, true},
		{StateInfo{Schema: 1, Downgrades: []int{0}, FromSchema: 3}, false},
	} {
		if got := c.s.WayBack(); got != c.want {
			t.Errorf("%+v.WayBack() = %v, want %v", c.s, got, c.want)
		}
	}
}

// An operator steps through the waves: pause at the end of the wave under way, resume one wave
// at a time, then resume the rest.
func TestPauseAndResumeWaveByWave(t *testing.T) {
	var members []Member
	for i, zone := range []string{"1", "1", "2", "2", "3", "3"} {
		members = append(members, Member{Name: fmt.Sprintf("n%d", i+1), Labels: map[string]string{"zone": zone}})
	}
	r := New(2, "v2", 1, "v1", members, false, true, Policy{WaveBy: "zone", MaxParallel: 1}, t0)
	for _, n := range r.Order {
		r.ReportBuilt(n, BuildInfo{Sum: "s"}, nil, t0)
	}
	now := t0
	// step runs the rollout until Next waits with no turn under way, ending each turn it grants.
	step := func() {
		t.Helper()
		for range 100 {
			now = now.Add(time.Second)
			st := r.Next(now, inContact)
			if st.Op == "" {
				return
			}
			if err := r.Apply(st, now); err != nil {
				t.Fatal(err)
			}
			if st.Op == OpGrant && st.Phase == Granted {
				r.Report(st.Node, Swapping, "", now)
				r.Report(st.Node, Running, "", now)
			}
		}
		t.Fatal("the rollout never waited")
	}
	ran := func() string {
		var out []string
		for _, n := range r.Order {
			if r.Nodes[n].Phase == Running {
				out = append(out, n)
			}
		}
		return strings.Join(out, " ")
	}
	// The first node of wave 1 in its turn: the pause waits for its wave to end.
	st := r.Next(now, inContact)
	r.Apply(st, now)
	r.Report("n1", Swapping, "", now)
	if err := r.SetWaveState(Paused, now); err != nil {
		t.Fatal(err)
	}
	if r.State != Rolling {
		t.Fatalf("paused at once: %s", r.State)
	}
	r.Report("n1", Running, "", now)
	step()
	if r.State != Paused || ran() != "n1 n2" || !strings.Contains(r.Reason, "wave 1 ended: paused as asked") {
		t.Fatalf("after pause --after-wave: %s (%s), running %q; want paused after wave 1", r.State, r.Reason, ran())
	}
	if err := r.SetWaveState(Rolling, now); err != nil {
		t.Fatal(err)
	}
	step()
	if r.State != Paused || ran() != "n1 n2 n3 n4" {
		t.Fatalf("after resume --one-wave: %s, running %q; want paused after wave 2", r.State, ran())
	}
	if err := r.SetState(Rolling, "resume by hand", now); err != nil {
		t.Fatal(err)
	}
	step()
	if r.State != Done || r.PauseAfter != 0 {
		t.Fatalf("after a plain resume: %s, pause after %d; want done", r.State, r.PauseAfter)
	}
	if err := r.SetWaveState(Paused, now); err == nil {
		t.Fatal("a finished rollout took a pause at a wave's end")
	}
}

// canaryInItsTurn is a rollout over a, b, c whose canary a is swapping, promoted by itself a
// minute after the canary wave.
func canaryInItsTurn() *Rollout {
	r := New(2, "v2", 1, "v1", Members("a", "b", "c"), false, true, Policy{Canaries: 1, AutoPromoteAfter: time.Minute}, t0)
	for _, n := range r.Order {
		r.ReportBuilt(n, BuildInfo{Sum: "s"}, nil, t0)
	}
	r.Apply(r.Next(t0, inContact), t0)
	r.Report("a", Swapping, "", t0)
	return r
}

// A pause asked for at a wave's end is not lifted by the canaries' automatic promotion.
func TestAPauseByHandHoldsAgainstAutoPromotion(t *testing.T) {
	r := canaryInItsTurn()
	if err := r.SetWaveState(Paused, t0); err != nil {
		t.Fatal(err)
	}
	r.Report("a", Running, "", t0)
	if st := r.Next(t0, inContact); st.State != Paused {
		t.Fatalf("after the canary: %+v, want paused", st)
	} else {
		r.Apply(st, t0)
	}
	if st := r.Next(t0.Add(time.Hour), inContact); st.Op != "" {
		t.Fatalf("an hour on: %+v, want it to wait for the operator", st)
	}
}

// A pause made by hand while the canary is in its turn is the operator's: the canary ending
// its turn well does not lift it (it was promoted with the rest after the wait).
func TestAHandPauseDuringTheCanaryTurnIsNotPromoted(t *testing.T) {
	r := canaryInItsTurn()
	if err := r.SetState(Paused, "pause by hand", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	r.Report("a", Running, "", t0.Add(2*time.Second))
	if r.AutoPromoting() {
		t.Fatal("a pause by hand counts as the canaries' pause")
	}
	if st := r.Next(t0.Add(time.Hour), inContact); st.Op != "" {
		t.Fatalf("an hour on: %+v, want it to wait for the operator", st)
	}
	// The canaries' own pause promotes.
	r2 := canaryInItsTurn()
	r2.Report("a", Running, "", t0.Add(2*time.Second))
	r2.Apply(r2.Next(t0.Add(2*time.Second), inContact), t0.Add(2*time.Second))
	if !r2.AutoPromoting() {
		t.Fatalf("the canaries' pause (%s, %s) does not count as one", r2.State, r2.Reason)
	}
}

// A node that could not go back (its turn back reported with the reason) stops the going back
// there, halted, naming the nodes still on the target: it ended "went back" with every node's
// failure in a note, the CLI said every node was back, and the log refused the previous source
// as the version the cluster ran (found by trying it from outside).
func TestAFailedTurnBackHaltsWithTheNodesLeftOnTheTarget(t *testing.T) {
	r := three()
	drive(t, r, func(string) Phase { return Running })
	if err := r.SetState(GoingBack, "undo by hand", t0); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Minute)
	st := r.Next(now, inContact)
	if st.Op != OpGrant || st.Node != "c" || st.Phase != Reverting {
		t.Fatalf("first step back: %+v, want c reverting", st)
	}
	if err := r.Grant(st.Node, st.Phase, now); err != nil {
		t.Fatal(err)
	}
	if err := r.Report("c", Reverted, "could not go back: no Migrate reads schema 3", now); err != nil {
		t.Fatal(err)
	}
	st = r.Next(now, inContact)
	if st.Op != OpState || st.State != Halted || !strings.Contains(st.Message, "going back failed on c (could not go back: no Migrate reads schema 3); version 2 still runs on a, b, c") {
		t.Fatalf("after c could not go back: %+v, want halted naming c and the nodes on version 2", st)
	}
	if err := r.SetState(st.State, st.Message, now); err != nil {
		t.Fatal(err)
	}
	// Every node is on the target: the cluster runs it (the next version goes back to it).
	if !r.HaltedOnTarget() || r.Mixed() || r.Next(now, inContact).Op != "" {
		t.Fatalf("halted rollout: on target %v, mixed %v, next %+v", r.HaltedOnTarget(), r.Mixed(), r.Next(now, inContact))
	}
	// An undo tried again halts at once, and the reason does not grow.
	reason := r.Reason
	if err := r.SetState(GoingBack, "undo by hand", now); err != nil {
		t.Fatal(err)
	}
	st = r.Next(now, inContact)
	if st.Op != OpState || st.State != Halted || st.Message != reason {
		t.Fatalf("an undo tried again: %+v, want halted with the same reason %q", st, reason)
	}
	if err := r.SetState(st.State, st.Message, now); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if got := r.Desired(n); got != "v2" {
			t.Errorf("%s should stay on the version it runs, v2; catching up to %s would fail again", n, got)
		}
	}
	// A plain revert that worked is no mixture.
	ok := three()
	drive(t, ok, func(string) Phase { return Running })
	ok.SetState(GoingBack, "undo by hand", t0)
	drive(t, ok, func(string) Phase { return Running })
	if ok.State != WentBack || ok.Mixed() {
		t.Fatalf("a revert that worked: %s, mixed %v", ok.State, ok.Mixed())
	}
}

// A pause by hand that comes during the last turn ends with the rollout once that turn ends:
// it stayed paused with every node done, and the next deploy was refused as "still rolling out
// (paused)" until someone resumed it (found by an outside probe, 6 runs of 6).
func TestAPauseDuringTheLastTurnEndsWithIt(t *testing.T) {
	r := three()
	for _, n := range r.Order {
		r.ReportBuilt(n, BuildInfo{Sum: "s"}, nil, t0)
	}
	for _, n := range []string{"a", "b", "c"} {
		st := r.Next(t0, inContact)
		if st.Op != OpGrant || st.Node != n {
			t.Fatalf("want %s granted, got %+v", n, st)
		}
		r.Apply(st, t0)
		r.Report(n, Swapping, "", t0)
		if n == "c" {
			if err := r.SetState(Paused, "pause by hand", t0); err != nil {
				t.Fatal(err)
			}
			if st := r.Next(t0, inContact); st.Op != "" {
				t.Fatalf("paused with c in its turn: %+v, want a wait", st)
			}
		}
		r.Report(n, Running, "", t0)
	}
	if st := r.Next(t0, inContact); st.Op != OpState || st.State != Done {
		t.Fatalf("paused, every node done: %+v, want the rollout done", st)
	}
	// A pause that still holds a node back stays.
	r2 := three()
	for _, n := range r2.Order {
		r2.ReportBuilt(n, BuildInfo{Sum: "s"}, nil, t0)
	}
	r2.Apply(r2.Next(t0, inContact), t0)
	r2.SetState(Paused, "pause by hand", t0)
	r2.Report("a", Running, "", t0)
	if st := r2.Next(t0, inContact); st.Op != "" {
		t.Fatalf("paused with b and c to go: %+v, want a wait", st)
	}
}

// A node the leader's configuration no longer has (it left, or was forgotten) is skipped as
// such, not as down and catching up "when it returns" (found by an outside probe).
func TestANodeThatLeftIsSkippedAsNoLongerAMember(t *testing.T) {
	r := three()
	for _, n := range r.Order {
		r.ReportBuilt(n, BuildInfo{Sum: "s"}, nil, t0)
	}
	left := func(name string) time.Duration {
		if name == "a" {
			return NotAMember
		}
		return 0
	}
	st := r.Next(t0, left)
	if st.Op != OpReport || st.Node != "a" || st.Phase != Skipped || !strings.HasPrefix(st.Message, LeftMessage) {
		t.Fatalf("a left before its turn: %+v, want it skipped as no longer a member", st)
	}
	if st := r.Next(t0, silentFor("a", time.Hour)); strings.HasPrefix(st.Message, LeftMessage) {
		t.Fatalf("a down for an hour: %+v, want it skipped as down", st)
	}
}
