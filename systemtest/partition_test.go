package systemtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

// testHost is a network namespace joined to this one by a veth pair: a host of the test's own,
// which the test can cut off and heal.
type testHost struct {
	ns, hostIP, nsIP, link string
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// newTestHost makes the namespace, or skips the test where this machine does not let it (not
// root, no iproute2): the partition can only be made real with a host of one's own.
func newTestHost(t *testing.T) *testHost {
	t.Helper()
	n := rand.IntN(200) + 20
	h := &testHost{
		ns:     fmt.Sprintf("duckraft-test-%d", n),
		link:   fmt.Sprintf("drt%d", n),
		hostIP: fmt.Sprintf("10.77.%d.1", n),
		nsIP:   fmt.Sprintf("10.77.%d.2", n),
	}
	// A test that cannot run here fails and says why, unless the one who runs it says to skip.
	cannot := func(why string) {
		if os.Getenv("DUCKRAFT_SKIP_NETNS") != "" {
			t.Skipf("DUCKRAFT_SKIP_NETNS is set: %s", why)
		}
		t.Fatalf("%s; the partition test needs root and iproute2 (apt-get install iproute2), or set DUCKRAFT_SKIP_NETNS=1 to skip it", why)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		cannot("no ip command (iproute2) to make a network namespace with")
	}
	if err := ipCmd("netns", "add", h.ns); err != nil {
		cannot(fmt.Sprintf("cannot make a network namespace here (%v)", err))
	}
	t.Cleanup(func() { ipCmd("netns", "del", h.ns) })
	for _, args := range [][]string{
		{"link", "add", h.link, "type", "veth", "peer", "name", h.link + "p"},
		{"link", "set", h.link + "p", "netns", h.ns},
		{"addr", "add", h.hostIP + "/24", "dev", h.link},
		{"link", "set", h.link, "up"},
		{"-n", h.ns, "addr", "add", h.nsIP + "/24", "dev", h.link + "p"},
		{"-n", h.ns, "link", "set", h.link + "p", "up"},
		{"-n", h.ns, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { ipCmd("link", "del", h.link) })
	return h
}

func (h *testHost) cut(t *testing.T) {
	t.Helper()
	if err := ipCmd("link", "set", h.link, "down"); err != nil {
		t.Fatal(err)
	}
}

func (h *testHost) heal(t *testing.T) {
	t.Helper()
	if err := ipCmd("link", "set", h.link, "up"); err != nil {
		t.Fatal(err)
	}
}

// A node cut off from the others and healed: the majority keeps serving and rolls out a
// version without it; healed, it catches up; nothing committed is lost.
func TestPartitionedNodeCatchesUpAfterHeal(t *testing.T) {
	h := newTestHost(t)
	c, _ := newCluster(t)
	var err error
	bind := func(ip string) []string { return []string{"--api-addr", ip + ":0", "--raft-addr", ip + ":0"} }
	a, err := c.Start("a", bind(h.hostIP)...)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Start("b", bind(h.hostIP)...)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := c.StartWith([]string{"ip", "netns", "exec", h.ns}, "c", bind(h.nsIP)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{b.API, cc.API} {
		cli(t, c, n, "connect", a.API)
	}
	cli(t, c, a.API, "deploy", "../duck")
	ducks := map[string]string{}
	for _, n := range []string{"a", "b"} {
		addr := map[string]string{"a": a.API, "b": b.API}[n]
		var id, duckAddr string
		out := cli(t, c, addr, "spawn", "--detach")
		fmt.Sscanf(out, "%s on "+n+" serving http://%s", &id, &duckAddr)
		ducks[n] = duckAddr
	}
	for _, addr := range ducks {
		askDuck("POST", addr)
	}
	l := startLoad(ducks)

	h.cut(t)
	t0 := time.Now()
	waitFor(t, "a and b to see c unreachable and keep a leader", 30*time.Second, func() bool {
		ms := members(c, a.API)
		return strings.Contains(view(ms), "c:unknown:false") && leaderOf(ms) != ""
	})
	_, errOut, err := tryCLI(c, b.API, "deploy", "-m", "while c is cut off", "../testdata/duck-v2")
	if err == nil || !strings.Contains(errOut, "c was down and skipped") {
		t.Fatalf("deploy during the partition: err=%v\n%s", err, errOut)
	}
	t.Logf("partition: majority rolled out version 2 %s after the cut", time.Since(t0).Round(time.Millisecond))

	h.heal(t)
	t1 := time.Now()
	waitFor(t, "c to catch up to version 2", 90*time.Second, func() bool {
		out, _, err := tryCLI(c, a.API, "status")
		return err == nil && regexpMatch(`(?m)^c .* yes .* v2 `, out)
	})
	l.finish()
	t.Logf("healed: c ran version 2 %s after the heal; %d requests failed, %d served", time.Since(t1).Round(time.Millisecond), l.failed.Load(), l.ok["a"].Load()+l.ok["b"].Load())
	if l.failed.Load() != 0 {
		t.Errorf("%d requests to a's and b's ducks failed during the partition", l.failed.Load())
	}
	for name, addr := range ducks {
		got, err := askDuck("GET", addr)
		if err != nil || got.Count != int(l.ok[name].Load())+1 || got.Version != "v2" {
			t.Errorf("duck on %s: %+v, %v; want v2 counting %d", name, got, err, l.ok[name].Load()+1)
		}
	}
	v := rolloutOf(t, c, cc.API)
	if len(v.Versions) != 2 || v.Rollout.State != rollout.Done {
		t.Fatalf("c's view after the heal: %d versions, rollout %s", len(v.Versions), v.Rollout.State)
	}
}
