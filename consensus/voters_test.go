package consensus

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func servers(voters, nonvoters int) []raft.Server {
	var out []raft.Server
	for i := range voters + nonvoters {
		s := raft.Server{ID: raft.ServerID(fmt.Sprintf("n%d", i+1)), Suffrage: raft.Voter}
		if i >= voters {
			s.Suffrage = raft.Nonvoter
		}
		out = append(out, s)
	}
	return out
}

func quiet(lost ...string) func(string) time.Duration {
	return func(name string) time.Duration {
		for _, l := range lost {
			if l == name {
				return time.Minute
			}
		}
		return 0
	}
}

func TestVotersAreKeptAtMaxAndLostOnesReplaced(t *testing.T) {
	cases := []struct {
		name   string
		srv    []raft.Server
		silent func(string) time.Duration
		want   VoterChange
	}{
		{"below max, a non-voter is promoted", servers(3, 2), quiet(), VoterChange{Promote: "n4"}},
		{"at max, nothing", servers(5, 95), quiet(), VoterChange{}},
		{"a lost voter: a reachable non-voter is promoted first", servers(5, 3), quiet("n2", "n6"), VoterChange{Promote: "n7"}},
		{"then the lost voter is demoted", append(servers(5, 0), raft.Server{ID: "n7", Suffrage: raft.Voter}), quiet("n2"), VoterChange{Demote: "n2"}},
		{"a lost voter with nobody to replace it stays", servers(5, 0), quiet("n2"), VoterChange{}},
		{"the leader is never demoted", servers(6, 0), quiet(), VoterChange{Demote: "n6"}},
		{"an unreachable non-voter is not promoted", servers(3, 1), quiet("n4"), VoterChange{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := PlanVoters(c.srv, c.silent, "n1", 5, 10*time.Second, nil)
			if got.Promote != c.want.Promote || got.Demote != c.want.Demote {
				t.Fatalf("PlanVoters = %+v, want promote %q demote %q", got, c.want.Promote, c.want.Demote)
			}
		})
	}
	// Only a non-voter that holds the log takes a lost voter's place; asked one after another.
	var asked []string
	behind := func(lagging ...string) func(string) bool {
		asked = nil
		return func(name string) bool {
			asked = append(asked, name)
			for _, l := range lagging {
				if l == name {
					return false
				}
			}
			return true
		}
	}
	if got := PlanVoters(servers(5, 3), quiet("n2"), "n1", 5, 10*time.Second, behind("n6")); got.Promote != "n7" || len(asked) != 2 {
		t.Fatalf("n6 behind: %+v after asking %v, want n7 after asking n6 and n7", got, asked)
	}
	if got := PlanVoters(servers(5, 2), quiet("n2"), "n1", 5, 10*time.Second, behind("n6", "n7")); got.Promote != "" || got.Demote != "" {
		t.Fatalf("every non-voter behind: %+v, want nothing", got)
	}
	if PlanVoters(servers(5, 95), quiet(), "n1", 5, 10*time.Second, behind()); len(asked) != 0 {
		t.Fatalf("asked %v with nothing to promote", asked)
	}
	if FailureTolerance(5) != 2 || FailureTolerance(3) != 1 || FailureTolerance(1) != 0 || FailureTolerance(4) != 1 {
		t.Fatal("failure tolerance")
	}
}
