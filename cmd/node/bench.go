package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/duckraft/duckraft/localcluster"
)

// runBench starts a local three-node cluster and measures, in one run and under the same load:
// swaps during rollouts against a stop-and-start restart of the same ducks, rollout time, Raft
// commit latency, agent memory. The figures are medians and p99s; the machine is noisy.
func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	rounds := fs.Int("rounds", 5, "rollouts (and restarts) to measure")
	clients := fs.Int("clients", 3, "keep-alive clients per duck")
	every := fs.Duration("every", 5*time.Millisecond, "pause between one client's requests")
	commits := fs.Int("commits", 300, "Raft commits to time")
	healthy := fs.Duration("healthy", 200*time.Millisecond, "the healthy wait of each swap (the nodes' --healthy and the rollouts' policy)")
	sizes := fs.String("nodes", "", "instead: measure clusters of these sizes in turn, e.g. 3,30,100 (commit to all running in waves of 20%, leader CPU and memory, Raft commits, status)")
	keep := fs.String("keep", "", "with --nodes: write every node's log and the rollout as it ended (JSON) under this folder, one subfolder per size, to read where a slow run's time went")
	withDucks := fs.Bool("ducks", true, "with --nodes: a duck on each node, under keep-alive load while the rollout runs (false: what the protocol and the builds cost alone)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *keep != "" && *sizes == "" {
		return usageError{"--keep goes with --nodes: it keeps the nodes' logs of the cluster sizes measured"}
	}
	if *sizes != "" {
		var ns []int
		for _, s := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 {
				return usageError{fmt.Sprintf("--nodes %q: give cluster sizes such as 3,30,100", *sizes)}
			}
			ns = append(ns, n)
		}
		return runScaleBench(ns, *commits, *withDucks, *keep)
	}
	c, v1, _, err := tempCluster("duckraft-bench-")
	if err != nil {
		return err
	}
	root := c.Root
	defer os.RemoveAll(root)
	defer c.StopAll(20 * time.Second)
	ctx := context.Background()
	run := func(addr string, args ...string) (string, error) {
		out, errOut, err := c.Run(ctx, addr, args...)
		if err != nil {
			return out, fmt.Errorf("%s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out, nil
	}

	fmt.Fprintln(os.Stderr, "starting three nodes, deploying the duck, a duck on each node ...")
	var nodes []*localcluster.Node
	for _, name := range []string{"a", "b", "c"} {
		n, err := c.Start(name, "--healthy", healthy.String())
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes[1:] {
		if _, err := run(n.API, "connect", nodes[0].API); err != nil {
			return err
		}
	}
	if _, err := run(nodes[0].API, "deploy", v1); err != nil {
		return err
	}
	ducks := map[string]string{}
	for _, n := range nodes {
		out, err := run(n.API, "spawn", "--detach", "--env", "DUCK_INTERVAL=1s")
		if err != nil {
			return err
		}
		ducks[n.Name] = spawnedAddr(out, n.Name)
	}

	// Raft: the leader commits empty entries one after another.
	fmt.Fprintln(os.Stderr, "timing Raft commits ...")
	var lat api.CommitLatency
	if err := c.Do(ctx, nodes[0].API, http.MethodPost, "/v1/bench/commit", api.CommitBench{N: *commits}, &lat); err != nil {
		return err
	}

	// Rollouts under load: each round commits a one-line change.
	fmt.Fprintf(os.Stderr, "%d rollouts under load ...\n", *rounds)
	swapLoad := startPosting(ducks, *clients, *every)
	var rolloutTimes, swapTimes, buildTimes []time.Duration
	nonce := strconv.FormatInt(time.Now().UnixNano(), 36)
	for i := range *rounds {
		dir := filepath.Join(root, "src", "round"+strconv.Itoa(i))
		if err := oneLineChange(filepath.Join(v1, "main.go"), dir, nonce, i); err != nil {
			return err
		}
		if _, err := run(nodes[i%3].API, "deploy", "--healthy", healthy.String(), dir); err != nil {
			swapLoad.stop()
			return err
		}
		var v api.RolloutView
		if err := c.Do(ctx, nodes[0].API, http.MethodGet, "/v1/rollout", nil, &v); err != nil {
			return err
		}
		r := v.Rollout
		rolloutTimes = append(rolloutTimes, r.Ended.Sub(r.Started))
		for _, nr := range r.Nodes {
			swapTimes = append(swapTimes, nr.Done.Sub(nr.Granted))
			buildTimes = append(buildTimes, nr.Built.Sub(nr.BuildStarted))
		}
	}
	swapLoad.stop()
	swapOK, swapFailed := swapLoad.totals()
	swapExact := countsMatch(ducks, swapLoad, nil)

	// The baseline: the same ducks stopped and started again at once, as a user restarts a
	// plain process (each from the state it saved), under the same load.
	fmt.Fprintf(os.Stderr, "%d stop-and-start restarts under load ...\n", *rounds)
	before := map[string]int{}
	for name, addr := range ducks {
		before[name] = duckCount(addr)
	}
	restartLoad := startPosting(ducks, *clients, *every)
	var restartTimes []time.Duration
	for i := range *rounds {
		n := nodes[i%3]
		t, err := restartDuck(c, n, ducks[n.Name])
		if err != nil {
			restartLoad.stop()
			return err
		}
		restartTimes = append(restartTimes, t)
	}
	restartLoad.stop()
	restartOK, restartFailed := restartLoad.totals()
	restartExact := countsMatch(ducks, restartLoad, before)

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "machine\t%d cores, %s/%s, %s\t\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(tw, "load\t%d keep-alive clients per duck, 3 ducks, a POST every %s each\t\n", *clients, *every)
	fmt.Fprintln(tw, "\tduckraft swap (in rollouts)\tstop-and-start restart")
	fmt.Fprintf(tw, "time per duck, p50 / p99\t%s / %s\t%s / %s\n", pct(swapTimes, 50), pct(swapTimes, 99), pct(restartTimes, 50), pct(restartTimes, 99))
	fmt.Fprintf(tw, "failed requests\t%d of %d\t%d of %d\n", swapFailed, swapOK+swapFailed, restartFailed, restartOK+restartFailed)
	fmt.Fprintf(tw, "count = POSTs answered\t%s\t%s\n", yesNo(swapExact), yesNo(restartExact))
	fmt.Fprintf(tw, "request latency p50 / p99\t%s / %s\t%s / %s\n", pct(swapLoad.latencies, 50), pct(swapLoad.latencies, 99), pct(restartLoad.latencies, 50), pct(restartLoad.latencies, 99))
	fmt.Fprintf(tw, "rollout, commit to all running, p50 / max\t%s / %s\t\n", pct(rolloutTimes, 50), pct(rolloutTimes, 100))
	fmt.Fprintf(tw, "build of a one-line change per node, p50\t%s\t\n", pct(buildTimes, 50))
	fmt.Fprintf(tw, "raft commit on leader %s, p50 / p99 (%d)\t%s / %s\t\n", lat.Leader, len(lat.Samples), pct(lat.Samples, 50), pct(lat.Samples, 99))
	for _, n := range nodes {
		fmt.Fprintf(tw, "agent %s memory (RSS)\t%s\t\n", n.Name, rss(n.PID()))
	}
	return tw.Flush()
}

// oneLineChange writes the duck with its quack line changed, so each round is a new version:
// the run's nonce makes it one that no earlier run built either, so that "build" is a build and
// not a hit in the shared build folder.
func oneLineChange(src, dir, nonce string, round int) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	changed := strings.Replace(string(b), `"Quack! #`, fmt.Sprintf(`"Quack %s-%d! #`, nonce, round), 1)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "main.go"), []byte(changed), 0o600)
}

