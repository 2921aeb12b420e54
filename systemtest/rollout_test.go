package systemtest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/localcluster"
	"github.com/duckraft/duckraft/rollout"
)

// duckCluster is three connected nodes that run version 1 (duck/) with one duck each.
type duckCluster struct {
	c     *localcluster.Cluster
	nodes []*localcluster.Node
	ducks map[string]string // node name -> duck HTTP address
}

// newDuckCluster starts it, extra going to every node's start.
func newDuckCluster(t testing.TB, extra ...string) *duckCluster {
	t.Helper()
	c, nodes := newClusterWith(t, extra, "a", "b", "c")
	connectAll(t, c, nodes)
	out := cli(t, c, nodes[0].API, "deploy", "-m", "first", "../duck")
	if !strings.Contains(out, "version 1 runs on every node") {
		t.Fatalf("first deploy printed:\n%s", out)
	}
	dc := &duckCluster{c: c, nodes: nodes, ducks: map[string]string{}}
	for _, n := range nodes {
		var id, addr string
		out := cli(t, c, n.API, "spawn", "--detach", "--env", "DUCK_INTERVAL=200ms")
		if _, err := fmt.Sscanf(out, "%s on "+n.Name+" serving http://%s", &id, &addr); err != nil {
			t.Fatalf("spawn on %s printed %q", n.Name, out)
		}
		dc.ducks[n.Name] = addr
	}
	return dc
}

