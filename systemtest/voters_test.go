package systemtest

import (
	"fmt"
	"github.com/duckraft/duckraft/api"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/localcluster"
)

// votersSynced fails the test if a voter's log is not synced (its copy counts towards commits),
// or, when nonvotersToo, if a non-voter's is (it need not be, and syncing costs every commit).
func votersSynced(t *testing.T, ms []api.MemberStatus, nonvotersToo bool) {
	t.Helper()
	for _, m := range ms {
		switch {
		case m.Suffrage == "voter" && m.Log != "synced":
			t.Fatalf("voter %s's log is %q, want synced: %+v", m.Name, m.Log, ms)
		case nonvotersToo && m.Suffrage == "nonvoter" && m.Log != "unsynced":
			t.Fatalf("non-voter %s's log is %q, want unsynced: %+v", m.Name, m.Log, ms)
		}
	}
}

func suffrages(ms []api.MemberStatus) (voters, nonvoters []string) {
	for _, m := range ms {
		if m.Suffrage == "voter" {
			voters = append(voters, m.Name)
		} else {
			nonvoters = append(nonvoters, m.Name)
		}
	}
	return voters, nonvoters
}

// Seven nodes: five vote, two follow the log. A voter that dies is replaced by a non-voter
// (promoted first, then the dead one demoted), so the cluster keeps tolerating two failures;
// back, the old voter stays a non-voter.
func TestFiveVotersAndALostOneIsReplaced(t *testing.T) {
	c := emptyCluster(t)
	var nodes []*localcluster.Node
	for i := 1; i <= 7; i++ {
		n, err := c.Start(fmt.Sprintf("n%d", i), "--replace-voter-after", "2s")
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	connectAll(t, c, nodes)
	first := nodes[0]
	var voters, nonvoters []string
	waitFor(t, "five voters and two non-voters", 30*time.Second, func() bool {
		voters, nonvoters = suffrages(members(c, first.API))
		return len(voters) == 5 && len(nonvoters) == 2
	})
	votersSynced(t, members(c, first.API), true)
	if out := cli(t, c, first.API, "members"); !strings.Contains(out, "LOG") || !strings.Contains(out, " unsynced ") {
		t.Fatalf("members does not show how each member writes its log:\n%s", out)
	}
	status := cli(t, c, first.API, "status")
	if !strings.Contains(status, "5 voters of 7 members: the cluster can lose 2 of them") {
		t.Fatalf("status does not say how many failures the cluster takes:\n%s", status)
	}
	leader := leaderOf(members(c, first.API))
	var victim *localcluster.Node
	for _, n := range nodes {
		if n.Name != leader && n != first && strings.Contains(","+strings.Join(voters, ",")+",", ","+n.Name+",") {
			victim = n
			break
		}
	}
	victim.Kill()
	t0 := time.Now()
	// Until it is replaced, status counts from the voters that answer: it said "can lose 2"
	// with a voter dead (found by trying it).
	if status := cli(t, c, first.API, "status"); !strings.Contains(status, "5 voters of 7 members, 1 not answering: the cluster can lose 1 more of them") {
		if v, _ := suffrages(members(c, first.API)); strings.Contains(","+strings.Join(v, ",")+",", ","+victim.Name+",") {
			t.Fatalf("status with voter %s dead:\n%s", victim.Name, status)
		}
	}
	waitFor(t, "the dead voter replaced", 60*time.Second, func() bool {
		v, _ := suffrages(members(c, first.API))
		if len(v) != 5 {
			return false
		}
		for _, name := range v {
			if name == victim.Name {
				return false
			}
		}
		return true
	})
	t.Logf("voter %s killed: replaced by a non-voter %s later", victim.Name, time.Since(t0).Round(time.Millisecond))
	votersSynced(t, members(c, first.API), false)
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the old voter back as a non-voter", 30*time.Second, func() bool {
		for _, m := range members(c, first.API) {
			if m.Name == victim.Name {
				return m.Reachable && m.Suffrage == "nonvoter"
			}
		}
		return false
	})
	if v, _ := suffrages(members(c, first.API)); len(v) != 5 {
		t.Fatalf("after the old voter came back: voters %v, want five", v)
	}
}
