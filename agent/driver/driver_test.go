package driver

import (
	"errors"
	"testing"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

// fakeLog records the entries the driver commits.
type fakeLog struct {
	leads   bool
	r       *rollout.Rollout
	silent  map[string]time.Duration
	err     error
	entries [][]rollout.Step
}

func (l *fakeLog) IsLeader() bool            { return l.leads }
func (l *fakeLog) Rollout() *rollout.Rollout { return l.r }
func (l *fakeLog) Silence() rollout.Silence {
	return func(node string) time.Duration { return l.silent[node] }
}
func (l *fakeLog) Changed() <-chan struct{} { return nil }
func (l *fakeLog) CommitSteps(r *rollout.Rollout, steps []rollout.Step, now time.Time) error {
	if l.err != nil {
		return l.err
	}
	l.entries = append(l.entries, steps)
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
