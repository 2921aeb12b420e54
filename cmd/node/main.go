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
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/duckraft/duckraft/agent"
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
		{"connect", "OTHER_API_ADDR", "join the node at --addr to OTHER's cluster, as Erlang's Node.connect does; prints true", runConnect},
		{"members", "[--json]", "list the cluster's members, their roles and whether they answer (Erlang's Node.list)", runMembers},
		{"forget", "NAME", "remove a dead member from the cluster", runForget},
		{"leave", "", "take the node at --addr out of its cluster (it carries on alone)", runLeave},
		{"load", "DIR", "build DIR's Go main package on the node at --addr and hot-swap that node's ducks to it, as Erlang's c/1 compiles and loads a module on one node", runLoad},
		{"spread", "[-m MSG] [--detach] [--no-revert]", "give the whole cluster the version `load` put on the node at --addr and follow its rollout, as Erlang's nl loads a module on every node", runSpread},
		{"spawn", "[--on NODE] [--port P | --listen H:P] [--env DUCK_X=V] [--detach]", "start a duck (on another node with --on, as Erlang's Node.spawn) and follow its output; Ctrl-C leaves it running", runSpawn},
		{"stop", "[NODE/]DUCK", "stop a duck", runStop},
		{"ducks", "[--local] [--json]", "list the ducks of every node", runDucks},
		{"logs", "[-f] [-n N] [--on NODE] [[NODE/]DUCK]", "print a duck's recent output (every duck's without DUCK); -f follows it", runLogs},
		{"deploy", "DIR [-m MSG] [--canary[=N]] [--max-parallel N|P%] [--wave-by KEY] [--detach]", "commit DIR as the cluster's new version and follow its rollout, as Erlang's nl loads a module on every node, but one node at a time", runDeploy},
		{"rollout", "status|history|pause [--after-wave]|resume [--one-wave] [--force]|undo [--to N] [--force] [--json]", "inspect or steer the rollout", runRollout},
		{"status", "[--json]", "every node: role, version, rollout phase, ducks", runStatus},
		{"watch", "", "follow the current rollout live", runWatch},
		{"bench", "[--rounds N]", "start a local cluster and measure swaps, rollouts, restarts, Raft commits and memory", runBench},
		{"demo", "", "start three nodes in a temporary folder, run ducks on them, roll out a new version while they serve, stop everything", runDemo},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "%s: Erlang-style clustering and hot code loading for Go programs\n\nUsage:\n", prog)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %s\n      %s\n", strings.TrimSpace(prog+" "+c.name+" "+c.args), c.help)
	}
	fmt.Fprintf(w, `
Client commands reach a node at --addr H:P (or $DUCKRAFT_ADDR, default %s) and prove
the cluster cookie: --cookie-file F, or $DUCKRAFT_COOKIE, or ~/.duckraft.cookie.
(--cookie C works too, but shows in ps to everyone on the machine.)
These flags, --timeout D and --json may come before the command or after it:
  %s --addr 127.0.0.1:7002 members --json
Run '%s COMMAND -h' for a command's flags.
`, agent.DefaultAPIAddr, prog, prog)
}

