package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/localcluster"
)

// runDemo walks the seed's first half with real node processes: three isolated nodes, connect
// them, list the members, stop them.
func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	keep := fs.Bool("keep", false, "keep the temporary folder afterwards")
	verbose := fs.Bool("v", false, "show the nodes' own log lines")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary to start nodes with: %w", err)
	}
	root, err := os.MkdirTemp("", "duckraft-demo-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(root)
	}
	secret := make([]byte, 16)
	rand.Read(secret)
	c := &localcluster.Cluster{Bin: bin, Root: root, Cookie: hex.EncodeToString(secret)}
	if *verbose {
		c.Output = os.Stderr
	}
	defer func() {
		step("stop every node")
		if err := c.StopAll(10 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		if *keep {
			fmt.Printf("data folders kept in %s\n", root)
		}
	}()
	// Ctrl-C stops the demo cleanly rather than leaving nodes behind.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	step("start three nodes, each a cluster of one (iex --sname a --cookie ...)")
	var nodes []*localcluster.Node
	for _, name := range []string{"a", "b", "c"} {
		n, err := c.Start(name)
		if err != nil {
			return err
		}
		fmt.Printf("  %s: api %s, raft %s\n", n.Name, n.API, n.Raft)
		nodes = append(nodes, n)
	}
	run := func(addr string, args ...string) error {
		fmt.Printf("$ %s %s   # on %s\n", prog, join(args), addr)
		out, errOut, err := c.Run(ctx, addr, args...)
		fmt.Print(out, errOut)
		return err
	}
	a := nodes[0]
	step("each node sees only itself (Node.list)")
	if err := run(nodes[1].API, "members"); err != nil {
		return err
	}
	step("connect b and c to a (Node.connect)")
	for _, n := range nodes[1:] {
		if err := run(n.API, "connect", a.API); err != nil {
			return err
		}
	}
	step("every node agrees on the members")
	for _, n := range nodes {
		if err := run(n.API, "members"); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func join(args []string) string {
	s := ""
	for i, a := range args {
		if i > 0 {
			s += " "
		}
		s += a
	}
	return s
}
