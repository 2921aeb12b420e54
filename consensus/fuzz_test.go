package consensus

import (
	"bytes"
	"encoding/json"
	"io"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/rollout"
)

// fuzzBases are snapshots of the states a fuzzed entry is applied to, the way a real cluster
// reaches them: three members, then version 1 rolled out everywhere, then version 2 at several
// points of its rollout.
func fuzzBases(tb testing.TB) [][]byte {
	tb.Helper()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	f := newFSM()
	var index uint64
	do := func(c Change) {
		tb.Helper()
		b, err := Encode(c)
		if err != nil {
			tb.Fatal(err)
		}
		index++
		if err, ok := f.Apply(&raft.Log{Index: index, Data: b}).(error); ok {
			tb.Fatalf("building the fuzz base: apply %s: %v", b, err)
		}
	}
	snap := func() []byte {
		tb.Helper()
		b, err := json.Marshal(f.State())
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	ver := func(src string) Version {
		return Version{ID: idOf(src), Message: src, Author: "fuzz", Bundle: []byte("bundle of " + src)}
	}
	report := func(n rollout.Number, name string, phase rollout.Phase, s int) {
		do(Report{N: n, Node: name, Phase: phase, Time: at(s)})
	}
	var bases [][]byte

	for _, n := range []string{"a", "b", "c"} {
		do(Register{Member: Member{Name: n, RaftAddr: "127.0.0.1:71" + n, APIAddr: "127.0.0.1:70" + n}})
	}
	bases = append(bases, snap()) // members, nothing deployed

	do(Commit{Version: ver("v1"), Time: at(1)})
	for i, n := range []string{"a", "b", "c"} {
		report(1, n, rollout.Built, 2)
		do(Grant{N: 1, Node: n, Phase: rollout.Granted, Time: at(3 + i)})
		report(1, n, rollout.Swapping, 3+i)
		report(1, n, rollout.Running, 3+i)
	}
	do(SetState{N: 1, State: rollout.Done, Time: at(10)})
	bases = append(bases, snap()) // version 1 done everywhere

	do(Commit{Version: ver("v2"), Time: at(20)})
	report(2, "a", rollout.Built, 21)
	report(2, "b", rollout.Building, 21)
	do(Grant{N: 2, Node: "a", Phase: rollout.Granted, Time: at(22)})
	report(2, "a", rollout.Swapping, 22)
	bases = append(bases, snap()) // version 2 rolling: a swapping, b building, c pending

	report(2, "a", rollout.Running, 23)
	report(2, "b", rollout.Built, 23)
	do(Grant{N: 2, Node: "b", Phase: rollout.Granted, Time: at(24)})
	report(2, "b", rollout.Swapping, 24)
	report(2, "b", rollout.Failed, 25)
	bases = append(bases, snap()) // b failed: reverting a

	do(Grant{N: 2, Node: "a", Phase: rollout.Reverting, Time: at(26)})
	report(2, "a", rollout.Reverted, 27)
	do(SetState{N: 2, State: rollout.WentBack, Time: at(28)})
	do(Commit{Version: ver("v3"), Canary: true, NoRevert: true, Time: at(30)})
	report(3, "a", rollout.Built, 31)
	do(Grant{N: 3, Node: "a", Phase: rollout.Granted, Time: at(32)})
	report(3, "a", rollout.Swapping, 32)
	report(3, "a", rollout.Running, 33)
	do(SetState{N: 3, State: rollout.Paused, Reason: "canary", Time: at(34)})
	bases = append(bases, snap()) // version 3, a canary, paused; 2 in the past
	return bases
}

// fuzzFSM is an FSM restored from snapshot b.
func fuzzFSM(t *testing.T, b []byte) *fsm {
	t.Helper()
	f := newFSM()
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	return f
}

func stateJSON(t *testing.T, f *fsm) string {
	t.Helper()
	b, err := json.Marshal(f.State())
	if err != nil {
		t.Fatalf("state does not marshal: %v", err)
	}
	return string(b)
}

// roundTrip snapshots f, restores the snapshot into a new FSM and returns that one.
func roundTrip(t *testing.T, f *fsm) *fsm {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	snap.Release()
	g := newFSM()
	if err := g.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatalf("a snapshot the FSM wrote does not restore: %v\n%s", err, sink.Bytes())
	}
	return g
}

// fuzzCommands are realistic entries for the seed corpus: every operation, valid and not.
var fuzzCommands = []command{
	{Op: opRegister, Member: &Member{Name: "d", RaftAddr: "127.0.0.1:7104", APIAddr: "127.0.0.1:7004"}},
	{Op: opRegister, Member: &Member{}},
	{Op: opRegister},
	{Op: opUnregister, Name: "b"},
	{Op: opCommit, Version: &Version{ID: idOf("v9"), Bundle: []byte("x")}, Time: time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)},
	{Op: opCommit, Version: &Version{ID: idOf("v1"), Bundle: []byte("bundle of v1")}},
	{Op: opCommit, Version: &Version{ID: idOf("v9")}},
	{Op: opGrant, N: 2, Name: "c", Phase: rollout.Granted},
	{Op: opGrant, N: 2, Name: "a", Phase: rollout.Reverting},
	{Op: opGrant, N: 2, Name: "a", Phase: rollout.Running},
	{Op: opGrant, N: 2, Name: "zz", Phase: rollout.Granted},
	{Op: opReport, N: 2, Name: "a", Phase: rollout.Running},
	{Op: opReport, N: 2, Name: "b", Phase: rollout.Failed, Error: "duck exited with status 3"},
	{Op: opReport, N: 2, Name: "c", Phase: rollout.Swapping},
	{Op: opReport, N: 2, Name: "c", Phase: "teleported"},
	{Op: opReport, N: 1, Name: "a", Phase: rollout.Running},
	{Op: opSetState, N: 2, State: rollout.Paused},
	{Op: opSetState, N: 3, State: rollout.Rolling},
	{Op: opSetState, N: 3, State: rollout.GoingBack},
	{Op: opSetState, N: 2, State: rollout.Done},
	{Op: opSetState, N: 2, State: "exploded"},
	{Op: opSteps, N: 2, Steps: []command{{Op: opGrant, N: 2, Name: "c", Phase: rollout.Granted}, {Op: opReport, N: 2, Name: "b", Phase: rollout.Skipped}}},
	{Op: opSteps, N: 2, Steps: []command{{Op: opReport, N: 2, Name: "a", Phase: rollout.Running}, {Op: opGrant, N: 2, Name: "zz", Phase: rollout.Granted}}},
	{Op: opSteps, N: 2, Steps: []command{{Op: opSteps, Steps: []command{{Op: opNoop}}}}},
	{Op: opSteps},
	{Op: "teleport"},
}