func main() {
	name, args, err := splitGlobal(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		os.Exit(2)
	}
	switch name {
	case "":
		fmt.Fprintf(os.Stderr, "%s: no command given; pick one below\n\n", prog)
		usage(os.Stderr)
		os.Exit(2)
	case "-h", "--help", "help":
		usage(os.Stdout)
		return
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(args)
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		var paused pausedError
		if errors.As(err, &paused) {
			os.Exit(3) // the rollout waits for the operator; the command said so on stdout
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

// globalFlags may come before the command as well as after it, as in `duckraft --addr H:P
// members`: the client's flags, which a user sets once for a shell (an alias, a script) and
// then types commands after. The value says whether the flag takes one.
var globalFlags = map[string]bool{"addr": true, "cookie": true, "cookie-file": true, "timeout": true, "json": false}

// splitGlobal finds the command in args and moves the global flags before it to its own
// arguments, where its flag set parses them as if typed after it. A help flag before the
// command is returned as the command.
func splitGlobal(args []string) (name string, rest []string, err error) {
	var global []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-h" || a == "--help" || a == "-help" {
			return "--help", nil, nil
		}
		if a == "--" {
			i++
			if i == len(args) {
				break
			}
			a = args[i]
		} else if strings.HasPrefix(a, "-") {
			flagName, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			takesValue, ok := globalFlags[flagName]
			if !ok {
				return "", nil, usageError{fmt.Sprintf("unknown flag %s before the command: only %s may come first; put a command's own flags after it", a, globalList())}
			}
			global = append(global, a)
			if takesValue && !hasValue {
				if i+1 == len(args) {
					return "", nil, usageError{fmt.Sprintf("%s needs a value, such as %s", a, globalExample[flagName])}
				}
				i++
				global = append(global, args[i])
			}
			continue
		}
		return a, append(global, args[i+1:]...), nil
	}
	return "", nil, nil
}

var globalExample = map[string]string{"addr": "--addr " + agent.DefaultAPIAddr, "cookie": "--cookie C (--cookie-file F keeps it out of ps)", "cookie-file": "--cookie-file ~/.duckraft.cookie", "timeout": "--timeout 30s"}

// globalList names the global flags for an error message, in a stable order.
func globalList() string {
	var names []string
	for n := range globalFlags {
		names = append(names, "--"+n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// pausedError is a rollout that was paused for the operator (after its canaries, or by hand)
// when the command following it returned: exit status 3, told apart from done (0) and from
// halted or gone back (1), so that a script does not take a pause for the end (exit 0 did).
type pausedError struct{ version int }

func (e pausedError) Error() string { return fmt.Sprintf("version %d paused", e.version) }

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
			return nil, flagError(fs, err)
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
			return nil, usageError{fmt.Sprintf("unexpected argument %q; see '%s %s -h'", pos[0], prog, fs.Name())}
		}
		return nil, usageError{fmt.Sprintf("want %s, got %d argument(s); see '%s %s -h'", strings.Join(positional, " "), len(pos), prog, fs.Name())}
	}
	return pos, nil
}

var (
	undefinedFlag = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
	missingValue  = regexp.MustCompile(`^flag needs an argument: -+(.*)$`)
	invalidValue  = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-+([^:]+): (.*)$`)
)

// flagError turns the flag package's words into a usage error that says what to type instead.
func flagError(fs *flag.FlagSet, err error) error {
	see := fmt.Sprintf("see '%s %s -h'", prog, fs.Name())
	msg := err.Error()
	if m := undefinedFlag.FindStringSubmatch(msg); m != nil {
		return usageError{fmt.Sprintf("%s has no flag --%s; %s", fs.Name(), m[1], see)}
	}
	if m := missingValue.FindStringSubmatch(msg); m != nil {
		return usageError{fmt.Sprintf("--%s needs a value; %s", m[1], see)}
	}
	m := invalidValue.FindStringSubmatch(msg)
	if m == nil {
		return usageError{msg + "; " + see}
	}
	value, name, why := m[1], m[2], m[3]
	if f := fs.Lookup(name); f != nil {
		if g, ok := f.Value.(flag.Getter); ok {
			switch g.Get().(type) {
			case time.Duration:
				return usageError{fmt.Sprintf("--%s %q is not a duration: give one such as 500ms, 30s or 2m", name, value)}
			case bool:
				return usageError{fmt.Sprintf("--%s=%q: give true or false, or just --%s", name, value, name)}
			case int, int64, uint, uint64:
				return usageError{fmt.Sprintf("--%s %q is not a whole number", name, value)}
			}
		}
	}
	// The flag's own Set said what was wrong, in its own words.
	return usageError{why}
}
