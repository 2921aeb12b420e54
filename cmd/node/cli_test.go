package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
)

func TestDuckURLIsOneAUserCanOpen(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8396": "http://127.0.0.1:8396",
		":8396":          "http://127.0.0.1:8396 (every interface)",
		"0.0.0.0:8396":   "http://127.0.0.1:8396 (every interface)",
		"[::]:8396":      "http://127.0.0.1:8396 (every interface)",
		"[::1]:8396":     "http://[::1]:8396",
		"duck.local:80":  "http://duck.local:80",
	} {
		if got := duckURL(addr); got != want {
			t.Errorf("duckURL(%q) = %q, want %q", addr, got, want)
		}
	}
}

func TestPromotionNoteOnlyWhenThePromotionIsLate(t *testing.T) {
	now := time.Now()
	r := &rollout.Rollout{State: rollout.Paused, Canary: true, PausedAt: now.Add(-10 * time.Second), Policy: rollout.Policy{AutoPromoteAfter: 3 * time.Second}}
	if note := promotionNote(r, now); !strings.Contains(note, "the promotion is 7s past due") {
		t.Fatalf("note %q", note)
	}
	for _, c := range []func(*rollout.Rollout){
		func(r *rollout.Rollout) { r.PausedAt = now.Add(-4 * time.Second) }, // due a moment ago
		func(r *rollout.Rollout) { r.Policy.AutoPromoteAfter = 0 },          // promoted by hand
		func(r *rollout.Rollout) { r.PauseAfter = 1 },                       // paused by hand
		func(r *rollout.Rollout) { r.State = rollout.Rolling },
	} {
		r2 := *r
		c(&r2)
		if note := promotionNote(&r2, now); note != "" {
			t.Errorf("%+v: note %q, want none", r2, note)
		}
	}
}

// A rollout done within its failure budget says which nodes failed, and fails the command:
// "runs on every node" hid them.
func TestOutcomeNamesTheNodesThatFailedWithinTheBudget(t *testing.T) {
	r := rollout.New(3, "v3", 2, "v2", rollout.Members("a", "b", "c"), false, true, rollout.Policy{FailureBudget: 1}, time.Now())
	for _, n := range []string{"a", "c"} {
		r.Nodes[n].Phase = rollout.Running
	}
	r.Nodes["b"].Phase = rollout.Failed
	r.State = rollout.Done
	err := outcome(r)
	if err == nil || !strings.Contains(err.Error(), "version 3 rolled out, but b failed (within the failure budget of 1) and runs version 2") {
		t.Fatalf("outcome = %v", err)
	}
	// A node skipped beside it is named too.
	r.Nodes["c"].Phase = rollout.Skipped
	if err := outcome(r); err == nil || !strings.Contains(err.Error(), "runs version 2; c was down and skipped (it catches up when it returns)") {
		t.Fatalf("outcome with a node skipped too = %v", err)
	}
}

func TestPhaseTimeOfANodeGoingBackIsNotNegative(t *testing.T) {
	now := time.Now()
	// Running from t-10s to t-8s, granted its way back at t-3s.
	nr := &rollout.Node{Phase: rollout.Reverting, Granted: now.Add(-3 * time.Second), Done: now.Add(-8 * time.Second), Since: now.Add(-3 * time.Second)}
	if got := phaseTime(nr, time.Time{}); strings.HasPrefix(got, "-") || !strings.HasPrefix(got, "3") {
		t.Fatalf("phaseTime = %s, want about 3s", got)
	}
	// Built 100 ms after the rollout halted (the build's report came late): no time in it.
	built := &rollout.Node{Phase: rollout.Built, Since: now}
	if got := phaseTime(built, now.Add(-100*time.Millisecond)); got != "-" {
		t.Fatalf("phaseTime of a phase entered after the end = %s, want -", got)
	}
}

// A rollout halted without going back (--no-revert) says what to do with the nodes it upgraded.
func TestOutcomeOfAHaltWithoutGoingBackSaysWhatNext(t *testing.T) {
	r := rollout.New(3, "v3", 2, "v2", rollout.Members("a", "b", "c"), false, false, rollout.Policy{}, time.Now())
	r.Nodes["a"].Phase, r.Nodes["a"].Granted = rollout.Running, time.Now()
	r.Nodes["b"].Phase, r.Nodes["b"].Granted = rollout.Failed, time.Now()
	r.State, r.Reason = rollout.Halted, "b failed: duck exited with status 3"
	err := outcome(r)
	if err == nil || !strings.Contains(err.Error(), "b failed: duck exited with status 3; it runs on a: `rollout undo` takes them back to version 2, or deploy a fixed version") {
		t.Fatalf("outcome = %v", err)
	}
}