func duckCount(addr string) int {
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var r struct {
		Count int `json:"count"`
	}
	json.NewDecoder(resp.Body).Decode(&r)
	return r.Count
}

// countsMatch checks every duck's count against the POSTs it answered since before.
func countsMatch(ducks map[string]string, p *poster, before map[string]int) bool {
	for name, addr := range ducks {
		if duckCount(addr) != before[name]+int(p.ok[name].Load()) {
			return false
		}
	}
	return true
}

// restartDuck restarts a node's duck the way a user restarts a plain process: a graceful stop
// (it saves its state), then a start at once, no crash backoff; timed until it serves again.
func restartDuck(c *localcluster.Cluster, n *localcluster.Node, addr string) (time.Duration, error) {
	var ds []api.DuckInfo
	if err := c.Do(context.Background(), n.API, http.MethodGet, "/v1/ducks", nil, &ds); err != nil || len(ds) == 0 {
		return 0, fmt.Errorf("ducks on %s: %v", n.Name, err)
	}
	t0 := time.Now()
	if err := c.Do(context.Background(), n.API, http.MethodPost, "/v1/stop", api.StopRequest{Name: ds[0].ID, Restart: true}, nil); err != nil {
		return 0, err
	}
	for time.Since(t0) < 30*time.Second {
		if duckCount(addr) >= 0 {
			return time.Since(t0), nil
		}
		time.Sleep(time.Millisecond)
	}
	return 0, fmt.Errorf("duck on %s did not serve again within 30s", n.Name)
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s) - 1) * p / 100
	d := s[i]
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(10 * time.Millisecond).String()
}

func rss(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:"))
		}
	}
	return "?"
}
