package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/localcluster"
)

// duckReply is what a duck answers on GET / and POST /quack.
type duckReply struct {
	Count   int    `json:"count"`
	Version string `json:"version"`
}

// duckClient asks ducks with a bound: a request stranded on a connection that a network cut
// left dead (no reset ever comes) fails after it rather than hanging the test for ever.
var duckClient = &http.Client{Timeout: time.Minute}

func askDuck(method, addr string) (duckReply, error) {
	req, _ := http.NewRequest(method, "http://"+addr+map[string]string{"GET": "/", "POST": "/quack"}[method], nil)
	resp, err := duckClient.Do(req)
	if err != nil {
		return duckReply{}, err
	}
	defer resp.Body.Close()
	var r duckReply
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("%s %s: %s", method, addr, resp.Status)
	}
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

func ducksOn(c *localcluster.Cluster, addr string) []api.DuckInfo {
	out, _, err := tryCLI(c, addr, "ducks", "--json")
	if err != nil {
		return nil
	}
	var ds []api.DuckInfo
	json.Unmarshal([]byte(out), &ds)
	return ds
}

// loadedVersion is the version `load` reported.
func loadedVersion(t *testing.T, out string) string {
	t.Helper()
	var v string
	if _, err := fmt.Sscanf(out, "loaded %s", &v); err != nil {
		t.Fatalf("load printed %q", out)
	}
	return strings.TrimSuffix(v, ":")
}

