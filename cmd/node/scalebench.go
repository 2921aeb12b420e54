package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/localcluster"
	"github.com/duckraft/duckraft/rollout"
)

// scaleFigures is what one cluster size costs.
type scaleFigures struct {
	nodes, voters        int
	startConnect         time.Duration
	rollout              time.Duration // commit to all running, waves of 20%
	leaderIdleCPU        float64       // share of one core, idle cluster
	clusterIdleCPU       float64       // cores, every node together, idle cluster
	leaderRolloutCPU     float64       // share of one core, during the rollout
	clusterRolloutCPU    float64       // cores, every node together, during the rollout
	leaderRSS            string
	leaderName           string // the node measured as the leader
	commitP50, commitP99 string
	commitN              int           // commits timed
	status               time.Duration // `status` as a user runs it, median of 3
	timeline             rolloutTimeline
	ducks                bool  // a duck on each node, under load during the rollout
	served, failed       int64 // the ducks' requests during the rollout
	exact                bool  // every duck's count is the POSTs it answered
}

// The load on the ducks during the rollout: one keep-alive client per duck, a POST every
// 200 ms, 500 requests a second at a hundred nodes.
const scaleLoadEvery = 200 * time.Millisecond

// rolloutTimeline is where the time of a rollout went, from the leader's stamps in the log.
type rolloutTimeline struct {
	lastBuilt  time.Duration   // commit to the last node's built report
	firstGrant time.Duration   // commit to the first grant
	turns      []time.Duration // each node's turn: its grant to its running report
	// gaps is, for each node granted after another's turn ended, the time from the last
	// running report before its grant to the grant: what a slot waits between two turns.
	gaps []time.Duration
}

// timelineOf reads where the time of rollout r went.
func timelineOf(r *rollout.Rollout) rolloutTimeline {
	tl := rolloutTimeline{firstGrant: r.Ended.Sub(r.Started)}
	for _, nr := range r.Nodes {
		if !nr.Built.IsZero() {
			tl.lastBuilt = max(tl.lastBuilt, nr.Built.Sub(r.Started))
		}
		if !nr.Granted.IsZero() {
			tl.firstGrant = min(tl.firstGrant, nr.Granted.Sub(r.Started))
			if !nr.Done.IsZero() {
				tl.turns = append(tl.turns, nr.Done.Sub(nr.Granted))
			}
		}
	}
	for _, nr := range r.Nodes {
		var last time.Time
		for _, o := range r.Nodes {
			if o.Phase == rollout.Running && !o.Done.After(nr.Granted) && o.Done.After(last) {
				last = o.Done
			}
		}
		if !nr.Granted.IsZero() && !last.IsZero() {
			tl.gaps = append(tl.gaps, nr.Granted.Sub(last))
		}
	}
	return tl
}

