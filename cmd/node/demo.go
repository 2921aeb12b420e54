package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/duckraft/duckraft"
	"github.com/duckraft/duckraft/localcluster"
	"github.com/duckraft/duckraft/wire"
)

// runDemo is the user's story with real node processes: three nodes connect, a duck runs on
// each, a louder version is committed, and the quacks change node by node, in order, while the
// counts run on. Everything it starts is stopped at the end.
func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	keep := fs.Bool("keep", false, "keep the temporary folder afterwards")
	verbose := fs.Bool("v", false, "show the nodes' own log lines")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, v1, v2, err := tempCluster("duckraft-demo-")
	if err != nil {
		return err
	}
	root := c.Root
	if !*keep {
		defer os.RemoveAll(root)
	}
	if *verbose {
		c.Output = os.Stderr
	}
	defer func() {
		step("stop every node (their ducks stop with them)")
		if err := c.StopAll(20 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
		} else {
			fmt.Println("  stopped")
		}
		if *keep {
			fmt.Printf("data folders kept in %s\n", root)
		}
	}()
	// Ctrl-C stops the demo cleanly rather than leaving nodes behind.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	t0 := time.Now()

	step("start three nodes, each a cluster of one (iex --sname a --cookie ...)")
	var nodes []*localcluster.Node
	for _, name := range []string{"a", "b", "c"} {
		n, err := c.Start(name, "--healthy", "300ms")
		if err != nil {
			return err
		}
		fmt.Printf("  node %s: api %s, raft %s\n", n.Name, n.API, n.Raft)
		nodes = append(nodes, n)
	}
	run := func(addr string, args ...string) error {
		fmt.Printf("$ %s %s\n", prog, strings.Join(args, " "))
		cmd := c.Command(ctx, addr, args...)
		// Through a pipe, not the terminal itself: the commands then print a line per step
		// instead of redrawing a table, which the ducks' quacks would tear apart.
		cmd.Stdout, cmd.Stderr = struct{ io.Writer }{os.Stdout}, struct{ io.Writer }{os.Stderr}
		return cmd.Run()
	}
	a := nodes[0]
	step("connect b and c to a (Node.connect), then list the members from c (Node.list)")
	for _, n := range nodes[1:] {
		if err := run(n.API, "connect", "--addr", n.API, a.API); err != nil {
			return err
		}
	}
	if err := run(nodes[2].API, "members"); err != nil {
		return err
	}

	step("commit the quacking duck as version 1; every node builds it")
	if err := run(a.API, "deploy", "-m", "the quacking duck", v1); err != nil {
		return err
	}
	step("start a duck on every node")
	ducks := map[string]string{}
	for _, n := range nodes {
		out, _, err := c.Run(ctx, n.API, "spawn", "--detach", "--env", "DUCK_INTERVAL=400ms")
		if err != nil {
			return fmt.Errorf("spawn on %s: %w", n.Name, err)
		}
		fmt.Print("  " + out)
		ducks[n.Name] = spawnedAddr(out, n.Name)
	}

	step("the ducks quack (their output comes home) while clients POST /quack to every duck")
	// One follower is enough: `logs` without a duck is cluster-wide, so node a relays every
	// node's ducks. A follower per node printed each quack once per node.
	follow, stopFollow := context.WithCancel(ctx)
	var followers sync.WaitGroup
	fmt.Printf("$ %s logs -f -n 0\n", prog)
	cmd := c.Command(follow, a.API, "logs", "-f", "-n", "0")
	cmd.Stdout = os.Stdout
	if err := cmd.Start(); err == nil {
		followers.Add(1)
		go func() { defer followers.Done(); cmd.Wait() }()
	}
	posts := startPosting(ducks, 1, 20*time.Millisecond)
	sleep(ctx, 2*time.Second)

	step("commit the louder duck as version 2: watch it roll out a, then b, then c")
	deployErr := run(nodes[1].API, "deploy", "-m", "louder", v2)
	sleep(ctx, 1500*time.Millisecond)
	posts.stop()
	stopFollow()
	followers.Wait()
	if deployErr != nil {
		return deployErr
	}

	step("summary")
	summary(c, nodes, ducks, posts)
	fmt.Printf("\nthe story took %s\n", time.Since(t0).Round(100*time.Millisecond))
	return ctx.Err()
}