func rolloutOf(t testing.TB, c *localcluster.Cluster, addr string) api.RolloutView {
	t.Helper()
	var v api.RolloutView
	if err := json.Unmarshal([]byte(cli(t, c, addr, "rollout", "status", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// load runs keep-alive POSTs against every duck until stop is closed, counting what succeeded
// per duck and what failed.
type load struct {
	ok     map[string]*atomic.Int64
	failed atomic.Int64
	errs   sync.Map
	stop   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func startLoad(ducks map[string]string) *load { return startLoadEvery(ducks, 5*time.Millisecond) }

// startLoadEvery is startLoad with one POST every `every` per duck.
func startLoadEvery(ducks map[string]string, every time.Duration) *load {
	l := &load{ok: map[string]*atomic.Int64{}, stop: make(chan struct{})}
	for name := range ducks {
		l.ok[name] = &atomic.Int64{}
	}
	for name, addr := range ducks {
		ok := l.ok[name]
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; i < 20000; i++ { // bounded, and it stops by itself
				select {
				case <-l.stop:
					return
				default:
				}
				if _, err := askDuck("POST", addr); err != nil {
					l.failed.Add(1)
					l.errs.Store(err.Error(), name)
				} else {
					ok.Add(1)
				}
				time.Sleep(every)
			}
		}()
	}
	return l
}

func (l *load) finish() { l.once.Do(func() { close(l.stop) }); l.wg.Wait() }

// stopOnce is finish, safe to call again (from a defer too).
func (l *load) stopOnce() { l.finish() }

// total is how many POSTs were answered, every duck together.
func (l *load) total() int64 {
	var n int64
	for _, c := range l.ok {
		n += c.Load()
	}
	return n
}

func TestRolloutUpgradesInAnnouncedOrderUnderLoad(t *testing.T) {
	dc := newDuckCluster(t)
	for name, addr := range dc.ducks {
		if r, err := askDuck("POST", addr); err != nil || r.Count != 1 || r.Version != "v1" {
			t.Fatalf("duck on %s: %+v %v", name, r, err)
		}
	}
	l := startLoad(dc.ducks)
	out := cli(t, dc.c, dc.nodes[1].API, "deploy", "-m", "louder", "../testdata/duck-v2")
	l.finish()
	if !strings.Contains(out, "version 2 runs on every node") {
		t.Fatalf("deploy printed:\n%s", out)
	}
	if n := l.failed.Load(); n != 0 {
		var errs []string
		l.errs.Range(func(k, v any) bool { errs = append(errs, fmt.Sprintf("%v: %v", v, k)); return true })
		t.Fatalf("%d requests failed during the rollout: %v", n, errs)
	}

	// The log's reports prove the order: each node finished before the next was granted.
	r := rolloutOf(t, dc.c, dc.nodes[2].API).Rollout
	if r.State != rollout.Done || strings.Join(r.Order, ",") != "a,b,c" {
		t.Fatalf("rollout %s, order %v", r.State, r.Order)
	}
	for i := 1; i < len(r.Order); i++ {
		prev, next := r.Nodes[r.Order[i-1]], r.Nodes[r.Order[i]]
		if next.Granted.Before(prev.Done) {
			t.Fatalf("%s was granted at %v, before %s finished at %v", r.Order[i], next.Granted, r.Order[i-1], prev.Done)
		}
	}
	for name, addr := range dc.ducks {
		want := int(l.ok[name].Load()) + 1
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v2" || got.Count != want {
			t.Fatalf("duck on %s after the rollout: %+v, %v; want v2 with count %d", name, got, err, want)
		}
	}
}

func TestVersionThatDoesNotCompileHaltsBeforeAnySwap(t *testing.T) {
	dc := newDuckCluster(t)
	_, errOut, err := tryCLI(dc.c, dc.nodes[0].API, "deploy", "../testdata/duck-broken")
	if err == nil || !strings.Contains(errOut, "does not compile") || !strings.Contains(errOut, "stopped before any node swapped, so every node runs what it ran") {
		t.Fatalf("deploy of a broken version: err=%v\n%s", err, errOut)
	}
	// The first node to build it (all build at once, the first in the order may already have its
	// turn) reports the compiler's message and the rollout halts there: no node ever runs it.
	// The deploy watched another node, and this one may lag the leader by a step or two.
	var r *rollout.Rollout
	waitFor(t, "b to see the rollout end", 5*time.Second, func() bool {
		r = rolloutOf(t, dc.c, dc.nodes[1].API).Rollout
		return !r.Active()
	})
	if !strings.Contains(r.Reason, "does not compile") {
		t.Fatalf("rollout %s: %s", r.State, r.Reason)
	}
	for _, name := range r.Order {
		if p := r.Nodes[name].Phase; p == rollout.Running || p == rollout.Swapping {
			t.Fatalf("%s is %s on a version that does not compile", name, p)
		}
	}
	if !r.Nodes["c"].Granted.IsZero() {
		t.Fatal("the rollout went on to the last node after a failure")
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("POST", addr); err != nil || got.Version != "v1" || got.Count != 1 {
			t.Fatalf("duck on %s: %+v, %v; want v1 still serving", name, got, err)
		}
	}
	// The cluster is not stuck: a good version rolls out next.
	if out := cli(t, dc.c, dc.nodes[0].API, "deploy", "../testdata/duck-v2"); !strings.Contains(out, "version 3 runs on every node") {
		t.Fatalf("deploy after a broken version:\n%s", out)
	}
}

func TestCrashingVersionStopsAtFirstNodeAndClusterKeepsServing(t *testing.T) {
	dc := newDuckCluster(t)
	_, errOut, err := tryCLI(dc.c, dc.nodes[0].API, "deploy", "../testdata/duck-crash")
	if err == nil || !strings.Contains(errOut, "a failed") {
		t.Fatalf("deploy of a crashing version: err=%v\n%s", err, errOut)
	}
	r := rolloutOf(t, dc.c, dc.nodes[2].API).Rollout
	if r.Nodes["a"].Phase != rollout.Failed || !r.Nodes["b"].Granted.IsZero() || !r.Nodes["c"].Granted.IsZero() {
		t.Fatalf("rollout went past the first failure: %+v", r.Nodes)
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v1" || got.Count != 0 {
			t.Fatalf("duck on %s: %+v, %v; want v1 still serving", name, got, err)
		}
	}
}

func TestUndoGoesBackInReverseOrderAndHistoryShowsIt(t *testing.T) {
	dc := newDuckCluster(t)
	// A message is a summary: a long one is refused before the commit, and what it holds
	// reaches the terminal escaped (both went into the log and out to the terminal as given).
	if _, errOut, err := tryCLI(dc.c, dc.nodes[0].API, "deploy", "-m", strings.Repeat("m", 5000), "../testdata/duck-v2"); err == nil || !strings.Contains(errOut, "the version's message (or author) is 5000 bytes: at most 4096") {
		t.Fatalf("deploy with a 5000-byte message: err=%v\n%s", err, errOut)
	}
	cli(t, dc.c, dc.nodes[0].API, "deploy", "-m", "louder \x1b]0;owned\a\n3  fake row", "../testdata/duck-v2")
	if hist := cli(t, dc.c, dc.nodes[1].API, "rollout", "history"); strings.ContainsAny(hist, "\x1b\a") || !strings.Contains(hist, "louder") || strings.Contains(hist, "\n3  fake row") {
		t.Fatalf("history prints the message's escapes raw:\n%q", hist)
	}
	out := cli(t, dc.c, dc.nodes[2].API, "rollout", "undo")
	if !strings.Contains(out, "version 2 reverted: every node is back on version 1") {
		t.Fatalf("undo printed:\n%s", out)
	}
	r := rolloutOf(t, dc.c, dc.nodes[0].API).Rollout
	if !r.Nodes["c"].Done.Before(r.Nodes["b"].Done) || !r.Nodes["b"].Done.Before(r.Nodes["a"].Done) {
		t.Fatalf("not reverted in reverse order: %+v", r.Nodes)
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v1" {
			t.Fatalf("duck on %s after undo: %+v, %v", name, got, err)
		}
	}
	hist := cli(t, dc.c, dc.nodes[1].API, "rollout", "history")
	if !strings.Contains(hist, "first") || !strings.Contains(hist, "louder") || !strings.Contains(hist, "reverted") {
		t.Fatalf("history:\n%s", hist)
	}
	// undo --to 2 rolls version 2's source out again, as a new version.
	out = cli(t, dc.c, dc.nodes[1].API, "rollout", "undo", "--to", "2")
	if !strings.Contains(out, "version 3 runs on every node") {
		t.Fatalf("undo --to 2 printed:\n%s", out)
	}
	// A version never committed is named as such, not as one the log no longer keeps.
	if _, errOut, err := tryCLI(dc.c, dc.nodes[1].API, "rollout", "undo", "--to", "99"); err == nil || !strings.Contains(errOut, "there is no version 99: the newest is 3") {
		t.Fatalf("undo --to 99: err=%v\n%s", err, errOut)
	}
}

// State goes back too: undoing a version that changed the state's layout
// (duck-migrate, schema 2, with a Downgrade to duck's schema 1) brings
// every node back to version 1 with its count.
func TestUndoAcrossSchemaChangeKeepsEveryCount(t *testing.T) {
	dc := newDuckCluster(t)
	post := func(name, addr string, want int, when string) {
		t.Helper()
		got, err := askDuck("POST", addr)
		if err != nil || got.Count != want {
			t.Fatalf("POST to the duck on %s %s: %+v, %v; want count %d", name, when, got, err, want)
		}
	}
	for name, addr := range dc.ducks {
		post(name, addr, 1, "on version 1")
		post(name, addr, 2, "on version 1")
	}
	out := cli(t, dc.c, dc.nodes[0].API, "deploy", "-m", "schema 2", "../testdata/duck-migrate")
	if !strings.Contains(out, "version 2 runs on every node") {
		t.Fatalf("deploy of schema 2 printed:\n%s", out)
	}
	for name, addr := range dc.ducks {
		post(name, addr, 3, "after migrating up")
	}
	out = cli(t, dc.c, dc.nodes[1].API, "rollout", "undo")
	if !strings.Contains(out, "version 2 reverted: every node is back on version 1") {
		t.Fatalf("undo across the schema change printed:\n%s", out)
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v1" || got.Count != 3 {
			t.Fatalf("duck on %s after undo: %+v, %v; want count 3 on v1", name, got, err)
		}
		post(name, addr, 4, "back on version 1")
	}
	// Forward again, then down with a plain deploy of the schema 1 source: its way back is
	// duck-migrate's own Migrate, which read schema 1 on the way up. It was refused as if
	// duck needed a Downgrade to schema 2 (found by trying it from outside).
	if out := cli(t, dc.c, dc.nodes[2].API, "deploy", "../testdata/duck-migrate"); !strings.Contains(out, "runs on every node") {
		t.Fatalf("deploy of schema 2 again printed:\n%s", out)
	}
	for name, addr := range dc.ducks {
		post(name, addr, 5, "on schema 2 again")
	}
	if out := cli(t, dc.c, dc.nodes[0].API, "deploy", "../duck"); !strings.Contains(out, "runs on every node") {
		t.Fatalf("deploy of schema 1 after schema 2 printed:\n%s", out)
	}
	for name, addr := range dc.ducks {
		post(name, addr, 6, "after deploying schema 1 over schema 2")
	}
}