// An undo that went back with a node skipped while down says so and fails: "every node is back"
// and exit 0 hid a node that may still run the version (found by an outside probe). A node
// skipped before its turn never ran it and does not count.
func TestAnUndoWithANodeSkippedOnTheWaySaysSo(t *testing.T) {
	r := rollout.New(3, "v3", 2, "v2", rollout.Members("a", "b", "c"), false, true, rollout.Policy{}, time.Now())
	r.Nodes["a"].Phase, r.Nodes["a"].Granted = rollout.Skipped, time.Now()
	r.Nodes["b"].Phase, r.Nodes["b"].Granted = rollout.Reverted, time.Now()
	r.Nodes["c"].Phase = rollout.Skipped
	r.State = rollout.WentBack
	err := wentBack(r)
	if err == nil || !strings.Contains(err.Error(), "version 3 reverted, but a was skipped while down and may still run it; it goes back to version 2 when it returns") {
		t.Fatalf("wentBack = %v", err)
	}
	r.Nodes["a"].Phase = rollout.Reverted
	if err := wentBack(r); err != nil {
		t.Fatalf("wentBack with every granted node back = %v", err)
	}
}

// A node skipped because it left the cluster is said to have left, not to catch up when it
// returns (found by an outside probe).
func TestOutcomeSaysANodeLeft(t *testing.T) {
	r := rollout.New(3, "v3", 2, "v2", rollout.Members("a", "b", "c"), false, true, rollout.Policy{}, time.Now())
	r.Nodes["a"].Phase = rollout.Running
	r.Nodes["b"].Phase, r.Nodes["b"].Error = rollout.Skipped, rollout.LeftMessage+" (it left, or was forgotten) in its turn"
	r.Nodes["c"].Phase, r.Nodes["c"].Error = rollout.Skipped, "lost contact for over 10s in its turn: it catches up when the rollout ends"
	r.State = rollout.Done
	err := outcome(r)
	if err == nil || !strings.Contains(err.Error(), "version 3 rolled out, but c was down and skipped; it catches up when it returns; b left the cluster during it") {
		t.Fatalf("outcome = %v", err)
	}
}

// status shows a node skipped by an ended rollout that now runs what the rollout left the
// cluster on as caught up, not as skipped alone (found by an outside probe).
func TestASkippedNodeThatCaughtUpIsShownSo(t *testing.T) {
	r := rollout.New(3, "v3", 2, "v2", rollout.Members("a", "b"), false, true, rollout.Policy{}, time.Now())
	r.Nodes["a"].Phase = rollout.Running
	r.Nodes["b"].Phase = rollout.Skipped
	r.State = rollout.Done
	if !caughtUp(r, r.Nodes["b"], &api.Local{Label: "v3"}) {
		t.Fatal("b on v3 after v3 rolled out: not shown as caught up")
	}
	if caughtUp(r, r.Nodes["b"], &api.Local{Label: "v2"}) {
		t.Fatal("b still on v2: shown as caught up")
	}
	r.State = rollout.WentBack
	if !caughtUp(r, r.Nodes["b"], &api.Local{Label: "v2"}) {
		t.Fatal("b on v2 after v3 went back: not shown as caught up")
	}
}

// A slot's wait between two turns is read from the stamps: the first wave waits for no turn,
// and a grant made at a report's own commit waited nothing.
func TestTimelineReadsTheWaitBetweenTurns(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 14, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	r := &rollout.Rollout{Started: t0, Ended: at(2000), Nodes: map[string]*rollout.Node{
		"n1": {Phase: rollout.Running, Built: at(100), Granted: at(200), Done: at(900)},
		"n2": {Phase: rollout.Running, Built: at(100), Granted: at(200), Done: at(1000)},
		"n3": {Phase: rollout.Running, Built: at(150), Granted: at(900), Done: at(1500)},  // at n1's report
		"n4": {Phase: rollout.Running, Built: at(150), Granted: at(1150), Done: at(1800)}, // 150 ms after n2's
		"n6": {Phase: rollout.Failed, Built: at(150), Granted: at(1000), Done: at(1100)},  // at n2's; its end is no turn's
		"n5": {Built: at(150)},                                                            // never granted
	}}
	tl := timelineOf(r)
	if tl.firstGrant != 200*time.Millisecond || tl.lastBuilt != 150*time.Millisecond {
		t.Fatalf("first grant %s, last built %s; want 200ms and 150ms", tl.firstGrant, tl.lastBuilt)
	}
	slices.Sort(tl.gaps)
	if want := []time.Duration{0, 0, 150 * time.Millisecond}; !slices.Equal(tl.gaps, want) {
		t.Fatalf("gaps %v, want %v", tl.gaps, want)
	}
}