// demoSources writes the two duck versions the binary carries into root/src.
// tempCluster is a cluster of this binary's nodes in a new temporary folder, with a random
// cookie and the two duck versions written there: what the demo and the bench start from. The
// caller removes c.Root.
func tempCluster(prefix string) (c *localcluster.Cluster, v1, v2 string, err error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, "", "", fmt.Errorf("find this binary to start nodes with: %w", err)
	}
	root, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, "", "", err
	}
	// A root node runs its ducks as a user of their own, which must pass through this folder to
	// reach its own (never list it: the nodes' data folders keep their own modes).
	if err := os.Chmod(root, 0o711); err != nil {
		os.RemoveAll(root)
		return nil, "", "", err
	}
	if v1, v2, err = demoSources(root); err != nil {
		os.RemoveAll(root)
		return nil, "", "", err
	}
	cookie, err := wire.NewCookie()
	if err != nil {
		os.RemoveAll(root)
		return nil, "", "", err
	}
	return &localcluster.Cluster{Bin: bin, Root: root, Cookie: cookie}, v1, v2, nil
}

// spawnedAddr is the duck's address in what `spawn` printed for node.
func spawnedAddr(out, node string) string {
	var id, addr string
	fmt.Sscanf(out, "%s on "+node+" serving http://%s", &id, &addr)
	return addr
}

func demoSources(root string) (v1, v2 string, err error) {
	for _, d := range []struct{ from, to string }{{"duck/main.go", "duck"}, {"testdata/duck-v2/main.go", "duck-v2"}} {
		b, err := duckraft.Demo.ReadFile(d.from)
		if err != nil {
			return "", "", err
		}
		dir := filepath.Join(root, "src", d.to)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), b, 0o600); err != nil {
			return "", "", err
		}
	}
	return filepath.Join(root, "src", "duck"), filepath.Join(root, "src", "duck-v2"), nil
}

// poster POSTs /quack to every duck from `clients` keep-alive clients per duck, counting what
// succeeded and what failed, and how long each request took.
type poster struct {
	ok, failed map[string]*atomic.Int64
	done       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	latencies  []time.Duration
}

func startPosting(ducks map[string]string, clients int, every time.Duration) *poster {
	p := &poster{ok: map[string]*atomic.Int64{}, failed: map[string]*atomic.Int64{}, done: make(chan struct{})}
	for name, addr := range ducks {
		p.ok[name], p.failed[name] = &atomic.Int64{}, &atomic.Int64{}
		for range clients {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 10 * time.Second}
				for i := 0; i < 1_000_000; i++ { // bounded; the caller stops it long before
					select {
					case <-p.done:
						return
					case <-time.After(every):
					}
					t0 := time.Now()
					resp, err := hc.Post("http://"+addr+"/quack", "", nil)
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					if err != nil || resp.StatusCode != http.StatusOK {
						p.failed[name].Add(1)
						continue
					}
					p.ok[name].Add(1)
					p.mu.Lock()
					p.latencies = append(p.latencies, time.Since(t0))
					p.mu.Unlock()
				}
			}()
		}
	}
	return p
}

// totals sums the successful and failed requests over every duck.
func (p *poster) totals() (ok, failed int64) {
	for name := range p.ok {
		ok += p.ok[name].Load()
		failed += p.failed[name].Load()
	}
	return ok, failed
}

func (p *poster) stop() { close(p.done); p.wg.Wait() }

func summary(c *localcluster.Cluster, nodes []*localcluster.Node, ducks map[string]string, p *poster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var view api.RolloutView
	if out, _, err := c.Run(ctx, nodes[0].API, "rollout", "status", "--json"); err == nil {
		json.Unmarshal([]byte(out), &view)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tTURN\tSWAP TOOK\tDUCK SAYS\tCOUNT\tPOSTS OK\tPOSTS FAILED\tCOUNT = POSTS OK")
	exact := true
	for i, n := range nodes {
		says, count, turn, took := "?", "?", "-", "-"
		var r struct {
			Count   int    `json:"count"`
			Version string `json:"version"`
		}
		if resp, err := http.Get("http://" + ducks[n.Name] + "/"); err == nil {
			json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			says, count = r.Version, fmt.Sprint(r.Count)
		}
		if view.Rollout != nil {
			if nr := view.Rollout.Nodes[n.Name]; nr != nil {
				turn = fmt.Sprint(i + 1)
				took = phaseTime(nr, view.Rollout.Ended)
			}
		}
		same := count == fmt.Sprint(p.ok[n.Name].Load())
		exact = exact && same && p.failed[n.Name].Load() == 0
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", n.Name, turn, took, says, count, p.ok[n.Name].Load(), p.failed[n.Name].Load(), yesNo(same))
	}
	tw.Flush()
	if exact {
		fmt.Println("\nno request failed, and every duck's count is exactly the POSTs it answered: its state crossed the swap.")
	} else {
		fmt.Println("\nsome requests failed or a count differs: see the table above.")
	}
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