// A version whose state cannot go back (oneway: schema 3, a Migrate up from 2, no Downgrade) is
// refused before any node swaps while auto-revert is on, saying why and what to do; with
// --no-revert it rolls out, and every count survives the migration.
func TestAVersionThatCannotGoBackIsRefusedBeforeAnySwap(t *testing.T) {
	dc := newDuckCluster(t)
	cli(t, dc.c, dc.nodes[0].API, "deploy", "-m", "schema 2", "../testdata/duck-migrate")
	for name, addr := range dc.ducks {
		if got, err := askDuck("POST", addr); err != nil || got.Count != 1 {
			t.Fatalf("duck on %s on schema 2: %+v %v", name, got, err)
		}
	}
	_, errOut, err := tryCLI(dc.c, dc.nodes[1].API, "deploy", "../runtime/hotswap/testdata/oneway")
	if err == nil || !strings.Contains(errOut, "cannot hand it back") || !strings.Contains(errOut, "--no-revert") {
		t.Fatalf("deploying a version with no way back: err=%v\n%s", err, errOut)
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v2" || got.Count != 1 {
			t.Fatalf("duck on %s after the refusal: %+v %v; want v2, untouched", name, got, err)
		}
	}
	out := cli(t, dc.c, dc.nodes[1].API, "deploy", "--no-revert", "../runtime/hotswap/testdata/oneway")
	if !strings.Contains(out, "runs on every node") {
		t.Fatalf("deploy --no-revert printed:\n%s", out)
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v4" || got.Count != 1 {
			t.Fatalf("duck on %s on the one-way version: %+v %v; want v4 with its count", name, got, err)
		}
	}
	// A plain undo of it is refused before anything moves, for the same reason.
	_, errOut, err = tryCLI(dc.c, dc.nodes[2].API, "rollout", "undo")
	if err == nil || !strings.Contains(errOut, "cannot hand it back") || !strings.Contains(errOut, "--force") {
		t.Fatalf("undo of a version with no way back: err=%v\n%s", err, errOut)
	}
	// Forced, it fails at the first node back, halts there and says so: it said "every node
	// is back on version 2" and exited 0 with every node still on version 4.
	out, errOut, err = tryCLI(dc.c, dc.nodes[2].API, "rollout", "undo", "--force")
	if err == nil || strings.Contains(out, "every node is back") || !strings.Contains(errOut, "going back failed on c") || !strings.Contains(errOut, "version 4 still runs on a, b, c") {
		t.Fatalf("undo --force of a version with no way back: err=%v\n%s%s", err, out, errOut)
	}
	for name, addr := range dc.ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v4" || got.Count != 1 {
			t.Fatalf("duck on %s after a failed going back: %+v %v; want v4 with its count", name, got, err)
		}
	}
	if r := rolloutOf(t, dc.c, dc.nodes[0].API).Rollout; r.State != rollout.Halted {
		t.Fatalf("rollout after a failed going back: %s (%s), want halted", r.State, r.Reason)
	}
}

