package systemtest

import (
	"context"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

// scaleNodes is how many nodes TestHundredNodes starts: 100, or DUCKRAFT_SCALE_NODES.
func scaleNodes(t *testing.T) int {
	s := os.Getenv("DUCKRAFT_SCALE_NODES")
	if s == "" {
		return 100
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 3 {
		t.Fatalf("DUCKRAFT_SCALE_NODES=%q: give a number of nodes, 3 or more", s)
	}
	return n
}

// A hundred real node processes on this machine, five of them voters, a duck on each under
// keep-alive load; a one-line change rolls out in waves of 20%: every node upgraded, no request
// failed, every count exact.
func TestHundredNodes(t *testing.T) {
	size := scaleNodes(t)
	c := emptyCluster(t)
	ctx := context.Background()
	var names []string
	for i := 1; i <= size; i++ {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	t0 := time.Now()
	nodes, err := c.StartMany(names, 8)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ConnectAll(ctx, nodes, 4); err != nil {
		t.Fatal(err)
	}
	first := nodes[0]
	waitFor(t, fmt.Sprintf("%d members, 5 voters", size), 120*time.Second, func() bool {
		ms := members(c, first.API)
		v, _ := suffrages(ms)
		return len(ms) == size && len(v) == min(5, size)
	})
	t.Logf("%d nodes started and connected in %s", size, time.Since(t0).Round(time.Millisecond))
	// Only the voters sync their log at every entry; the rest do not, or every commit waits
	// behind a hundred fsyncs on the one disk.
	waitFor(t, "every voter's log synced, every non-voter's not", 30*time.Second, func() bool {
		for _, m := range members(c, first.API) {
			if m.Log != map[bool]string{true: "synced", false: "unsynced"}[m.Suffrage == "voter"] {
				return false
			}
		}
		return true
	})

	if out, errOut, err := c.Run(ctx, first.API, "deploy", "--max-parallel", "20%", "../duck"); err != nil {
		t.Fatalf("first deploy: %v\n%s%s", err, out, errOut)
	}
	ducks, err := c.SpawnEach(ctx, nodes, 8, "DUCK_INTERVAL=10s")
	if err != nil {
		t.Fatal(err)
	}
	for name, addr := range ducks {
		if _, err := askDuck("POST", addr); err != nil {
			t.Fatalf("duck on %s: %v", name, err)
		}
	}
	l := startLoadEvery(ducks, 200*time.Millisecond)
	defer l.stopOnce()

	dir := filepath.Join(t.TempDir(), "duck")
	src, err := os.ReadFile("../duck/main.go")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(dir, 0o700)
	changed := strings.Replace(string(src), `"Quack! #`, `"Quack at scale! #`, 1)
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	out, errOut, err := c.Run(ctx, nodes[size/2].API, "deploy", "--max-parallel", "20%", "--healthy", "200ms", dir)
	took := time.Since(t1)
	if err != nil || !strings.Contains(out, "runs on every node") {
		t.Fatalf("deploy of the one-line change: %v\n%s%s", err, out, errOut)
	}
	// From the node the deploy went through, which has seen the end; another node may learn of
	// it a moment later.
	var v api.RolloutView
	if err := c.Do(ctx, nodes[size/2].API, "GET", "/v1/rollout", nil, &v); err != nil {
		t.Fatal(err)
	}
	r := v.Rollout
	if r.State != rollout.Done || r.Order[1] != "n2" || r.Order[9] != "n10" {
		t.Fatalf("rollout %s, order starts %v", r.State, r.Order[:min(10, len(r.Order))])
	}
	// Where the time went: the builds, then the turns (at most a fifth of the nodes at once).
	var lastBuilt time.Time
	var turns []time.Duration
	for _, name := range r.Order {
		nr := r.Nodes[name]
		if nr.Built.After(lastBuilt) {
			lastBuilt = nr.Built
		}
		turns = append(turns, nr.Done.Sub(nr.Granted))
	}
	t.Logf("last node built %s after the commit", lastBuilt.Sub(r.Started).Round(time.Millisecond))
	for i := 0; i < len(r.Order); i += max(1, len(r.Order)/10) {
		nr := r.Nodes[r.Order[i]]
		t.Logf("%s: granted at %s, running at %s", r.Order[i], nr.Granted.Sub(r.Started).Round(time.Millisecond), nr.Done.Sub(r.Started).Round(time.Millisecond))
	}
	slices.Sort(turns)
	t.Logf("a node's turn, grant to running: p50 %s, p90 %s, max %s", turns[len(turns)/2].Round(time.Millisecond), turns[len(turns)*9/10].Round(time.Millisecond), turns[len(turns)-1].Round(time.Millisecond))
	for name, addr := range ducks {
		got, err := askDuck("GET", addr)
		if err != nil || got.Version != "v2" {
			t.Fatalf("duck on %s: %+v %v; want v2", name, got, err)
		}
	}
	t2 := time.Now()
	if _, errOut, err := c.Run(ctx, first.API, "status"); err != nil {
		t.Fatalf("status: %v %s", err, errOut)
	}
	statusTook := time.Since(t2)
	l.finish()
	t.Logf("%d nodes: deploy in waves of 20%% took %s (commit to all running %s); status took %s; %d requests failed, %d served",
		size, took.Round(time.Millisecond), r.Ended.Sub(r.Started).Round(time.Millisecond), statusTook.Round(time.Millisecond), l.failed.Load(), l.total())
	if n := l.failed.Load(); n != 0 {
		var errs []string
		l.errs.Range(func(k, v any) bool { errs = append(errs, fmt.Sprint(v, ": ", k)); return len(errs) < 5 })
		t.Errorf("%d requests failed across the rollout, e.g. %v", n, errs)
	}
	dc := &duckCluster{c: c, nodes: nodes, ducks: ducks}
	checkNothingLost(t, dc, l)
}
