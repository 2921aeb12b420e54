package follower

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/internal/waitfor"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// fakeLog is a log of one node that leads, unless told otherwise; its leader (fakeLeader)
// applies reports to it as the FSM would.
type fakeLog struct {
	mu      sync.Mutex
	r       *rollout.Rollout
	changed chan struct{}
	leads   bool
	index   uint64
}

func (l *fakeLog) Rollout() *rollout.Rollout {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Clone()
}

func (l *fakeLog) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

func (l *fakeLog) IsLeader() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leads
}

func (l *fakeLog) Index() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.index
}

// change applies fn to the rollout and wakes the follower, as an applied entry does.
func (l *fakeLog) change(fn func(r *rollout.Rollout) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := fn(l.r); err != nil {
		return err
	}
	l.index++
	close(l.changed)
	l.changed = make(chan struct{})
	return nil
}

// fakeLeader commits reports to a fakeLog, refusing those refuse says no to, failing the
// first fail of them as an unreachable leader would.
type fakeLeader struct {
	log *fakeLog

	mu      sync.Mutex
	reports []Report
	refuse  func(Report) bool
	fail    int
	index   uint64 // the leader's state index, for a follower that does not lead
	// asked, when set, runs while the leader is asked for its index: the log goes on meanwhile.
	asked func()
	// lag is how long after taking a report the node's log shows it (0: at once), as for a
	// follower that applies the leader's entries a moment after the leader.
	lag time.Duration
}

func (l *fakeLeader) StateIndex(context.Context) (uint64, error) {
	if l.asked != nil {
		l.asked()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.index == 0 {
		return 0, errors.New("no leader")
	}
	return l.index, nil
}

func (l *fakeLeader) Report(_ context.Context, rep Report) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail > 0 {
		l.fail--
		return errors.New("leader unreachable")
	}
	if l.refuse != nil && l.refuse(rep) {
		return &api.APIError{Status: http.StatusConflict, Message: "refused: stale rollout command"}
	}
	now := time.Now()
	apply := func() error {
		return l.log.change(func(r *rollout.Rollout) error {
			if rep.Phase == rollout.Built && rep.Build != nil {
				return r.ReportBuilt(rep.Node, *rep.Build, rep.States, now)
			}
			return r.Report(rep.Node, rep.Phase, rep.Error, now)
		})
	}
	if l.lag > 0 {
		time.AfterFunc(l.lag, func() { apply() })
		l.reports = append(l.reports, rep)
		return nil
	}
	if err := apply(); err != nil {
		return &api.APIError{Status: http.StatusConflict, Message: err.Error()}
	}
	l.reports = append(l.reports, rep)
	return nil
}

func (l *fakeLeader) phases() []rollout.Phase {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []rollout.Phase
	for _, r := range l.reports {
		out = append(out, r.Phase)
	}
	return out
}

func (l *fakeLeader) last() Report {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reports[len(l.reports)-1]
}

type fakeBuilder struct {
	err    error
	mu     sync.Mutex
	builds []bundle.ID
}

func (b *fakeBuilder) Build(_ context.Context, id bundle.ID) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.builds = append(b.builds, id)
	return b.err
}

func (b *fakeBuilder) BuildInfo(context.Context, bundle.ID) (rollout.BuildInfo, error) {
	return rollout.BuildInfo{Sum: "sum", Toolchain: "go1.26"}, nil
}

func (b *fakeBuilder) StateInfo(context.Context, *rollout.Rollout) *rollout.StateInfo { return nil }

type fakeDucks struct {
	err error

	mu       sync.Mutex
	local    rollout.Local
	switches []bundle.ID
}

func (d *fakeDucks) Local() rollout.Local {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.local
}

func (d *fakeDucks) SetActed(key string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.local.Acted = key
	return nil
}

func (d *fakeDucks) SetSynced(key string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.local.Synced = key
	return nil
}

func (d *fakeDucks) SwitchTo(_ context.Context, id bundle.ID, _ time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.switches = append(d.switches, id)
	if d.err != nil {
		return d.err
	}
	d.local.Have = id
	return nil
}

func (d *fakeDucks) switched() []bundle.ID {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]bundle.ID(nil), d.switches...)
}

type rig struct {
	f       *Follower
	log     *fakeLog
	leader  *fakeLeader
	builder *fakeBuilder
	ducks   *fakeDucks
}