func TestCanaryWaitsForResume(t *testing.T) {
	dc := newDuckCluster(t)
	// As many canaries as nodes would leave none to wait: refused, nothing committed.
	if _, errOut, err := tryCLI(dc.c, dc.nodes[0].API, "deploy", "--canary=3", "../testdata/duck-v2"); err == nil || !strings.Contains(errOut, "--canary 3: the cluster has 3 nodes") {
		t.Fatalf("deploy --canary=3 on three nodes: err=%v\n%s", err, errOut)
	}
	out := cliPaused(t, dc.c, dc.nodes[0].API, "deploy", "--canary", "../testdata/duck-v2")
	if !strings.Contains(out, "paused") {
		t.Fatalf("canary deploy printed:\n%s", out)
	}
	versions := func() string {
		var vs []string
		for _, n := range []string{"a", "b", "c"} {
			got, _ := askDuck("GET", dc.ducks[n])
			vs = append(vs, got.Version)
		}
		return strings.Join(vs, ",")
	}
	if v := versions(); v != "v2,v1,v1" {
		t.Fatalf("after the canary the ducks run %s, want v2 on the first node only", v)
	}
	// The same source again, with another message, while it is paused: nothing new is
	// committed, and it says so (it printed "committed version 2" and dropped the flags).
	if out := cliPaused(t, dc.c, dc.nodes[1].API, "deploy", "-m", "again", "--canary=2", "../testdata/duck-v2"); !strings.Contains(out, "version 2 (") || !strings.Contains(out, "is this source, already committed and its rollout under way: nothing new committed") {
		t.Fatalf("deploying the paused version's source again printed:\n%s", out)
	}
	cli(t, dc.c, dc.nodes[2].API, "rollout", "resume")
	if v := versions(); v != "v2,v2,v2" {
		t.Fatalf("after resume the ducks run %s", v)
	}
}

// The leader is killed once the first node has finished its turn (its own turn, when it is a):
// a new leader carries on from the log, and no survivor swaps twice.
func TestLeaderKilledMidRolloutRolloutCompletesOnce(t *testing.T) {
	dc := newDuckCluster(t)
	leader := leaderOf(members(dc.c, dc.nodes[0].API))
	var lead, via *localcluster.Node
	var survivors []*localcluster.Node
	for _, n := range dc.nodes {
		if n.Name == leader {
			lead = n
			continue
		}
		survivors = append(survivors, n)
	}
	if lead == nil {
		t.Fatalf("no leader: %s", view(members(dc.c, dc.nodes[0].API)))
	}
	via = survivors[0]
	cli(t, dc.c, via.API, "deploy", "--detach", "../testdata/duck-v2")
	waitFor(t, "a to finish its turn", 60*time.Second, func() bool {
		r := rolloutOf(t, dc.c, via.API).Rollout
		return r.Version == 2 && r.Nodes["a"].Phase == rollout.Running
	})
	lead.Kill()
	waitFor(t, "the rollout to complete under a new leader", 60*time.Second, func() bool {
		r := rolloutOf(t, dc.c, via.API).Rollout
		return r.State == rollout.Done
	})
	for _, n := range survivors {
		var ds []api.DuckInfo
		json.Unmarshal([]byte(cli(t, dc.c, n.API, "ducks", "--local", "--json")), &ds)
		if len(ds) != 1 || ds[0].Version != "v2" || ds[0].Gen != 2 {
			t.Fatalf("ducks on %s: %+v; want one duck on v2 swapped exactly once (generation 2)", n.Name, ds)
		}
	}
	t.Logf("leader %s killed once a had run v2", lead.Name)
}

