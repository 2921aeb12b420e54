package systemtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSeedWalkthrough is README's Erlang walkthrough step by step, in its order, with duckraft's
// commands and real processes.
func TestSeedWalkthrough(t *testing.T) {
	// iex --sname a --cookie duck (three times); Node.list: each VM runs isolated.
	c, nodes := newCluster(t, "a", "b", "c")
	a, b, cc := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		if ms := members(c, n.API); len(ms) != 1 {
			t.Fatalf("%s is not isolated: %s", n.Name, view(ms))
		}
	}

	// Node.connect, Node.list.
	connectAll(t, c, nodes)
	waitFor(t, "three members seen from c", 10*time.Second, func() bool { return len(members(c, cc.API)) == 3 })

	// c("quacking_duck.ex", "./") on a: known here only, marked local.
	out := cli(t, c, a.API, "load", "../duck")
	if !strings.HasPrefix(out, "loaded ") {
		t.Fatalf("load printed %q", out)
	}
	st := cli(t, c, cc.API, "status")
	if !regexpMatch(`(?m)^a .* \S+ \(local\)`, st) || regexpMatch(`(?m)^b .*\(local\)`, st) {
		t.Fatalf("status should show a's version as local and b without it:\n%s", st)
	}

	// pid = QuackingDuck.start on a.
	out = cli(t, c, a.API, "spawn", "--detach", "--env", "DUCK_INTERVAL=200ms")
	if !strings.HasPrefix(out, "duck-1 on a ") {
		t.Fatalf("spawn on a printed %q", out)
	}

	// The same on b: UndefinedFunctionError's analogue, naming the node and what fixes it.
	_, errOut, err := tryCLI(c, b.API, "spawn", "--detach")
	if err == nil || !strings.Contains(errOut, "node b has no duck code loaded") || !strings.Contains(errOut, "UndefinedFunctionError") {
		t.Fatalf("spawn on b before nl: err=%v %q", err, errOut)
	}
	_, errOut, err = tryCLI(c, a.API, "spawn", "--detach", "--on", "b")
	if err == nil || !strings.Contains(errOut, "node b does not have version") || !strings.Contains(errOut, "spread") {
		t.Fatalf("spawn --on b from a before nl: err=%v %q", err, errOut)
	}

	// nl QuackingDuck: spread a's version to every node; then start it on b.
	out = cli(t, c, a.API, "spread")
	if !strings.Contains(out, "version 1 runs on every node") {
		t.Fatalf("spread printed:\n%s", out)
	}
	out = cli(t, c, b.API, "spawn", "--detach", "--env", "DUCK_INTERVAL=200ms")
	if !strings.HasPrefix(out, "duck-1 on b ") || !strings.Contains(out, "(version v1)") {
		t.Fatalf("spawn on b after nl printed %q", out)
	}

	// pid2 = Node.spawn(:c, ...) from a: the output comes back to the caller.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	remote := c.Command(ctx, a.API, "spawn", "--on", "c", "--env", "DUCK_INTERVAL=200ms")
	var stderr bytes.Buffer
	remote.Stderr = &stderr
	stdout, _ := remote.StdoutPipe()
	if err := remote.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	sawQuack := false
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), "[c/duck-1] Quack! #") {
			sawQuack = true
			break
		}
	}
	if !sawQuack {
		t.Fatalf("no quack from c reached the caller; stderr: %s", stderr.String())
	}
	go func() {
		for lines.Scan() {
		}
	}()

	// Killing the remote machine stops the process, and the caller is told.
	cc.Kill()
	waitErr := make(chan error, 1)
	go func() { waitErr <- remote.Wait() }()
	select {
	case err := <-waitErr:
		if err == nil || !strings.Contains(stderr.String(), "node c is gone") {
			t.Fatalf("caller after c died: err=%v stderr=%q", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the caller was not told that c died")
	}

	// The log remembers where every duck runs: listed from any node, c's duck shows as gone.
	waitFor(t, "c's duck listed as unreachable", 10*time.Second, func() bool {
		for _, d := range ducksOn(c, b.API) {
			if d.Node == "c" && d.ID == "duck-1" && d.State == "node unreachable" {
				return true
			}
		}
		return false
	})

	// Change the output string and c(...) on a: a's duck changes, b's does not.
	louder := filepath.Join(t.TempDir(), "duck")
	src, err := os.ReadFile("../duck/main.go")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(louder, 0o755)
	changed := strings.Replace(string(src), `"Quack! #%d (%s)\n"`, `"Quack quack quack! #%d (%s)\n"`, 1)
	if changed == string(src) {
		t.Fatal("could not find the quack line in duck/main.go to change it")
	}
	os.WriteFile(filepath.Join(louder, "main.go"), []byte(changed), 0o644)
	cli(t, c, a.API, "load", louder)
	waitFor(t, "a's running duck to quack the new line", 10*time.Second, func() bool {
		return strings.Contains(lastLine(t, c, a.API, "a/duck-1"), "Quack quack quack!")
	})
	if l := lastLine(t, c, a.API, "b/duck-1"); !strings.Contains(l, "] Quack! #") {
		t.Fatalf("b changed before nl: %q", l)
	}

	// nl again: every node's duck changes (c is down; it catches up when it returns).
	if _, errOut, err := tryCLI(c, a.API, "spread"); err != nil && !strings.Contains(errOut, "c was down and skipped") {
		t.Fatalf("second spread: %v\n%s", err, errOut)
	}
	waitFor(t, "b's running duck to quack the new line", 10*time.Second, func() bool {
		return strings.Contains(lastLine(t, c, b.API, "b/duck-1"), "Quack quack quack!")
	})
}

// lastLine is the last line duck (NODE/DUCK) printed, asked through the node at addr.
func lastLine(t *testing.T, c interface {
	Run(context.Context, string, ...string) (string, string, error)
}, addr, duck string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, errOut, err := c.Run(ctx, addr, "logs", "-n", "1", duck)
	if err != nil {
		t.Fatalf("logs %s: %v %s", duck, err, errOut)
	}
	return strings.TrimSpace(out)
}

func regexpMatch(re, s string) bool {
	ok, err := regexp.MatchString(re, s)
	if err != nil {
		panic(fmt.Sprint(re, err))
	}
	return ok
}
