package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
)

// fakeLog records the entries the driver commits.
type fakeLog struct {
	mu      sync.Mutex
	leads   bool
	r       *rollout.Rollout
	silent  map[string]time.Duration
	err     error
	entries [][]rollout.Step
	changed chan struct{}          // closed at the next change; nil: never
	during  func(*fakeLog)         // runs inside CommitSteps, as the log applies other entries
	check   func(*rollout.Rollout) // runs on the state after every entry, under mu
	before  func(*fakeLog)         // runs inside CommitSteps before the entry applies: it is on its way
	refuse  int                    // when > 0, every refuse-th entry is refused (as a lost leadership)
	commits int
}

// report applies a node's report alone, as the leader's log does when no round takes it.
func (l *fakeLog) report(node string, phase rollout.Phase) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := l.r.Clone()
	if err := next.Report(node, phase, "", time.Now()); err != nil {
		return err
	}
	l.r = next
	if l.check != nil {
		l.check(next)
	}
	return nil
}

func (l *fakeLog) IsLeader() bool { return l.leads }
func (l *fakeLog) Index() uint64  { return 7 }
func (l *fakeLog) Rollout() *rollout.Rollout {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r
}
func (l *fakeLog) Silence() rollout.Silence {
	return func(node string) time.Duration { return l.silent[node] }
}
func (l *fakeLog) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// change replaces the rollout and wakes whoever waits for a change.
func (l *fakeLog) change(r *rollout.Rollout) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.r = r
	if l.changed != nil {
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

func (l *fakeLog) CommitSteps(r *rollout.Rollout, steps []rollout.Step, now time.Time) error {
	if l.err != nil {
		return l.err
	}
	l.mu.Lock()
	l.commits++
	refused := l.refuse > 0 && l.commits%l.refuse == 0
	l.mu.Unlock()
	if refused {
		return errors.New("refused, as a lost leadership")
	}
	if before := l.before; before != nil {
		l.before = nil
		before(l)
	}
	l.mu.Lock()
	l.entries = append(l.entries, steps)
	// Applied as the leader's state applies the entry.
	next := l.r.Clone()
	for _, st := range steps {
		if err := next.Apply(st, now); err != nil {
			l.mu.Unlock()
			return err
		}
	}
	l.r = next
	if l.check != nil {
		l.check(next)
	}
	during := l.during
	l.mu.Unlock()
	if during != nil {
		during(l)
	}
	return nil
}

// built is a rollout over names where every node has built the target, in one wave of all.
func built(t testing.TB, names ...string) *rollout.Rollout {
	t.Helper()
	now := time.Now()
	r := rollout.New(2, "new", 1, "old", rollout.Members(names...), false, true, rollout.Policy{MaxParallelPercent: 100}, now)
	for _, n := range names {
		if err := r.ReportBuilt(n, rollout.BuildInfo{Sum: "sum"}, nil, now); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func TestRoundCommitsItsStepsAsOneEntry(t *testing.T) {
	l := &fakeLog{leads: true, r: built(t, "a", "b", "c", "d")}
	steps := (&Driver{Log: l}).Round(time.Now())
	if len(l.entries) != 1 {
		t.Fatalf("committed %d entries, want one", len(l.entries))
	}
	if len(steps) != 4 || len(l.entries[0]) != 4 {
		t.Fatalf("committed %v, want the four grants of the wave", l.entries[0])
	}
	for _, st := range l.entries[0] {
		if st.Op != rollout.OpGrant {
			t.Fatalf("step %+v, want a grant", st)
		}
	}
}

func TestNothingCommittedWhenNotLeader(t *testing.T) {
	l := &fakeLog{leads: false, r: built(t, "a", "b")}
	if steps := (&Driver{Log: l}).Round(time.Now()); steps != nil || len(l.entries) != 0 {
		t.Fatalf("a follower committed %v", l.entries)
	}
}

func TestNothingCommittedWithoutAnActiveRollout(t *testing.T) {
	l := &fakeLog{leads: true}
	if (&Driver{Log: l}).Round(time.Now()); len(l.entries) != 0 {
		t.Fatalf("committed %v with nothing deployed", l.entries)
	}
	r := built(t, "a")
	if err := r.SetState(rollout.Paused, "by hand", time.Now()); err != nil {
		t.Fatal(err)
	}
	l.r = r
	if (&Driver{Log: l}).Round(time.Now()); len(l.entries) != 0 {
		t.Fatalf("committed %v while paused", l.entries)
	}
}

func TestSilentMemberIsSkipped(t *testing.T) {
	r := built(t, "a", "b")
	p := r.Policy.WithDefaults()
	l := &fakeLog{leads: true, r: r, silent: map[string]time.Duration{"b": p.DownAfter + time.Second}}
	(&Driver{Log: l}).Round(time.Now())
	if len(l.entries) != 1 {
		t.Fatalf("committed %d entries, want one", len(l.entries))
	}
	var skipped bool
	for _, st := range l.entries[0] {
		if st.Node == "b" && st.Phase == rollout.Skipped {
			skipped = true
		}
		if st.Node == "b" && st.Op == rollout.OpGrant {
			t.Fatalf("granted a turn to b, which the leader has not heard for %s", l.silent["b"])
		}
	}
	if !skipped {
		t.Fatalf("steps %v do not skip b", l.entries[0])
	}
}

func TestRefusedEntryReturnsNoSteps(t *testing.T) {
	l := &fakeLog{leads: true, r: built(t, "a"), err: errors.New("leadership lost")}
	if steps := (&Driver{Log: l}).Round(time.Now()); steps != nil {
		t.Fatalf("reported %v as taken though the log did not take them", steps)
	}
}

// A report the log applies while the driver waits for its own entry is acted on at once, not
// at the next tick: the tick here is an hour, so a missed change would never be seen.
func TestAChangeDuringACommitWakesTheNextRound(t *testing.T) {
	l := &fakeLog{leads: true, r: built(t, "a", "b"), changed: make(chan struct{})}
	second := built(t, "a", "b", "c")
	l.during = func(l *fakeLog) {
		l.during = nil
		// The grants of a and b are committed; meanwhile a report arrives that asks for more.
		l.change(second)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&Driver{Log: l, Tick: time.Hour}).Run(ctx) // its first round runs at once
	deadline := time.Now().Add(30 * time.Second)
	for {
		l.mu.Lock()
		n := len(l.entries)
		l.mu.Unlock()
		if n >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rounds committed: the change applied during the first round's commit woke nothing", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Each node granted a turn is told of it once the grant is committed, with the rollout as the
// leader has it then; nodes given no turn are not.
func TestGrantedNodesAreToldOnceCommitted(t *testing.T) {
	r := built(t, "a", "b", "c")
	r.Policy.MaxParallelPercent = 0
	r.Policy.MaxParallel = 2
	l := &fakeLog{leads: true, r: r}
	told := map[string]api.Grant{}
	d := &Driver{Log: l, Tell: func(node string, index uint64, body []byte) {
		if len(l.entries) != 1 {
			t.Errorf("%s told before its grant was committed", node)
		}
		var g api.Grant
		if err := json.Unmarshal(body, &g); err != nil {
			t.Fatalf("telling %s: %v", node, err)
		}
		if g.Index != index || g.Rollout == nil {
			t.Errorf("%s told index %d, rollout %v; want index %d and the rollout", node, g.Index, g.Rollout, index)
		}
		told[node] = g
	}}
	d.Round(time.Now())
	if len(told) != 2 || told["a"].Index != 7 || told["b"].Index != 7 {
		t.Fatalf("told %v, want a and b at index 7", told)
	}
	if ph := told["b"].Rollout.Nodes["b"].Phase; ph != rollout.Granted {
		t.Fatalf("b told of a rollout where it is %s, want granted", ph)
	}
	l.err = errors.New("not committed")
	clear(told)
	d.Round(time.Now())
	if len(told) != 0 {
		t.Fatalf("told %v of grants the log did not take", told)
	}
}

// pausedAfterCanary is a rollout over a, b, c whose canary a ended its turn at now and that
// waits a minute before promoting itself.
func pausedAfterCanary(t *testing.T, now time.Time) *rollout.Rollout {
	t.Helper()
	r := rollout.New(2, "new", 1, "old", rollout.Members("a", "b", "c"), false, true, rollout.Policy{Canaries: 1, AutoPromoteAfter: time.Minute}, now)
	for _, n := range r.Order {
		if err := r.ReportBuilt(n, rollout.BuildInfo{Sum: "sum"}, nil, now); err != nil {
			t.Fatal(err)
		}
	}
	st := r.Next(now, nil)
	if st.Op != rollout.OpGrant || st.Node != "a" {
		t.Fatalf("first step %+v, want a's turn", st)
	}
	for _, err := range []error{r.Apply(st, now), r.Report("a", rollout.Swapping, "", now), r.Report("a", rollout.Running, "", now)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := r.Next(now, nil); st.Op != rollout.OpState || st.State != rollout.Paused {
		t.Fatalf("after the canary: %+v, want paused", st)
	} else if err := r.Apply(st, now); err != nil {
		t.Fatal(err)
	}
	return r
}

// The log says only that a canary's turn ended well; a duck that crashed after its healthy wait
// was promoted with the rest. The driver asks the canaries first.
func TestAutomaticPromotionAsksTheCanariesFirst(t *testing.T) {
	t0 := time.Now()
	later := t0.Add(time.Minute)
	for _, c := range []struct {
		name      string
		why       string
		err       error
		wantState rollout.State // "": nothing committed
	}{
		{"healthy", "", nil, rollout.Rolling},
		{"a duck crashed", "duck-1 crashed and was restarted", nil, rollout.GoingBack},
		{"cannot tell", "", errors.New("connection refused"), ""},
	} {
		l := &fakeLog{leads: true, r: pausedAfterCanary(t, t0)}
		var asked []string
		var ranFor time.Duration
		d := &Driver{Log: l, CanaryHealth: func(node string, runningFor time.Duration) (string, error) {
			asked, ranFor = append(asked, node), runningFor
			return c.why, c.err
		}}
		if steps := d.Round(t0.Add(30 * time.Second)); len(steps) != 0 || len(asked) != 0 {
			t.Fatalf("%s: before the minute: steps %v, asked %v", c.name, steps, asked)
		}
		d.Round(later)
		if len(asked) != 1 || asked[0] != "a" || ranFor != time.Minute {
			t.Fatalf("%s: asked %v for %v, want the canary a for a minute", c.name, asked, ranFor)
		}
		got := l.Rollout()
		if c.wantState == "" {
			if len(l.entries) != 0 || got.State != rollout.Paused {
				t.Fatalf("%s: committed %v, state %s; want nothing while it cannot tell", c.name, l.entries, got.State)
			}
			continue
		}
		if got.State != c.wantState {
			t.Fatalf("%s: %s (%s), want %s", c.name, got.State, got.Reason, c.wantState)
		}
		if c.why != "" && !strings.Contains(got.Reason, "canary a is not healthy, not promoted: "+c.why) {
			t.Fatalf("%s: reason %q does not say why", c.name, got.Reason)
		}
	}
}

// A verdict about a rollout the operator moved while the canaries were asked (undo) is not
// committed: Halted would have stopped the way back partway.
func TestAPromotionVerdictAboutAMovedRolloutIsDropped(t *testing.T) {
	t0 := time.Now()
	l := &fakeLog{leads: true, r: pausedAfterCanary(t, t0)}
	d := &Driver{Log: l, CanaryHealth: func(string, time.Duration) (string, error) {
		moved := l.Rollout().Clone()
		if err := moved.SetState(rollout.GoingBack, "undo by hand", t0); err != nil {
			t.Fatal(err)
		}
		l.change(moved)
		return "duck-1 crashed", nil
	}}
	d.Round(t0.Add(time.Minute))
	if len(l.entries) != 0 {
		t.Fatalf("committed %v after the rollout went back under the check", l.entries)
	}
}

// running starts d's loop with a short tick and returns its stop.
func running(d *Driver) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx)
	}()
	for {
		d.mu.Lock()
		runs := d.runs
		d.mu.Unlock()
		if runs {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return func() { cancel(); <-done }
}

// oneAtATime is a rollout over names, one node at a time, with a's turn under way.
func oneAtATime(t *testing.T, now time.Time, names ...string) *rollout.Rollout {
	t.Helper()
	r := built(t, names...)
	r.Policy.MaxParallelPercent = 0
	r.Policy.MaxParallel = 1
	for _, err := range []error{r.Grant("a", rollout.Granted, now), r.Report("a", rollout.Swapping, "", now)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// A node's report that its turn ended goes into the log in the round's entry, with the grant it
// frees, and the granted node is told.
func TestAnEndedTurnIsCommittedWithTheGrantItFrees(t *testing.T) {
	l := &fakeLog{leads: true, r: oneAtATime(t, time.Now(), "a", "b", "c")}
	var mu sync.Mutex
	var told []string
	d := &Driver{Log: l, Tick: time.Hour, Tell: func(node string, _ uint64, _ []byte) {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, node)
	}}
	defer running(d)()
	if !d.EndTurn(l.Rollout().Version, "a", rollout.Running, "") {
		t.Fatalf("EndTurn committed nothing; entries %v", l.entries)
	}
	l.mu.Lock()
	entries := l.entries
	l.mu.Unlock()
	if len(entries) != 1 || len(entries[0]) != 2 {
		t.Fatalf("committed %v, want one entry: a's report and b's grant", entries)
	}
	if rep, grant := entries[0][0], entries[0][1]; rep.Op != rollout.OpReport || rep.Node != "a" || rep.Phase != rollout.Running || grant.Op != rollout.OpGrant || grant.Node != "b" {
		t.Fatalf("committed %v, want a's running report, then b's grant", entries[0])
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != 1 || told[0] != "b" {
		t.Fatalf("told %v, want b", told)
	}
}

// Where no round can take the report, or the log refuses the entry, EndTurn says so and the
// report goes in alone: a report is never lost to its grants.
func TestAnEndedTurnNotTakenIsLeftToTheReportAlone(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		name  string
		log   *fakeLog
		run   bool
		node  string
		phase rollout.Phase
	}{
		{"no loop running", &fakeLog{leads: true, r: oneAtATime(t, now, "a", "b")}, false, "a", rollout.Running},
		{"not the leader", &fakeLog{r: oneAtATime(t, now, "a", "b")}, true, "a", rollout.Running},
		{"a turn that has not ended", &fakeLog{leads: true, r: oneAtATime(t, now, "a", "b")}, true, "a", rollout.Swapping},
		{"a report the rollout refuses", &fakeLog{leads: true, r: oneAtATime(t, now, "a", "b")}, true, "b", rollout.Running},
		{"an entry the log refuses", &fakeLog{leads: true, r: oneAtATime(t, now, "a", "b"), err: errors.New("leadership lost")}, true, "a", rollout.Running},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := &Driver{Log: c.log, Tick: time.Hour}
			if c.run {
				defer running(d)()
			}
			if d.EndTurn(c.log.Rollout().Version, c.node, c.phase, "") {
				t.Fatalf("EndTurn says it committed %v", c.log.entries)
			}
			if c.log.Rollout().Nodes[c.node].Phase == rollout.Running && c.phase == rollout.Running && c.name != "a report the rollout refuses" {
				t.Fatalf("%s is running: the report went in", c.node)
			}
		})
	}
}

// Many turns ending at once, beside the rounds, never grant a node before one earlier in the
// order, nor more at once than the policy lets: every entry is checked. (Reports committed by
// their own handlers, each with the grants it freed, did both.)
func TestTurnsEndingAtOnceKeepTheOrderAndTheSlots(t *testing.T) {
	var names []string
	for i := range 24 {
		names = append(names, fmt.Sprintf("n%02d", i))
	}
	r := built(t, names...)
	r.Policy.MaxParallelPercent = 0
	r.Policy.MaxParallel = 3
	// Every third entry is refused: its reports go in alone, beside the rounds.
	l := &fakeLog{leads: true, r: r, refuse: 3}
	var bad []string
	l.check = func(r *rollout.Rollout) {
		inTurn, waiting := 0, false
		for _, name := range r.Order {
			switch r.Nodes[name].Phase {
			case rollout.Granted, rollout.Swapping:
				inTurn++
				if waiting {
					bad = append(bad, name+" granted before a node earlier in the order")
				}
			case rollout.Running:
				if waiting {
					bad = append(bad, name+" ran before a node earlier in the order")
				}
			case rollout.Built:
				waiting = true
			}
		}
		if inTurn > 3 {
			bad = append(bad, fmt.Sprintf("%d nodes in their turn, at most 3", inTurn))
		}
	}
	d := &Driver{Log: l, Tick: time.Millisecond}
	defer running(d)()
	// Each node, once granted, reports its swap alone and then the end of its turn.
	var wg sync.WaitGroup
	var withRound atomic.Int32
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(30 * time.Second)
			for l.Rollout().Nodes[name].Phase != rollout.Granted {
				if time.Now().After(deadline) {
					t.Errorf("%s was never granted", name)
					return
				}
				time.Sleep(time.Millisecond)
			}
			n := l.Rollout().Version
			if err := l.report(name, rollout.Swapping); err != nil {
				t.Errorf("%s swapping: %v", name, err)
				return
			}
			if d.EndTurn(n, name, rollout.Running, "") {
				withRound.Add(1)
			} else {
				if err := l.report(name, rollout.Running); err != nil {
					t.Errorf("%s running: %v", name, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d reports went in with a round's steps, the rest alone", withRound.Load(), len(names))
	if n := withRound.Load(); n == 0 || n == int32(len(names)) {
		t.Fatalf("%d of %d reports went in with a round's steps: both ways must be taken", n, len(names))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d entries broke the order or the slots, first: %s", len(bad), bad[0])
	}
	for _, name := range names {
		if ph := l.r.Nodes[name].Phase; ph != rollout.Running {
			t.Fatalf("%s ended %s, want running", name, ph)
		}
	}
}

// The report that ends a wave goes in with no grant of the next wave: the operator's pause at
// the end of the wave, committed while the round's entry was on its way, saw the wave still
// under way, and the entry had granted the next wave already (found by a review).
func TestAReportThatEndsAWaveGrantsNoneOfTheNext(t *testing.T) {
	now := time.Now()
	members := []rollout.Member{{Name: "a", Labels: map[string]string{"zone": "1"}}, {Name: "b", Labels: map[string]string{"zone": "2"}}, {Name: "c", Labels: map[string]string{"zone": "2"}}}
	r := rollout.New(2, "new", 1, "old", members, false, true, rollout.Policy{WaveBy: "zone", MaxParallel: 1}, now)
	for _, n := range []string{"a", "b", "c"} {
		if err := r.ReportBuilt(n, rollout.BuildInfo{Sum: "sum"}, nil, now); err != nil {
			t.Fatal(err)
		}
	}
	for _, err := range []error{r.Grant("a", rollout.Granted, now), r.Report("a", rollout.Swapping, "", now)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if r.Nodes["a"].Wave == r.Nodes["b"].Wave {
		t.Fatalf("a and b in one wave (%d): the test needs two", r.Nodes["a"].Wave)
	}
	l := &fakeLog{leads: true, r: r}
	// The operator's pause lands just before the round's entry.
	l.before = func(l *fakeLog) {
		l.mu.Lock()
		defer l.mu.Unlock()
		next := l.r.Clone()
		if err := next.SetWaveState(rollout.Paused, now); err != nil {
			t.Errorf("pausing after the wave: %v", err)
		}
		l.r = next
	}
	d := &Driver{Log: l, Tick: time.Hour}
	defer running(d)()
	if !d.EndTurn(r.Version, "a", rollout.Running, "") {
		t.Fatalf("a's report was not taken; entries %v", l.entries)
	}
	got := l.Rollout()
	if ph := got.Nodes["b"].Phase; ph == rollout.Granted {
		t.Fatalf("b, of the next wave, was granted with a's report although the rollout was to pause after a's wave; entries %v", l.entries)
	}
	if got.Nodes["a"].Phase != rollout.Running {
		t.Fatalf("a is %s, want running", got.Nodes["a"].Phase)
	}
}
