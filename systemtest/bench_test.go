package systemtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/rollout"
)

// BenchmarkRollout measures commit to running everywhere: three real nodes started with
// --healthy 200ms, a duck on each, and per iteration `deploy` of a one-line change to duck/
// (the quack line, new every time, so every bundle is a new version and a real build, with a
// warm Go build cache). It reports medians over the iterations, in milliseconds:
//
//	deploy-ms      the deploy command, start to exit 0 (it also derives the cookie's key,
//	               packs the bundle and polls the rollout)
//	rollout-ms     the rollout's own started to ended
//	commit-to-grant-ms  started to the first node granted: the builds (a node is granted once
//	               it has built) and the reports and polls around them
//	build-ms       one node's build, built - build_started (the three build at once)
//	swap-ms        one node's turn, done - granted; it holds the 200ms healthy wait
//	handoff-ms     one node's done to the next one's granted
//	tail-ms        the last node's done to the rollout's end
//
// Every timestamp is stamped by the leader when it proposes the command (reports carry the
// leader's time), so the parts add up to rollout-ms.
func BenchmarkRollout(b *testing.B) {
	dc := newDuckCluster(b, "--healthy", "200ms")
	c, nodes := dc.c, dc.nodes
	main, err := os.ReadFile("../duck/main.go")
	if err != nil {
		b.Fatal(err)
	}
	quack := regexp.MustCompile(`(?m)^const quack = .*$`)
	if !quack.Match(main) {
		b.Fatal("duck/main.go has no `const quack = ` line to change")
	}
	committed := regexp.MustCompile(`committed version (\d+)`)

	var deploy, rolloutT, toGrant, build, swap, handoff, tail []time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		// New every iteration and every run: an old quack line would be a build cache hit.
		dir := b.TempDir()
		line := fmt.Sprintf("const quack = \"Quack %d-%d! #%%d (%%s)\\n\"", i, time.Now().UnixNano())
		src := quack.ReplaceAll(main, []byte(line))
		if err := os.WriteFile(filepath.Join(dir, "main.go"), src, 0o644); err != nil {
			b.Fatal(err)
		}
		addr := nodes[i%len(nodes)].API
		b.StartTimer()
		start := time.Now()
		out, errOut, err := tryCLI(c, addr, "deploy", "-m", fmt.Sprintf("bench %d", i), dir)
		took := time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatalf("deploy %d: %v\n%s%s", i, err, out, errOut)
		}
		m := committed.FindStringSubmatch(out)
		if m == nil || !strings.Contains(out, "runs on every node") {
			b.Fatalf("deploy %d printed:\n%s", i, out)
		}
		r := rolloutOf(b, c, addr).Rollout
		if fmt.Sprint(r.Version) != m[1] || r.State != rollout.Done || r.Ended.IsZero() {
			b.Fatalf("after deploy of version %s the rollout is version %d, %s, ended %v", m[1], r.Version, r.State, r.Ended)
		}
		deploy = append(deploy, took)
		rolloutT = append(rolloutT, r.Ended.Sub(r.Started))
		toGrant = append(toGrant, r.Nodes[r.Order[0]].Granted.Sub(r.Started))
		for j, name := range r.Order {
			n := r.Nodes[name]
			if n.Phase != rollout.Running {
				b.Fatalf("version %d: %s is %s, not running", r.Version, name, n.Phase)
			}
			build = append(build, n.Built.Sub(n.BuildStarted))
			swap = append(swap, n.Done.Sub(n.Granted))
			if j > 0 {
				handoff = append(handoff, n.Granted.Sub(r.Nodes[r.Order[j-1]].Done))
			}
		}
		tail = append(tail, r.Ended.Sub(r.Nodes[r.Order[len(r.Order)-1]].Done))
	}
	b.StopTimer()

	parts := []struct {
		unit string
		all  []time.Duration
	}{
		{"deploy-ms", deploy}, {"rollout-ms", rolloutT}, {"commit-to-grant-ms", toGrant},
		{"build-ms", build}, {"swap-ms", swap}, {"handoff-ms", handoff}, {"tail-ms", tail},
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%d deploys, medians (min..max) in ms; healthy 200ms is inside each swap\n", b.N)
	for _, p := range parts {
		slices.Sort(p.all)
		med := p.all[(len(p.all)-1)/2]
		b.ReportMetric(msOf(med), p.unit)
		fmt.Fprintf(&table, "%-19s %7.0f  (%.0f..%.0f)\n", p.unit, msOf(med), msOf(p.all[0]), msOf(p.all[len(p.all)-1]))
	}
	// testing keeps 10 lines of a benchmark's log across its runs; the first (b.N = 1) only
	// sizes the next, so log the one that counts.
	if b.N > 1 {
		b.Logf("\n%s", table.String())
	}
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