// Erlang's c/1 and hot reload on one node: load, spawn, load a new version, the running duck
// changes its voice and keeps its count; bad versions change nothing.
func TestLoadSpawnAndHotSwapOnOneNode(t *testing.T) {
	c, nodes := newCluster(t, "a")
	a := nodes[0]

	_, errOut, err := tryCLI(c, a.API, "spawn", "--detach")
	if err == nil || !strings.Contains(errOut, "no duck code loaded") || !strings.Contains(errOut, "load") {
		t.Fatalf("spawn before load: err=%v stderr=%q; want the UndefinedFunctionError analogue", err, errOut)
	}

	v1 := loadedVersion(t, cli(t, c, a.API, "load", "../duck"))
	out := cli(t, c, a.API, "spawn", "--detach", "--env", "DUCK_INTERVAL=100ms")
	var id, addr string
	if _, err := fmt.Sscanf(out, "%s on a serving http://%s", &id, &addr); err != nil {
		t.Fatalf("spawn printed %q", out)
	}
	waitFor(t, "the duck to quack", 10*time.Second, func() bool {
		return strings.Contains(cli(t, c, a.API, "logs", id), "Quack! #")
	})
	for range 3 {
		if _, err := askDuck("POST", addr); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := askDuck("GET", addr); err != nil || r.Count != 3 || r.Version != v1 {
		t.Fatalf("duck says %+v, %v; want count 3 at %s", r, err, v1)
	}

	// A second duck asked to serve where the first one does says which flags pick another
	// address (the duck's own words name only DUCK_ADDR, which spawn does not take).
	_, errOut, err = tryCLI(c, a.API, "spawn", "--detach", "--listen", addr)
	if err == nil || !strings.Contains(errOut, "already serves on "+addr+": spawn it with another --port or --listen") {
		t.Fatalf("spawn on a taken address: err=%v stderr=%q", err, errOut)
	}

	v2 := loadedVersion(t, cli(t, c, a.API, "load", "../testdata/duck-v2"))
	if r, err := askDuck("GET", addr); err != nil || r.Count != 3 || r.Version != v2 {
		t.Fatalf("after load of v2 the duck says %+v, %v; want count 3 at %s", r, err, v2)
	}
	waitFor(t, "the louder quack", 10*time.Second, func() bool {
		return strings.Contains(cli(t, c, a.API, "logs", "-n", "3", id), "QUACK")
	})

	// A version that does not compile: the compiler's own message, and nothing changes.
	_, errOut, err = tryCLI(c, a.API, "load", "../testdata/duck-broken")
	if err == nil || !strings.Contains(errOut, "does not compile") || !strings.Contains(errOut, "main.go:") {
		t.Fatalf("load of a broken duck: err=%v stderr=%q", err, errOut)
	}
	// A version that exits before Ready: reported with its exit, and nothing changes.
	_, errOut, err = tryCLI(c, a.API, "load", "../testdata/duck-crash")
	if err == nil || !strings.Contains(errOut, "did not come up") {
		t.Fatalf("load of a crashing duck: err=%v stderr=%q", err, errOut)
	}
	if r, err := askDuck("POST", addr); err != nil || r.Count != 4 || r.Version != v2 {
		t.Fatalf("after the bad versions the duck says %+v, %v; want count 4 at %s", r, err, v2)
	}
	ds := ducksOn(c, a.API)
	if len(ds) != 1 || ds[0].ID != id || string(ds[0].Version) != v2 || ds[0].State != "running" {
		t.Fatalf("ducks = %+v", ds)
	}

	// Ducks die with their node and come back with it, count and version kept.
	if err := a.Stop(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := askDuck("GET", addr); err == nil {
		t.Fatal("the duck outlived its node")
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the duck to come back with its node", 30*time.Second, func() bool {
		r, err := askDuck("GET", addr)
		return err == nil && r.Count == 4 && r.Version == v2
	})

	cli(t, c, a.API, "stop", id)
	if ds := ducksOn(c, a.API); len(ds) != 0 {
		t.Fatalf("ducks after stop = %+v", ds)
	}
}

// TestASpawnFromACanaryToAnotherNodeIsRefusedDuringTheRollout: Node.spawn runs the caller's
// version on the other node. During a rollout that put a duck of the canary's version on a
// node the rollout had not reached, out of its undo: `rollout undo` said every node was back
// while it ran the version undone (found by an outside probe). Refused now while the versions
// differ; a spawn between nodes on the same version goes on.
func TestASpawnFromACanaryToAnotherNodeIsRefusedDuringTheRollout(t *testing.T) {
	dc := newDuckCluster(t)
	a, b, c := dc.nodes[0], dc.nodes[1], dc.nodes[2]
	cliPaused(t, dc.c, a.API, "deploy", "--canary", "../testdata/duck-v2")
	_, errOut, err := tryCLI(dc.c, a.API, "spawn", "--on", b.Name, "--detach")
	if err == nil || !strings.Contains(errOut, "would stay out of that rollout") {
		t.Fatalf("spawn --on %s from the canary during the rollout: err=%v\n%s", b.Name, err, errOut)
	}
	out := cli(t, dc.c, c.API, "spawn", "--on", b.Name, "--detach")
	if !strings.Contains(out, "on "+b.Name+" serving") {
		t.Fatalf("spawn --on %s from %s (both on the version before) printed %q", b.Name, c.Name, out)
	}
	// A load meanwhile was reported done, then undone at the rollout's end: refused too.
	if _, errOut, err := tryCLI(dc.c, c.API, "load", "../testdata/duck-v2"); err == nil || !strings.Contains(errOut, "would be undone when it ends") {
		t.Fatalf("load on %s during the rollout: err=%v\n%s", c.Name, err, errOut)
	}
	cli(t, dc.c, a.API, "rollout", "undo")
}

// TestFollowingEveryNodesLogsTakesANodeBackAfterItReturns: `logs -f` of every node said a node
// that went away was gone, and never showed its ducks again after it came back (found by an
// outside probe). It follows the node again once it answers.
func TestFollowingEveryNodesLogsTakesANodeBackAfterItReturns(t *testing.T) {
	dc := newDuckCluster(t)
	a, b := dc.nodes[0], dc.nodes[1]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := dc.c.Command(ctx, a.API, "logs", "-f", "-n", "0")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	waitFor(t, "b's duck's lines in logs -f", 20*time.Second, func() bool { return strings.Contains(out.String(), "["+b.Name+"/") })
	if err := b.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "logs -f to say b is gone", 20*time.Second, func() bool { return strings.Contains(out.String(), "node "+b.Name+" is gone") })
	mark := len(out.String())
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b's duck's lines again after b came back", 60*time.Second, func() bool {
		return strings.Contains(out.String()[mark:], "["+b.Name+"/")
	})
}