// FuzzApply applies arbitrary bytes as a log entry to an FSM in a realistic state. Apply must
// never panic; an entry it refuses must leave the state exactly as it was; two nodes applying
// the same entry must agree; and the state after it must survive a snapshot.
func FuzzApply(f *testing.F) {
	bases := fuzzBases(f)
	for i := range bases {
		for _, c := range fuzzCommands {
			b, err := json.Marshal(c)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(i), b)
		}
	}
	f.Add(uint8(0), []byte("{not json"))
	f.Add(uint8(2), []byte(`{"op":"report","n":2,"name":"c","phase":"built","time":"2026-11-25T12:00:30+01:00"}`))
	f.Add(uint8(1), []byte(`{"op":"commit","version":{"id":"x","bundle":"AA=="},"time":"0001-01-01T00:00:00Z"}`))
	f.Add(uint8(3), []byte(`null`))
	f.Fuzz(func(t *testing.T, base uint8, data []byte) {
		b := bases[int(base)%len(bases)]
		fsm, twin := fuzzFSM(t, b), fuzzFSM(t, b)
		before := stateJSON(t, fsm)

		res := fsm.Apply(&raft.Log{Index: 1000, Term: 3, Type: raft.LogCommand, Data: data})
		twin.Apply(&raft.Log{Index: 1000, Term: 3, Type: raft.LogCommand, Data: data})
		after := stateJSON(t, fsm)
		switch res := res.(type) {
		case nil:
		case error:
			// A refused entry is still applied: only the index moves.
			if withoutIndex(after) != withoutIndex(before) {
				t.Fatalf("entry %q was refused (%v) but changed the state:\nbefore %s\nafter  %s", data, res, before, after)
			}
		default:
			t.Fatalf("Apply returned %T %v, want nil or an error", res, res)
		}
		if got := stateJSON(t, twin); got != after {
			t.Fatalf("two FSMs applying %q disagree:\n%s\n%s", data, after, got)
		}
		if got := stateJSON(t, roundTrip(t, fsm)); got != after {
			t.Fatalf("snapshot after %q does not restore to the same state:\nhad      %s\nrestored %s", data, after, got)
		}

		// What every node and the leader read from the state must not panic on it either.
		r := fsm.Rollout()
		r.Next(time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC), func(string) time.Duration { return time.Hour })
		r.Follow("a", rollout.Local{})
		for _, name := range fsm.MemberNames() {
			r.Desired(name)
		}
		fsm.Current()
		fsm.Fresh("a")
		r.Active()
	})
}

// FuzzRestore restores arbitrary bytes as a snapshot. Restore must never panic, and a snapshot
// it refuses must leave the state as it was.
func FuzzRestore(f *testing.F) {
	bases := fuzzBases(f)
	for _, b := range bases {
		f.Add(b)
	}
	f.Add([]byte("garbage"))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"members":null,"versions":[{"n":1,"id":"x","committed":"2026-11-25T12:00:00Z"}]}`))
	f.Add([]byte(`{"members":{"a":{"name":"a"}},"rollout":{"version":1,"order":["a"],"nodes":{"a":{"phase":"running","since":"2026-11-25T12:00:00Z"}},"state":"done","auto_revert":true,"started":"2026-11-25T12:00:00Z"}}`))
	f.Add([]byte(`{"members":{}} trailing`))
	cur := bases[len(bases)-1]
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := fuzzFSM(t, cur)
		before := stateJSON(t, fsm)
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			if after := stateJSON(t, fsm); after != before {
				t.Fatalf("snapshot %q was refused (%v) but changed the state:\nbefore %s\nafter  %s", data, err, before, after)
			}
			return
		}
		// Restore took it: every reader works on it, and its own snapshot restores to the same.
		restored := stateJSON(t, fsm)
		fsm.Rollout().Next(time.Now(), nil)
		fsm.Current()
		snap, err := fsm.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		var sink memSink
		if err := snap.Persist(&sink); err != nil {
			t.Fatal(err)
		}
		again := newFSM()
		if err := again.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
			t.Fatalf("the snapshot of a restored state does not restore: %v", err)
		}
		if got := stateJSON(t, again); got != restored {
			t.Fatalf("snapshot round trip changed the state:\nbefore %s\nafter  %s", restored, got)
		}
	})
}

var indexField = regexp.MustCompile(`,?"index":[0-9]+`)

// withoutIndex is a state's JSON without its log index.
func withoutIndex(stateJSON string) string { return indexField.ReplaceAllString(stateJSON, "") }