// start runs a follower for node "a" over r until the test ends.
func start(t testing.TB, r *rollout.Rollout, setup func(*rig)) *rig {
	t.Helper()
	g := &rig{log: &fakeLog{r: r, changed: make(chan struct{}), leads: true}, builder: &fakeBuilder{}, ducks: &fakeDucks{local: rollout.Local{Have: "old"}}}
	g.leader = &fakeLeader{log: g.log}
	if setup != nil {
		setup(g)
	}
	f := New(Config{Name: "a", Log: g.log, Leader: g.leader, Builder: g.builder, Ducks: g.ducks})
	g.f = f
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return g
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitfor.Until(t, what, 5*time.Second, cond)
}

// granted is rollout 2 from "old" to "new" over a and b, with a built and granted its turn.
func granted(t testing.TB) *rollout.Rollout {
	return grantedAt(t, time.Now())
}

// grantedAt is granted, with the leader's stamps at now.
func grantedAt(t testing.TB, now time.Time) *rollout.Rollout {
	t.Helper()
	r := rollout.New(2, "new", 1, "old", rollout.Members("a", "b"), false, true, rollout.Policy{}, now)
	for _, step := range []error{
		r.ReportBuilt("a", rollout.BuildInfo{Sum: "sum"}, nil, now),
		r.ReportBuilt("b", rollout.BuildInfo{Sum: "sum"}, nil, now),
		r.Grant("a", rollout.Granted, now),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	return r
}

func equal(a, b []rollout.Phase) bool {
	return strings.Join(phaseStrings(a), ",") == strings.Join(phaseStrings(b), ",")
}

func phaseStrings(ps []rollout.Phase) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}

// turnReported reports whether the leader took a turn's end, phase, after its start or alone: the
// start is said beside the swap, so the end may overtake it (and the log then refuses the start).
func turnReported(ps []rollout.Phase, end rollout.Phase) bool {
	return equal(ps, []rollout.Phase{rollout.Swapping, end}) || equal(ps, []rollout.Phase{end})
}

func TestGrantedTurnSwapsThenReportsRunning(t *testing.T) {
	g := start(t, granted(t), nil)
	waitFor(t, "swapping then running", func() bool { return turnReported(g.leader.phases(), rollout.Running) })
	want := g.leader.phases()
	if sw := g.ducks.switched(); len(sw) != 1 || sw[0] != "new" {
		t.Fatalf("switched to %v, want [new] once", sw)
	}
	if g.ducks.Local().Acted == "" {
		t.Fatal("the turn taken is not remembered: a restart would take it again")
	}
	// The turn is over: more looks at the log take it no second time.
	time.Sleep(300 * time.Millisecond)
	if ps := g.leader.phases(); !equal(ps, want) {
		t.Fatalf("reports %v after the turn, want only %v", ps, want)
	}
}

// A turn whose end the log took is not reported again while this node has yet to apply the
// report: its log still shows the turn under way, as a follower's does for a moment.
func TestTurnTakenIsNotReportedAgainBeforeTheLogShowsIt(t *testing.T) {
	g := start(t, granted(t), func(g *rig) { g.leader.lag = 600 * time.Millisecond })
	waitFor(t, "the turn's end", func() bool { return slices.Contains(g.leader.phases(), rollout.Running) })
	time.Sleep(time.Second)
	ps := g.leader.phases()
	slices.Sort(ps)
	if !equal(ps, []rollout.Phase{rollout.Running, rollout.Swapping}) {
		t.Fatalf("reports %v, want swapping and running once each", ps)
	}
}

// A node that has not applied what the leader has takes no turn: what it sees may be history a
// restart replays (a turn it took long ago looks like one under way).
func TestNoTurnBeforeTheNodeHasTheWholeLog(t *testing.T) {
	g := start(t, grantedAt(t, time.Now().Add(-2*probeEvery)), func(g *rig) {
		g.log.leads, g.log.index = false, 3
		g.leader.index = 10
	})
	time.Sleep(400 * time.Millisecond)
	if sw, ps := g.ducks.switched(), g.leader.phases(); len(sw) != 0 || len(ps) != 0 {
		t.Fatalf("behind the leader (3 of 10), the node switched to %v and reported %v", sw, ps)
	}
	g.log.mu.Lock()
	g.log.index = 10
	g.log.mu.Unlock()
	waitFor(t, "the turn once the node has the log", func() bool { return turnReported(g.leader.phases(), rollout.Running) })
}

