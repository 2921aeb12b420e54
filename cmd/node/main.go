// Command node is duckraft's one binary: `node start` runs a node agent; every other command is
// a client of a running node's API. It only parses flags and wires the packages together.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// prog is the name this binary was invoked by: `go install` calls it node, which clashes with
// Node.js on many machines, so users often build it as duckraft instead.
var prog = filepath.Base(os.Args[0])

type command struct {
	name, args, help string
	run              func(args []string) error
}

func commands() []command {
	return []command{
		{"start", "--name NAME [--data-dir DIR] [--api-addr H:P] [--raft-addr H:P] [--advertise HOST]", "run a node (a cluster of one until connected)", runStart},
		{"cookie", "", "print a fresh random cookie (160 bits); nodes reachable from other machines need one this strong", runCookie},
		{"connect", "OTHER_API_ADDR", "join the node at --addr to OTHER's cluster; prints true", runConnect},
		{"members", "[--json]", "list the cluster's members, their roles and whether they answer", runMembers},
		{"forget", "NAME", "remove a dead member from the cluster", runForget},
		{"leave", "", "take the node at --addr out of its cluster (it carries on alone)", runLeave},
		{"load", "DIR", "build DIR's Go main package on the node and swap its ducks to it (Erlang's c/1)", runLoad},
		{"spread", "[-m MSG] [--detach]", "commit the version loaded on the node to the whole cluster and follow its rollout (Erlang's nl)", runSpread},
		{"spawn", "[--on NODE] [--port P] [--env DUCK_X=V] [--detach]", "start a duck (on another node with --on) and follow its output; Ctrl-C leaves it running", runSpawn},
		{"stop", "[NODE/]DUCK", "stop a duck", runStop},
		{"ducks", "[--local] [--json]", "list the ducks of every node", runDucks},
		{"logs", "[-f] [-n N] [--on NODE] [[NODE/]DUCK]", "print a duck's recent output (every duck's without DUCK); -f follows it", runLogs},
		{"deploy", "DIR [-m MSG] [--canary[=N]] [--max-parallel N|P%] [--wave-by KEY] [--detach]", "commit DIR as a new version and follow its rollout node by node (Erlang's nl)", runDeploy},
		{"rollout", "status|history|pause|resume|undo [--to N] [--json]", "inspect or steer the rollout", runRollout},
		{"status", "[--json]", "every node: role, version, rollout phase, ducks", runStatus},
		{"watch", "", "follow the current rollout live", runWatch},
		{"bench", "[--rounds N]", "start a local cluster and measure swaps, rollouts, restarts, Raft commits and memory", runBench},
		{"demo", "", "start three nodes in a temporary folder, connect them, show members, stop them", runDemo},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "%s: Erlang-style clustering and hot code loading for Go programs\n\nUsage:\n", prog)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %s %s %s\n      %s\n", prog, c.name, c.args, c.help)
	}
	fmt.Fprintf(w, `
Client commands reach a node at --addr H:P (or $DUCKRAFT_ADDR, default 127.0.0.1:4370) and prove
the cluster cookie: --cookie-file F, or $DUCKRAFT_COOKIE, or ~/.duckraft.cookie.
(--cookie C works too, but shows in ps to everyone on the machine.)
Run '%s COMMAND -h' for a command's flags.
`, prog)
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage(os.Stdout)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	name := os.Args[1]
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(os.Args[2:])
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s %s: %v\n", prog, name, err)
			var ue usageError
			if errors.As(err, &ue) {
				os.Exit(2)
			}
			os.Exit(1)
		}
		return
	}
	fmt.Fprintf(os.Stderr, "%s: unknown command %q\n\n", prog, name)
	usage(os.Stderr)
	os.Exit(2)
}

// usageError is a mistake in how a command was called.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// parse parses flags that may come before or after the positional arguments, as users type
// them (`node connect B --addr A`), and checks the positional count.
func parse(fs *flag.FlagSet, args []string, positional ...string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stdout)
				fmt.Printf("Usage: %s %s %s\n", prog, fs.Name(), strings.Join(positional, " "))
				fs.PrintDefaults()
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	// Positional names in [brackets] are optional.
	required := 0
	for _, p := range positional {
		if !strings.HasPrefix(p, "[") {
			required++
		}
	}
	if len(pos) < required || len(pos) > len(positional) {
		if len(positional) == 0 {
			return nil, usageError{fmt.Sprintf("unexpected argument %q", pos[0])}
		}
		return nil, usageError{fmt.Sprintf("want %s, got %d argument(s); see '%s %s -h'", strings.Join(positional, " "), len(pos), prog, fs.Name())}
	}
	return pos, nil
}