func TestNodeDownDuringCommitCatchesUp(t *testing.T) {
	dc := newDuckCluster(t)
	c := dc.nodes[2]
	if err := c.Stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := tryCLI(dc.c, dc.nodes[0].API, "deploy", "../testdata/duck-v2")
	if err == nil || !strings.Contains(errOut, "c was down and skipped") {
		t.Fatalf("deploy with c down: err=%v\n%s", err, errOut)
	}
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c's duck to catch up to v2", 60*time.Second, func() bool {
		got, err := askDuck("GET", dc.ducks["c"])
		return err == nil && got.Version == "v2"
	})
}

func TestNodeThatJoinsLaterGetsTheVersionAndSameBundleIsNotNew(t *testing.T) {
	dc := newDuckCluster(t)
	_, errOut, err := tryCLI(dc.c, dc.nodes[1].API, "deploy", "../duck")
	if err == nil || !strings.Contains(errOut, "already runs") {
		t.Fatalf("deploying the running bundle again: err=%v\n%s", err, errOut)
	}
	if vs := rolloutOf(t, dc.c, dc.nodes[0].API).Versions; len(vs) != 1 {
		t.Fatalf("%d versions after deploying the same bundle twice", len(vs))
	}
	d, err := dc.c.Start("d")
	if err != nil {
		t.Fatal(err)
	}
	cli(t, dc.c, d.API, "connect", dc.nodes[0].API)
	waitFor(t, "d to build and run version 1", 60*time.Second, func() bool {
		var st api.Status
		out, _, err := tryCLI(dc.c, d.API, "status", "--json")
		if err != nil || json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		for _, n := range st.Nodes {
			if n.Member.Name == "d" {
				return n.Local != nil && n.Local.Label == "v1"
			}
		}
		return false
	})
	// And d can run a duck at once, with the cluster's code.
	out := cli(t, dc.c, d.API, "spawn", "--detach")
	if !strings.Contains(out, "(version v1)") {
		t.Fatalf("spawn on d printed %q", out)
	}
}

// A node that joins while a rollout is under way is not in its order (fixed at the commit): it
// takes the version the cluster runs, and the new one once the rollout has ended, never in
// between.
func TestNodeThatJoinsMidRolloutGetsTheVersionAfterIt(t *testing.T) {
	dc := newDuckCluster(t)
	d, err := dc.c.Start("d")
	if err != nil {
		t.Fatal(err)
	}
	// Each turn lasts the 2 s healthy wait: six seconds for three nodes, and d connects at once.
	cli(t, dc.c, dc.nodes[0].API, "deploy", "--detach", "--healthy", "2s", "../testdata/duck-v2")
	cli(t, dc.c, d.API, "connect", dc.nodes[1].API)
	sawActive := false
	waitFor(t, "d to run version 2", 60*time.Second, func() bool {
		var st api.Status
		out, _, err := tryCLI(dc.c, d.API, "status", "--json")
		if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Rollout.Rollout == nil {
			return false
		}
		r := st.Rollout.Rollout
		for _, n := range st.Nodes {
			if n.Member.Name != "d" || n.Local == nil {
				continue
			}
			if r.Version == 2 && r.Active() {
				sawActive = true
				if n.Local.Label == "v2" {
					t.Fatalf("d runs v2 while version 2 is still %s", r.State)
				}
			}
			return n.Local.Label == "v2" && r.State == rollout.Done
		}
		return false
	})
	if !sawActive {
		t.Fatal("d never saw version 2 under way: it joined too late for the case this test is for")
	}
	r := rolloutOf(t, dc.c, d.API).Rollout
	if slices.Contains(r.Order, "d") {
		t.Fatalf("d joined the order of a rollout under way: %v", r.Order)
	}
}