// runScaleBench starts clusters of each size in turn on this machine and measures, in one run:
// commit to all running for a one-line change rolled out in waves of 20% with a 200 ms healthy
// wait, the leader's CPU (idle and during the rollout) and memory, Raft commit latency with that
// many members, and the time of `status`. With ducks, each node runs one under keep-alive load
// during the rollout (the healthy wait is then the ducks' own); without, the figures are what the
// protocol and the builds cost alone.
func runScaleBench(sizes []int, commits int, ducks bool, keep string) error {
	var all []scaleFigures
	for _, size := range sizes {
		fmt.Fprintf(os.Stderr, "%d nodes ...\n", size)
		f, err := benchSize(size, commits, ducks, keep)
		if err != nil {
			return fmt.Errorf("%d nodes: %w", size, err)
		}
		all = append(all, f)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "machine\t%d cores, %s/%s, %s\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprint(tw, "nodes")
	for _, f := range all {
		fmt.Fprintf(tw, "\t%d", f.nodes)
	}
	fmt.Fprintln(tw)
	row := func(name string, cell func(scaleFigures) string) {
		fmt.Fprint(tw, name)
		for _, f := range all {
			fmt.Fprintf(tw, "\t%s", cell(f))
		}
		fmt.Fprintln(tw)
	}
	row("voters", func(f scaleFigures) string { return strconv.Itoa(f.voters) })
	row("ducks", func(f scaleFigures) string {
		if !f.ducks {
			return "none"
		}
		return "one a node, POST every " + scaleLoadEvery.String()
	})
	row("start and connect", func(f scaleFigures) string { return f.startConnect.Round(100 * time.Millisecond).String() })
	row("commit to all running (waves of 20%, healthy 200ms)", func(f scaleFigures) string { return f.rollout.Round(10 * time.Millisecond).String() })
	row("  commit to the last node built", func(f scaleFigures) string { return f.timeline.lastBuilt.Round(10 * time.Millisecond).String() })
	row("  commit to the first grant", func(f scaleFigures) string { return f.timeline.firstGrant.Round(10 * time.Millisecond).String() })
	row("  a node's turn, grant to running, p50 / max", func(f scaleFigures) string {
		return pct(f.timeline.turns, 50) + " / " + pct(f.timeline.turns, 100)
	})
	row("  a turn's running to the next grant, p50 / max", func(f scaleFigures) string {
		return pct(f.timeline.gaps, 50) + " / " + pct(f.timeline.gaps, 100)
	})
	row("  requests failed / served during the rollout", func(f scaleFigures) string {
		if !f.ducks {
			return "-"
		}
		exact := ", counts exact"
		if !f.exact {
			exact = ", counts NOT exact"
		}
		return fmt.Sprintf("%d / %d%s", f.failed, f.served, exact)
	})
	row("leader CPU idle (share of a core)", func(f scaleFigures) string { return fmt.Sprintf("%.0f%%", 100*f.leaderIdleCPU) })
	row("all nodes' CPU idle (cores)", func(f scaleFigures) string { return fmt.Sprintf("%.2f", f.clusterIdleCPU) })
	row("leader CPU during the rollout", func(f scaleFigures) string { return fmt.Sprintf("%.0f%%", 100*f.leaderRolloutCPU) })
	row("all nodes' CPU during the rollout (cores)", func(f scaleFigures) string { return fmt.Sprintf("%.2f", f.clusterRolloutCPU) })
	row("leader memory (RSS)", func(f scaleFigures) string { return f.leaderRSS })
	row("leader measured", func(f scaleFigures) string { return f.leaderName })
	row("raft commit p50 / p99", func(f scaleFigures) string { return fmt.Sprintf("%s / %s (%d)", f.commitP50, f.commitP99, f.commitN) })
	row("status, median of 3", func(f scaleFigures) string { return f.status.Round(time.Millisecond).String() })
	return tw.Flush()
}

func benchSize(size, commits int, withDucks bool, keep string) (scaleFigures, error) {
	f := scaleFigures{nodes: size, ducks: withDucks}
	c, v1, _, err := tempCluster("duckraft-scale-")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(c.Root)
	if keep != "" {
		// After the nodes stopped (deferred calls run last first), so their logs are whole.
		defer keepLogs(filepath.Join(keep, strconv.Itoa(size)), c)
	}
	defer c.StopAll(30 * time.Second)
	ctx := context.Background()
	var names []string
	for i := 1; i <= size; i++ {
		names = append(names, "n"+strconv.Itoa(i))
	}
	t0 := time.Now()
	nodes, err := c.StartMany(names, 8)
	if err != nil {
		return f, fmt.Errorf("starting the nodes: %w", err)
	}
	if err := c.ConnectAll(ctx, nodes, 4); err != nil {
		return f, fmt.Errorf("connecting the nodes: %w", err)
	}
	var ms []api.MemberStatus
	for deadline := time.Now().Add(2 * time.Minute); ; {
		if err := c.Do(ctx, nodes[0].API, http.MethodGet, "/v1/members", nil, &ms); err == nil && len(ms) == size {
			break
		}
		if time.Now().After(deadline) {
			return f, fmt.Errorf("only %d of %d members after two minutes", len(ms), size)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.startConnect = time.Since(t0)
	var leader *localcluster.Node
	for _, m := range ms {
		if m.Suffrage == "voter" {
			f.voters++
		}
		if m.Role == "leader" {
			for _, n := range nodes {
				if n.Name == m.Name {
					leader = n
				}
			}
		}
	}
	if leader == nil {
		return f, fmt.Errorf("no leader among the members")
	}
	all := func() (sum time.Duration) {
		for _, n := range nodes {
			sum += procCPU(n.PID())
		}
		return sum
	}
	// deploy rolls dir out and returns the rollout as it ended, and the share of a core the
	// leader, and the cores all the nodes, took meanwhile.
	deploy := func(dir string) (*rollout.Rollout, float64, float64, error) {
		cpu0, all0, t0 := procCPU(leader.PID()), all(), time.Now()
		out, errOut, deployErr := c.Run(ctx, nodes[len(nodes)-1].API, "deploy", "--max-parallel", "20%", "--healthy", "200ms", dir)
		took := time.Since(t0).Seconds()
		cpu, allCPU := (procCPU(leader.PID())-cpu0).Seconds()/took, (all()-all0).Seconds()/took
		var v api.RolloutView
		err := c.Do(ctx, nodes[len(nodes)-1].API, http.MethodGet, "/v1/rollout", nil, &v)
		if keep != "" && err == nil {
			// Kept whether or not the rollout went well: a failed one is what needs reading.
			if err := writeJSON(filepath.Join(keep, strconv.Itoa(size), "rollout.json"), v.Rollout); err != nil {
				fmt.Fprintln(os.Stderr, "keeping the rollout:", err)
			}
		}
		switch {
		case deployErr != nil:
			return nil, 0, 0, fmt.Errorf("deploy: %v\n%s%s", deployErr, out, errOut)
		case err != nil:
			return nil, 0, 0, fmt.Errorf("reading the rollout: %w", err)
		}
		return v.Rollout, cpu, allCPU, nil
	}
	if _, _, _, err := deploy(v1); err != nil {
		return f, err
	}
	// Leadership may have moved while a hundred nodes joined: measure whoever leads now.
	if err := c.Do(ctx, nodes[0].API, http.MethodGet, "/v1/members", nil, &ms); err == nil {
		for _, m := range ms {
			for _, n := range nodes {
				if m.Role == "leader" && n.Name == m.Name {
					leader = n
				}
			}
		}
	}
	// Idle: what the members cost the leader with nothing to do.
	cpu0, all0, t1 := procCPU(leader.PID()), all(), time.Now()
	time.Sleep(5 * time.Second)
	f.leaderIdleCPU = (procCPU(leader.PID()) - cpu0).Seconds() / time.Since(t1).Seconds()
	f.clusterIdleCPU = (all() - all0).Seconds() / time.Since(t1).Seconds()
	dir := filepath.Join(c.Root, "src", "change")
	if err := oneLineChange(filepath.Join(v1, "main.go"), dir, strconv.FormatInt(time.Now().UnixNano(), 36), size); err != nil {
		return f, err
	}
	var load *poster
	var ducks map[string]string
	if withDucks {
		if ducks, err = c.SpawnEach(ctx, nodes, 8, "DUCK_INTERVAL=10s"); err != nil {
			return f, err
		}
		load = startPosting(ducks, 1, scaleLoadEvery)
	}
	r, cpu, allCPU, err := deploy(dir)
	if load != nil {
		load.stop()
		f.served, f.failed = load.totals()
		f.exact = countsMatch(ducks, load, nil)
	}
	if err != nil {
		return f, err
	}
	f.rollout, f.leaderRolloutCPU, f.clusterRolloutCPU, f.timeline = r.Ended.Sub(r.Started), cpu, allCPU, timelineOf(r)
	// Asked in parts, for at most a minute: at a hundred members on a busy machine, 300 commits
	// in one call outlasted the call's time limit and lost the whole run's figures.
	var samples []time.Duration
	for until := time.Now().Add(time.Minute); len(samples) < commits && time.Now().Before(until); {
		var lat api.CommitLatency
		if err := c.Do(ctx, leader.API, http.MethodPost, "/v1/bench/commit", api.CommitBench{N: min(50, commits-len(samples))}, &lat); err != nil {
			return f, fmt.Errorf("measuring commits on the leader %s: %w", leader.Name, err)
		}
		samples = append(samples, lat.Samples...)
	}
	slices.Sort(samples)
	f.commitP50, f.commitP99, f.commitN = pct(samples, 50), pct(samples, 99), len(samples)
	var took []time.Duration
	for range 3 {
		t := time.Now()
		if _, errOut, err := c.Run(ctx, nodes[len(nodes)-1].API, "status"); err != nil {
			return f, fmt.Errorf("status: %v %s", err, errOut)
		}
		took = append(took, time.Since(t))
	}
	f.status = medianOf(took)
	f.leaderRSS, f.leaderName = rss(leader.PID()), leader.Name
	return f, nil
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)/2]
}

// procCPU is the CPU time a process has used, user and system.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command may hold spaces; the fields after its closing parenthesis do not.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks
}

// keepLogs writes every node's log under dir, as NAME.log; a log that cannot be written is said
// on stderr, and the figures stand.
func keepLogs(dir string, c *localcluster.Cluster) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "keeping the nodes' logs:", err)
		return
	}
	for _, n := range c.Nodes() {
		if err := os.WriteFile(filepath.Join(dir, n.Name+".log"), []byte(n.Log()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "keeping the nodes' logs:", err)
			return
		}
	}
}

// writeJSON writes v, indented, to path, making its folder.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