// A turn granted a moment ago is taken without asking the leader how far its log goes: the
// node's state holds the grant, so it holds what the leader had when it granted.
func TestFreshGrantNeedsNoAskingTheLeader(t *testing.T) {
	g := start(t, granted(t), func(g *rig) { g.log.leads = false }) // and no leader answers
	waitFor(t, "the turn", func() bool { return turnReported(g.leader.phases(), rollout.Running) })
}

// The leader's word of a grant makes the node take its turn before its own log shows the grant
// (here it never does: the leader's entries reach this node's log an hour late); a word older
// than what the node has applied is left to the node's own log.
func TestToldOfAGrantTheNodeTakesItsTurnBeforeItsLogShowsIt(t *testing.T) {
	now := time.Now()
	built := rollout.New(2, "new", 1, "old", rollout.Members("a", "b"), false, true, rollout.Policy{}, now)
	for _, err := range []error{
		built.ReportBuilt("a", rollout.BuildInfo{Sum: "sum"}, nil, now),
		built.ReportBuilt("b", rollout.BuildInfo{Sum: "sum"}, nil, now),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	g := start(t, built, func(g *rig) {
		g.log.leads, g.log.index = false, 5
		g.leader.lag = time.Hour
	})
	g.f.Granted(5, grantedAt(t, now)) // no newer than what the node has applied
	later := rollout.New(3, "newer", 2, "new", rollout.Members("a", "b"), false, true, rollout.Policy{}, now)
	if err := later.ReportBuilt("a", rollout.BuildInfo{Sum: "sum"}, nil, now); err != nil {
		t.Fatal(err)
	}
	if err := later.Grant("a", rollout.Granted, now); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	g.f.Granted(9, later) // of a rollout whose commit the node has not applied
	time.Sleep(400 * time.Millisecond)
	if sw := g.ducks.switched(); len(sw) != 0 {
		t.Fatalf("switched to %v on a word no newer than its own log, or of a rollout it has not applied", sw)
	}
	g.f.Granted(6, grantedAt(t, now))
	waitFor(t, "the turn told of", func() bool { return slices.Contains(g.leader.phases(), rollout.Running) })
	if sw := g.ducks.switched(); len(sw) != 1 || sw[0] != "new" {
		t.Fatalf("switched to %v, want [new] once", sw)
	}
}

func TestFailedSwapReportsFailed(t *testing.T) {
	g := start(t, granted(t), func(g *rig) { g.ducks.err = errors.New("duck duck-1 did not come up") })
	waitFor(t, "swapping then failed", func() bool { return turnReported(g.leader.phases(), rollout.Failed) })
	if rep := g.leader.last(); !strings.Contains(rep.Error, "duck-1 did not come up") {
		t.Fatalf("failure reported as %q; want the swap's error", rep.Error)
	}
}

// The start of a turn is said beside the swap; a turn whose end the log refuses (the rollout
// went back or gave up on the node meanwhile) goes back to what the node ran.
func TestTurnTheLogRefusesGoesBack(t *testing.T) {
	g := start(t, granted(t), func(g *rig) {
		g.leader.refuse = func(rep Report) bool { return rep.Phase == rollout.Running }
	})
	waitFor(t, "the ducks back on old", func() bool {
		sw := g.ducks.switched()
		return len(sw) == 2 && sw[0] == "new" && sw[1] == "old"
	})
	time.Sleep(300 * time.Millisecond)
	if sw, l := g.ducks.switched(), g.ducks.Local(); len(sw) != 2 || l.Have != "old" || l.Acted == "" {
		t.Fatalf("after a refused turn: switched to %v, local %+v; want new then old once, the turn remembered", sw, l)
	}
}

func TestReportRetriedUntilTheLeaderAnswers(t *testing.T) {
	g := start(t, granted(t), func(g *rig) { g.leader.fail = 2 })
	waitFor(t, "swapping then running", func() bool { return turnReported(g.leader.phases(), rollout.Running) })
}

func TestCommittedVersionIsBuiltAndReported(t *testing.T) {
	r := rollout.New(2, "new", 1, "old", rollout.Members("a", "b"), false, true, rollout.Policy{}, time.Now())
	g := start(t, r, nil)
	waitFor(t, "building then built", func() bool {
		return equal(g.leader.phases(), []rollout.Phase{rollout.Building, rollout.Built})
	})
	if rep := g.leader.last(); rep.Build == nil || rep.Build.Sum != "sum" {
		t.Fatalf("built reported with %+v; want what the build made", rep.Build)
	}
	g.builder.mu.Lock()
	defer g.builder.mu.Unlock()
	if len(g.builder.builds) != 1 || g.builder.builds[0] != "new" {
		t.Fatalf("built %v, want [new] once", g.builder.builds)
	}
}

func TestCompileErrorFailsTheBuildWithTheCompilersWords(t *testing.T) {
	r := rollout.New(2, "new", 1, "old", rollout.Members("a", "b"), false, true, rollout.Policy{}, time.Now())
	g := start(t, r, func(g *rig) {
		g.builder.err = &build.CompileError{ID: "new", Output: "./main.go:3:1: syntax error"}
	})
	waitFor(t, "building then failed", func() bool {
		return equal(g.leader.phases(), []rollout.Phase{rollout.Building, rollout.Failed})
	})
	if rep := g.leader.last(); rep.Error != "does not compile:\n./main.go:3:1: syntax error" {
		t.Fatalf("failure reported as %q", rep.Error)
	}
}

// done is rollout 2 ended with b running "new" and a skipped: a must catch up.
func done(t testing.TB) *rollout.Rollout {
	t.Helper()
	now := time.Now()
	r := rollout.New(2, "new", 1, "old", rollout.Members("a", "b"), false, true, rollout.Policy{}, now)
	for _, err := range []error{
		r.Report("a", rollout.Skipped, "down", now),
		r.ReportBuilt("b", rollout.BuildInfo{Sum: "sum"}, nil, now),
		r.Grant("b", rollout.Granted, now),
		r.Report("b", rollout.Swapping, "", now),
		r.Report("b", rollout.Running, "", now),
		r.SetState(rollout.Done, "every node", now),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestCatchUpWaitsUntilTheLogIsApplied(t *testing.T) {
	g := start(t, done(t), func(g *rig) {
		g.log.leads = false
		g.log.index = 5
		g.leader.index = 7 // the leader has applied two entries this node has not
	})
	time.Sleep(300 * time.Millisecond)
	if sw := g.ducks.switched(); len(sw) != 0 {
		t.Fatalf("caught up to %v before the log was applied", sw)
	}
	g.log.change(func(*rollout.Rollout) error { return nil })
	g.log.change(func(*rollout.Rollout) error { return nil })
	waitFor(t, "the catch-up", func() bool { return g.ducks.Local().Synced != "" })
	if sw := g.ducks.switched(); len(sw) != 1 || sw[0] != "new" {
		t.Fatalf("caught up with %v, want [new] once", sw)
	}
}

func TestNoCatchUpWithoutALeader(t *testing.T) {
	g := start(t, done(t), func(g *rig) { g.log.leads = false })
	time.Sleep(300 * time.Millisecond)
	if sw := g.ducks.switched(); len(sw) != 0 {
		t.Fatalf("caught up to %v with no leader to say how far the log goes", sw)
	}
}

// A node replaying its log after a restart asks the leader how far the log goes, and the log
// goes on applying while it asks: judged by the index at the answer, it acted on the rollout it
// had read before asking, a state from its replay, and swapped its ducks to a version the
// cluster had long left (found by trying it). It acts on what it reads after.
func TestARoundActsOnlyOnARolloutAsNewAsTheLeadersIndex(t *testing.T) {
	later := done(t)
	later.Version, later.Target, later.From, later.FromID = 3, "newer", 2, "new"
	var once sync.Once
	var g *rig
	g = start(t, done(t), func(r *rig) {
		g = r
		r.log.leads, r.log.index = false, 5
		r.leader.index = 7
		r.leader.asked = func() {
			// The replay reaches the leader's index while the node waits for its answer.
			once.Do(func() {
				g.log.mu.Lock()
				g.log.r, g.log.index = later, 7
				g.log.mu.Unlock()
			})
		}
	})
	waitFor(t, "the catch-up", func() bool { return g.ducks.Local().Synced != "" })
	if sw := g.ducks.switched(); len(sw) != 1 || sw[0] != "newer" {
		t.Fatalf("switched to %v, want [newer]: version 2's rollout was history by the time the leader answered", sw)
	}
}

// Catch-ups that keep failing come further apart: each one holds the ducks' requests while a
// new generation starts and dies (an outside probe saw one every 5 s for ever).
func TestCatchUpBackoffDoublesUpToItsBound(t *testing.T) {
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second}
	for i, w := range want {
		if got := catchUpBackoff(i + 1); got != w {
			t.Fatalf("after %d failures: %s, want %s", i+1, got, w)
		}
	}
	if got := catchUpBackoff(100); got != catchUpBackoffMax {
		t.Fatalf("after 100 failures: %s, want the bound %s", got, catchUpBackoffMax)
	}
}