// Waves by a label the nodes were started with, two nodes of a wave at a time, the order
// natural inside each wave and shown to every node at the commit.
func TestWavesByLabelGoOneAfterTheOther(t *testing.T) {
	c := emptyCluster(t)
	zones := map[string]string{"n1": "eu-2", "n2": "eu-10", "n3": "eu-2", "n10": "eu-10"}
	var nodes []*localcluster.Node
	for _, name := range []string{"n1", "n2", "n3", "n10"} {
		n, err := c.Start(name, "--label", "zone="+zones[name])
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	connectAll(t, c, nodes)
	// A label no node has is refused before anything is committed, naming the labels there are.
	if _, errOut, err := tryCLI(c, nodes[0].API, "deploy", "--wave-by", "rack", "../duck"); err == nil || !strings.Contains(errOut, `no node has the label "rack" (the nodes' labels are zone)`) {
		t.Fatalf("deploy --wave-by rack: err=%v\n%s", err, errOut)
	}
	out := cli(t, c, nodes[1].API, "deploy", "--wave-by", "zone", "--max-parallel", "2", "../duck")
	if !strings.Contains(out, "runs on every node") {
		t.Fatalf("deploy printed:\n%s", out)
	}
	for _, n := range nodes {
		r := rolloutOf(t, c, n.API).Rollout
		if got := strings.Join(r.Order, ","); got != "n1,n3,n2,n10" {
			t.Fatalf("%s sees the order %s, want n1,n3,n2,n10 (waves eu-2 then eu-10, natural order inside)", n.Name, got)
		}
		if r.Nodes["n3"].Wave != 0 || r.Nodes["n2"].Wave != 1 {
			t.Fatalf("%s sees waves %+v", n.Name, r.Nodes)
		}
	}
	r := rolloutOf(t, c, nodes[0].API).Rollout
	for _, late := range []string{"n2", "n10"} {
		for _, early := range []string{"n1", "n3"} {
			if r.Nodes[late].Granted.Before(r.Nodes[early].Done) {
				t.Errorf("%s (second wave) granted at %s, before %s (first wave) was done at %s", late, r.Nodes[late].Granted, early, r.Nodes[early].Done)
			}
		}
	}
	status := cli(t, c, nodes[0].API, "rollout", "status")
	if !strings.Contains(status, "waves by zone") || !strings.Contains(status, "2 at once") {
		t.Errorf("rollout status does not show the policy:\n%s", status)
	}

	// Wave by wave: a pause asked for while the first wave is under way (its turns each last
	// the 2 s healthy wait) waits for that wave to end; resume --one-wave runs the next.
	cli(t, c, nodes[0].API, "deploy", "--detach", "--wave-by", "zone", "--max-parallel", "2", "--healthy", "2s", "../testdata/duck-v2")
	if out := cli(t, c, nodes[2].API, "rollout", "pause", "--after-wave"); !strings.Contains(out, "pauses once the wave under way has ended") {
		t.Fatalf("pause --after-wave printed:\n%s", out)
	}
	if status := cli(t, c, nodes[1].API, "rollout", "status"); !strings.Contains(status, "pauses when wave 1 has ended, as asked") && !strings.Contains(status, "paused") {
		t.Errorf("rollout status does not show the pause to come:\n%s", status)
	}
	waitFor(t, "version 2 paused", 30*time.Second, func() bool {
		return rolloutOf(t, c, nodes[3].API).Rollout.State == rollout.Paused
	})
	r = rolloutOf(t, c, nodes[3].API).Rollout
	if r.Nodes["n1"].Phase != rollout.Running || r.Nodes["n3"].Phase != rollout.Running || !r.Nodes["n2"].Granted.IsZero() || !r.Nodes["n10"].Granted.IsZero() || !strings.Contains(r.Reason, "wave 1 ended: paused as asked") {
		t.Fatalf("paused with %+v (%s); want the first wave done and the second not started", r.Nodes, r.Reason)
	}
	if out := cli(t, c, nodes[0].API, "rollout", "resume", "--one-wave"); !strings.Contains(out, "resumed for one wave") || !strings.Contains(out, "version 2 runs on every node") {
		t.Fatalf("resume --one-wave of the last wave printed:\n%s", out)
	}
	if _, errOut, err := tryCLI(c, nodes[0].API, "rollout", "undo", "--one-wave"); err == nil || !strings.Contains(errOut, "--one-wave with 'rollout resume'") {
		t.Fatalf("undo --one-wave: err=%v\n%s", err, errOut)
	}
}

// Every node builds from source with its own toolchain: with --same-binary a node whose
// toolchain made another binary (here a go that says it is another version and strips its
// binaries) halts the rollout, naming the nodes and their toolchains; without it, rollout status
// shows how many binaries the version has.
func TestToolchainDriftIsShownAndHaltsWithSameBinary(t *testing.T) {
	real, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	drift := filepath.Join(t.TempDir(), "go")
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = env ] && [ \"$2\" = GOVERSION ]; then echo go1.99-drift; exit 0; fi\nif [ \"$1\" = build ]; then shift; exec %q build -ldflags=-s \"$@\"; fi\nexec %q \"$@\"\n", real, real)
	if err := os.WriteFile(drift, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	c := emptyCluster(t)
	var nodes []*localcluster.Node
	for _, name := range []string{"a", "b", "c"} {
		var extra []string
		if name == "c" {
			extra = []string{"--go", drift}
		}
		n, err := c.Start(name, extra...)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	connectAll(t, c, nodes)
	cli(t, c, nodes[0].API, "deploy", "../duck")
	status := cli(t, c, nodes[0].API, "rollout", "status")
	if !strings.Contains(status, "2 distinct binaries") || !strings.Contains(status, "go1.99-drift (1 node(s))") {
		t.Fatalf("rollout status does not show the drift:\n%s", status)
	}
	if st := cli(t, c, nodes[1].API, "status"); !strings.Contains(st, "2 distinct binaries") {
		t.Fatalf("status does not show the drift:\n%s", st)
	}
	_, errOut, err := tryCLI(c, nodes[0].API, "deploy", "--same-binary", "../testdata/duck-v2")
	if err == nil || !strings.Contains(errOut, "c failed") || !strings.Contains(errOut, "go1.99-drift") || !strings.Contains(errOut, "a, b built") {
		t.Fatalf("deploy --same-binary with c's toolchain drifting: err=%v\n%s", err, errOut)
	}
}

// --auto-promote-after promotes the canaries once they stayed healthy that long, and only
// then: a canary whose duck crashes after its turn ended (after the healthy wait) sends the
// rollout back instead of taking every node with it. The log alone said only that the
// canary's turn had ended well, and it was promoted.
func TestAutoPromotionAsksTheCanariesHowTheirDucksAre(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	cli(t, c, nodes[0].API, "deploy", "../duck")
	ducks := map[string]string{}
	for _, n := range nodes {
		var id, addr string
		// duck and duck-v2 ignore DUCK_CRASH_AFTER; duck-flaky dies that long after Ready.
		out := cli(t, c, n.API, "spawn", "--detach", "--env", "DUCK_CRASH_AFTER=1500ms")
		if _, err := fmt.Sscanf(out, "%s on "+n.Name+" serving http://%s", &id, &addr); err != nil {
			t.Fatalf("spawn on %s printed %q", n.Name, out)
		}
		ducks[n.Name] = addr
	}
	state := func() (*rollout.Rollout, string) {
		r := rolloutOf(t, c, nodes[1].API).Rollout
		return r, fmt.Sprintf("version %d %s (%s)", r.Version, r.State, r.Reason)
	}

	// A healthy canary: paused, then promoted by itself, every node upgraded; the deploy follows
	// it to the end (it exited 0 at the pause, before the verdict).
	if out := cli(t, c, nodes[0].API, "deploy", "--canary", "1", "--auto-promote-after", "2s", "../testdata/duck-v2"); !strings.Contains(out, "paused") || !strings.Contains(out, "version 2 runs on every node") {
		t.Fatalf("canary deploy printed:\n%s", out)
	}
	if r, last := state(); r.Version != 2 || r.State != rollout.Done {
		t.Fatalf("after the deploy returned: %s", last)
	}
	for name, addr := range ducks {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v2" {
			t.Fatalf("duck on %s after the promotion: %+v, %v", name, got, err)
		}
	}

	// A canary whose duck crashes 1.5 s after Ready: its turn ends well (healthy wait 200 ms),
	// and the promotion 4 s on finds the duck restarted.
	out, errOut, err := tryCLI(c, nodes[0].API, "deploy", "--canary", "1", "--auto-promote-after", "4s", "../runtime/supervise/testdata/duck-flaky")
	if err == nil || !strings.Contains(out, "paused") || !strings.Contains(errOut, "canary a is not healthy") {
		t.Fatalf("canary deploy of duck-flaky: err=%v, want it to fail with the canary's verdict\n%s%s", err, out, errOut)
	}
	r, last := state()
	if r.State != rollout.WentBack || !strings.Contains(r.Reason, "canary a is not healthy, not promoted: duck-1") {
		t.Fatalf("after a crashing canary: %s, want reverted naming a's duck", last)
	}
	for _, n := range []string{"b", "c"} {
		if !r.Nodes[n].Granted.IsZero() {
			t.Fatalf("%s took its turn after a crashing canary: %+v", n, r.Nodes[n])
		}
	}
	waitFor(t, "a's duck back on v2", 20*time.Second, func() bool {
		got, err := askDuck("GET", ducks["a"])
		return err == nil && got.Version == "v2"
	})

	// The same canary promoted by hand: once its duck has crashed, `rollout status` says so
	// and `rollout resume` refuses to spread it, unless forced.
	if out := cliPaused(t, c, nodes[0].API, "deploy", "--canary", "1", "../runtime/supervise/testdata/duck-flaky"); !strings.Contains(out, "paused") {
		t.Fatalf("manual canary deploy of duck-flaky printed:\n%s", out)
	}
	var status string
	waitFor(t, "rollout status to call canary a not healthy", 20*time.Second, func() bool {
		status = cli(t, c, nodes[2].API, "rollout", "status")
		return strings.Contains(status, "canary a: NOT HEALTHY: duck-1 crashed")
	})
	_, errOut, err = tryCLI(c, nodes[1].API, "rollout", "resume")
	if err == nil || !strings.Contains(errOut, "canary a is not healthy: duck-1 crashed") || !strings.Contains(errOut, "--force") {
		t.Fatalf("resume past a crashing canary: err=%v\n%s\nstatus was:\n%s", err, errOut, status)
	}
	if r, last := state(); r.State != rollout.Paused || !r.Nodes["b"].Granted.IsZero() {
		t.Fatalf("a refused resume moved the rollout: %s", last)
	}
	cli(t, c, nodes[1].API, "rollout", "resume", "--force", "--json")
	if r, last := state(); r.State == rollout.Paused {
		t.Fatalf("resume --force left the rollout paused: %s", last)
	}
}

// A rollout is done once every node's ducks stayed up for the healthy wait; a duck that crashes
// after it was shown only in `status`'s DUCKS column while deploy said the version ran
// everywhere. deploy now warns, naming the node and the crash (the rollout stays done).
func TestDeployWarnsOfDucksThatCrashedAfterTheirTurn(t *testing.T) {
	c, nodes := newCluster(t, "a", "b", "c")
	connectAll(t, c, nodes)
	cli(t, c, nodes[0].API, "deploy", "../duck")
	for _, n := range nodes {
		// duck ignores DUCK_CRASH_AFTER; duck-flaky dies that long after Ready.
		cli(t, c, n.API, "spawn", "--detach", "--env", "DUCK_CRASH_AFTER=1500ms")
	}
	out, errOut, err := tryCLI(c, nodes[0].API, "deploy", "--healthy", "1s", "../runtime/supervise/testdata/duck-flaky")
	if err != nil || !strings.Contains(out, "version 2 runs on every node") {
		t.Fatalf("deploy of duck-flaky: err=%v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(errOut, "warning: on a, duck-1 ") || !strings.Contains(errOut, "exit status 4") || !strings.Contains(errOut, "`logs --on a`") {
		t.Fatalf("deploy said nothing of a's duck, which crashed 1.5 s after its turn's Ready:\n%s%s", out, errOut)
	}
}

// TestATurnPastItsDeadlineLeavesNoDuckOnTheVersion: a node with three ducks takes a version
// whose ducks need two seconds each to come up, under a progress deadline of three seconds. The
// deadline ends the node's wait for its second duck's swap, not the swap: that duck came up on
// the new version after the node had gone back, and stayed there for good (found by an outside
// probe, 4 runs of 4). Every duck ends on the version the node went back to, with its count.
func TestATurnPastItsDeadlineLeavesNoDuckOnTheVersion(t *testing.T) {
	dc := newDuckCluster(t)
	a := dc.nodes[0]
	addrs := []string{dc.ducks[a.Name]}
	for range 2 {
		var id, addr string
		out := cli(t, dc.c, a.API, "spawn", "--detach")
		if _, err := fmt.Sscanf(out, "%s on "+a.Name+" serving http://%s", &id, &addr); err != nil {
			t.Fatalf("spawn on %s printed %q", a.Name, out)
		}
		addrs = append(addrs, addr)
	}
	for _, addr := range addrs {
		if _, err := askDuck("POST", addr); err != nil {
			t.Fatal(err)
		}
	}
	_, errOut, err := tryCLI(dc.c, a.API, "deploy", "--progress-deadline", "3s", "../testdata/duck-slow")
	if err == nil {
		t.Fatalf("deploy past the progress deadline succeeded:\n%s", errOut)
	}
	t.Logf("deploy: %s", errOut)
	// The swap the deadline cut off ends within its ready timeout, and then goes back.
	for _, addr := range addrs {
		var got duckReply
		waitFor(t, "the duck at "+addr+" to be back on v1", 60*time.Second, func() bool {
			got, err = askDuck("GET", addr)
			return err == nil && got.Version == "v1"
		})
		if got.Count != 1 {
			t.Errorf("duck at %s counts %d after going back, want 1", addr, got.Count)
		}
	}
	// And stays there: nothing still under way brings one forward again.
	time.Sleep(3 * time.Second)
	for _, addr := range addrs {
		if got, err := askDuck("GET", addr); err != nil || got.Version != "v1" {
			t.Errorf("duck at %s a moment later: %+v, %v; want v1", addr, got, err)
		}
	}
}

// TestACanaryThatLeftIsNamedAtResume: a canary forgotten while the rollout waits for `rollout
// resume` was "cannot tell whether canary a is healthy (a has no API address in the log): try
// again in a moment", for good (found by an outside probe). It is named as no longer a member,
// with what to do.
func TestACanaryThatLeftIsNamedAtResume(t *testing.T) {
	dc := newDuckCluster(t)
	a, b := dc.nodes[0], dc.nodes[1]
	cliPaused(t, dc.c, a.API, "deploy", "--canary", "../testdata/duck-v2")
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to be forgotten", 30*time.Second, func() bool {
		_, _, err := tryCLI(dc.c, b.API, "forget", "a")
		return err == nil
	})
	_, errOut, err := tryCLI(dc.c, b.API, "rollout", "resume")
	if err == nil || !strings.Contains(errOut, "canary a is not healthy: it is no longer a member of the cluster") || !strings.Contains(errOut, "--force") {
		t.Fatalf("resume past a canary that was forgotten: err=%v\n%s", err, errOut)
	}
}
