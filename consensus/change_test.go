package consensus

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// Every kind of change comes back from the log as it went in.
func TestChangesCrossTheLogAsTheyAre(t *testing.T) {
	for _, c := range []Change{
		Register{Member: Member{Name: "a", RaftAddr: "127.0.0.1:7101", APIAddr: "127.0.0.1:7001", Labels: map[string]string{"zone": "eu-1"}}},
		Unregister{Name: "b"},
		Commit{Version: Version{ID: idOf("v2"), Message: "louder", Author: "ann", Bundle: []byte("src")}, Canary: true, NoRevert: true,
			Policy: rollout.Policy{MaxParallelPercent: 20, Healthy: 200 * time.Millisecond, WaveBy: "zone"}, Time: t0},
		Grant{N: 2, Node: "a", Phase: rollout.Reverting, Time: t0},
		Report{N: 2, Node: "c", Phase: rollout.Built, Build: &rollout.BuildInfo{Sum: "abc", Toolchain: "go1.26.0"}, Time: t0},
		Report{N: 2, Node: "c", Phase: rollout.Failed, Error: "duck exited with status 3", Time: t0},
		SetState{N: 2, State: rollout.Paused, Reason: "pause by hand", Time: t0},
		WaveState{N: 2, State: rollout.Paused, Time: t0},
		NameCluster{Name: "0123456789abcdef"},
		Steps{N: 2, Time: t0, Steps: []Step{
			Grant{N: 2, Node: "a", Phase: rollout.Granted},
			Report{N: 2, Node: "b", Phase: rollout.Skipped, Error: "down"},
			SetState{N: 2, State: rollout.Done},
		}},
		Noop{},
		Place{Placement: Placement{Node: "a", ID: "duck-1", Addr: "127.0.0.1:8001", Env: []string{"X=1"}}},
		Unplace{Key: "a/duck-1"},
	} {
		b, err := Encode(c)
		if err != nil {
			t.Fatalf("encode %T: %v", c, err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("%T crossed the log as\n%#v\nwant\n%#v\n(JSON %s)", c, got, c, b)
		}
	}
}

// Entries as the log held them before changes had types of their own (one struct of optional
// fields) still read as the same changes: a node upgraded in place replays its old log.
func TestOldEntriesReadAsTheirChanges(t *testing.T) {
	for _, tc := range []struct {
		entry string
		want  Change
	}{
		{`{"op":"register","member":{"name":"a","raft_addr":"127.0.0.1:7101","api_addr":"127.0.0.1:7001"}}`,
			Register{Member: Member{Name: "a", RaftAddr: "127.0.0.1:7101", APIAddr: "127.0.0.1:7001"}}},
		{`{"op":"commit","time":"2026-11-25T12:00:00Z","version":{"n":0,"id":"` + string(idOf("v1")) + `","message":"m","committed":"0001-01-01T00:00:00Z","bundle":"c3Jj"},"policy":{"max_parallel":4}}`,
			Commit{Version: Version{ID: idOf("v1"), Message: "m", Bundle: []byte("src")}, Policy: rollout.Policy{MaxParallel: 4}, Time: t0}},
		{`{"op":"commit","version":{"n":0,"id":"x","committed":"0001-01-01T00:00:00Z"}}`, Commit{Version: Version{ID: "x"}}},
		{`{"op":"report","name":"b","time":"2026-11-25T12:00:00Z","n":2,"phase":"built","build":{"sum":"s","toolchain":"go1.26.0"}}`,
			Report{N: 2, Node: "b", Phase: rollout.Built, Build: &rollout.BuildInfo{Sum: "s", Toolchain: "go1.26.0"}, Time: t0}},
		{`{"op":"rollout-state","time":"2026-11-25T12:00:00Z","n":3,"state":"paused","reason":"canary"}`,
			SetState{N: 3, State: rollout.Paused, Reason: "canary", Time: t0}},
		// The leader's rounds once stamped every step too; the round's stamp is the one applied.
		{`{"op":"steps","time":"2026-11-25T12:00:00Z","n":2,"steps":[{"op":"grant","name":"a","time":"2026-11-25T12:00:00Z","n":2,"phase":"granted"}]}`,
			Steps{N: 2, Time: t0, Steps: []Step{Grant{N: 2, Node: "a", Phase: rollout.Granted, Time: t0}}}},
		{`{"op":"place","placement":{"node":"a","id":"duck-1","addr":"127.0.0.1:8001"}}`,
			Place{Placement: Placement{Node: "a", ID: "duck-1", Addr: "127.0.0.1:8001"}}},
		{`{"op":"unplace","name":"a/duck-1"}`, Unplace{Key: "a/duck-1"}},
		{`{"op":"unregister","name":"b"}`, Unregister{Name: "b"}},
		{`{"op":"noop"}`, Noop{}},
	} {
		got, err := Decode([]byte(tc.entry))
		if err != nil {
			t.Errorf("decode %s: %v", tc.entry, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s read as\n%#v\nwant\n%#v", tc.entry, got, tc.want)
		}
	}
}

// What is not a change is refused by name, before anything applies.
func TestDecodeRefusesWhatIsNotAChange(t *testing.T) {
	for entry, want := range map[string]string{
		`{"op":"teleport"}`: `unknown operation "teleport": this node is older than the one that wrote it; upgrade it`,
		`{}`:                `unknown operation ""`,
		`{"op":"steps","steps":[{"op":"register"}]}`:             `step 1 of 1: "register" is not a rollout step`,
		`{"op":"steps","steps":[{"op":"grant"},{"op":"steps"}]}`: `step 2 of 2: "steps" is not a rollout step`,
		`{"op":"steps","steps":[{"op":"warp"}]}`:                 `step 1 of 1: unknown operation "warp"`,
		`{"op":"grant","n":"two"}`:                               `cannot unmarshal`,
		`null`:                                                   `unknown operation ""`,
	} {
		_, err := Decode([]byte(entry))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("decode %s: %v, want an error saying %q", entry, err, want)
		}
	}
}

// A round's steps carry one stamp, the round's: whatever time a step was built with, the
// rollout records the round's.
func TestStepsTakeTheRoundsTime(t *testing.T) {
	f, clk := cluster3(t)
	commit(t, f, clk, "v2", false)
	r := f.Rollout()
	for _, name := range r.Order {
		mustApply(t, f, Report{N: r.Version, Node: name, Phase: rollout.Built, Time: clk.now()})
	}
	round := clk.now()
	mustApply(t, f, Steps{N: r.Version, Time: round, Steps: []Step{Grant{N: r.Version, Node: "a", Phase: rollout.Granted, Time: round.Add(time.Hour)}}})
	if nr := f.Rollout().Nodes["a"]; nr.Phase != rollout.Granted || !nr.Since.Equal(round) {
		t.Fatalf("a is %s since %v, want granted since the round's %v", nr.Phase, nr.Since, round)
	}
}
