package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/runtime/bundle"
	"github.com/duckraft/duckraft/runtime/supervise"
	"github.com/duckraft/duckraft/term"
)

// runLoad is Erlang's c("quacking_duck.ex"): build DIR on one node and swap its ducks to it.
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	c := clientFlags(fs)
	c.timeout = 10 * time.Minute // a first build with an empty build cache takes a while
	pos, err := parse(fs, args, "DIR")
	if err != nil {
		return err
	}
	b, err := bundle.Pack(pos[0])
	if err != nil {
		return err
	}
	cl, err := c.open()
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, c.timeout)
	defer cancelT()

	p := newProgress(os.Stderr)
	defer p.close()
	p.step(fmt.Sprintf("sending %s (%d bytes) to %s", pos[0], len(b.Data), c.addr))
	var failed *api.Event
	var done api.Event
	err = cl.Stream(ctx, c.addr, http.MethodPost, "/v1/load", bytes.NewReader(b.Data), "application/gzip", func(raw json.RawMessage) error {
		var e api.Event
		if err := json.Unmarshal(raw, &e); err != nil {
			return err
		}
		switch e.Phase {
		case "building":
			p.step("building " + string(e.Version))
		case "built":
			p.finish("built " + string(e.Version))
		case "swapping":
			p.step(fmt.Sprintf("swapping %s to %s", e.Duck, e.Version))
		case "swapped":
			p.finish(fmt.Sprintf("swapped %s to %s", e.Duck, e.Version))
		case "reverting":
			p.step(fmt.Sprintf("reverting %s to %s", e.Duck, e.Version))
		case "done":
			done = e
		case "failed":
			failed = &e
		}
		return nil
	})
	p.close()
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("stopped waiting; the node carries on with the load (see `ducks`)")
		}
		return err
	}
	if failed != nil {
		if failed.Output != "" {
			// The compiler's own words, as it printed them.
			fmt.Fprint(os.Stderr, term.Safe(failed.Output))
		}
		return errors.New(failed.Error)
	}
	if done.Version == "" {
		return fmt.Errorf("the node ended the load without saying how it went: check `ducks` and its log")
	}
	fmt.Printf("loaded %s: %s\n", done.Version, done.Message)
	return nil
}

type envFlags []string

func (e *envFlags) String() string { return strings.Join(*e, ",") }
func (e *envFlags) Set(v string) error {
	// A mistake in the command, said before any node is asked (it exited 1, as if the node had
	// refused something).
	if !duckEnv.MatchString(v) {
		return fmt.Errorf("a duck takes DUCK_*=value variables, e.g. DUCK_INTERVAL=200ms")
	}
	*e = append(*e, v)
	return nil
}

var duckEnv = regexp.MustCompile(`^DUCK_[A-Z0-9_]+=`)

// runSpawn is the walkthrough's QuackingDuck.start: start a duck and follow its output until Ctrl-C,
// which leaves it running.
func runSpawn(args []string) error {
	fs := flag.NewFlagSet("spawn", flag.ContinueOnError)
	c := clientFlags(fs)
	port := fs.Int("port", 0, "port the duck serves HTTP on, on 127.0.0.1 (default: a free one)")
	listen := fs.String("listen", "", "full address the duck serves on (overrides --port)")
	detach := fs.Bool("detach", false, "return once the duck runs instead of following its output")
	on := fs.String("on", "", "start the duck on this node (Node.spawn), at the version the node at --addr runs")
	var env envFlags
	fs.Var(&env, "env", "DUCK_*=value passed to the duck, e.g. DUCK_INTERVAL=200ms (repeatable)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if (api.SpawnRequest{Addr: *listen}).CheckAddr() != nil {
		// The duck binds it, and the node could not say which port port 0 became.
		return usageError{fmt.Sprintf("--listen %q: give HOST:PORT with a port; leave out --listen and --port for a free port on 127.0.0.1", *listen)}
	}
	if *port != 0 && *listen != "" {
		return usageError{"give --port or --listen, not both: --listen is the whole address, --port a port on 127.0.0.1"}
	}
	if *port < 0 || *port > 65535 {
		return usageError{fmt.Sprintf("--port %d: give a port from 1 to 65535, or leave it out for a free one", *port)}
	}
	req := api.SpawnRequest{Addr: *listen, Env: env, On: *on}
	if req.Addr == "" && *port != 0 {
		req.Addr = "127.0.0.1:" + strconv.Itoa(*port)
	}
	var d api.DuckInfo
	if err := c.call(http.MethodPost, "/v1/spawn", req, &d); err != nil {
		return err
	}
	fmt.Printf("%s on %s serving %s (version %s)\n", d.ID, d.Node, duckURL(d.Addr), d.Version)
	if *detach {
		return nil
	}
	// Every line the new duck printed so far, then what comes next.
	return follow(c, d.Node, d.ID, supervise.RingSize, true)
}

// follow prints a duck's (or every duck's) output, live if live is set, until Ctrl-C or the
// node goes away. on names the node the duck runs on ("*": every node), reached through the
// node at --addr, so the output comes home to the caller as with Erlang's Node.spawn.
func follow(c *client, on, duck string, n int, live bool) error {
	cl, err := c.open()
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	q := url.Values{"n": {strconv.Itoa(n)}}
	if on != "" {
		q.Set("on", on)
	}
	if duck != "" {
		q.Set("duck", duck)
	}
	if live {
		q.Set("follow", "1")
	}
	var gone error
	err = cl.Stream(ctx, c.addr, http.MethodGet, "/v1/logs?"+q.Encode(), nil, "", func(raw json.RawMessage) error {
		var l api.LogLine
		if err := json.Unmarshal(raw, &l); err != nil {
			return err
		}
		if l.Error != "" {
			if duck != "" {
				gone = errors.New(l.Error)
				return gone
			}
			fmt.Fprintln(os.Stderr, l.Error)
			return nil
		}
		out := os.Stdout
		if l.Stream == "stderr" {
			out = os.Stderr
		}
		// A duck's output is its author's: escape what could drive the terminal.
		fmt.Fprintf(out, "[%s/%s] %s\n", l.Node, l.Duck, term.Safe(l.Text))
		return nil
	})
	if ctx.Err() != nil {
		if duck != "" {
			name := duck
			if on != "" && on != "*" {
				name = on + "/" + duck // a duck ID is its node's: duck-2 on b is not duck-2 on a
			}
			fmt.Fprintf(os.Stderr, "detached; %s keeps running (stop it with: %s --addr %s stop %s)\n", name, prog, c.addr, name)
		}
		return nil
	}
	if gone != nil {
		return gone
	}
	var refused *api.APIError
	if errors.As(err, &refused) {
		return err // the node answered: no such duck, or no such node behind it
	}
	if err != nil {
		return fmt.Errorf("node at %s is gone, and its ducks with it: %w", c.addr, err)
	}
	if live && duck != "" {
		return fmt.Errorf("%s has stopped", duck)
	}
	return nil
}

func runStop(args []string) error {
	fs := flag.NewFlagSet("stop", flag.ContinueOnError)
	c := clientFlags(fs)
	on := fs.String("on", "", "the node the duck runs on (default: the node at --addr)")
	pos, err := parse(fs, args, "DUCK")
	if err != nil {
		return err
	}
	duck := pos[0]
	if node, id, ok := strings.Cut(duck, "/"); ok {
		// NODE/DUCK names the node too: one that --on contradicts, or an empty part, is a
		// mistake in the command (found by an outside probe: --on was ignored, "/duck-1" and
		// "" went to the node and came back as "runs no duck").
		if node == "" || id == "" {
			return usageError{fmt.Sprintf("%q: give a duck as DUCK or NODE/DUCK, as `ducks` lists them", duck)}
		}
		if *on != "" && *on != node {
			return usageError{fmt.Sprintf("--on %s and %s name two nodes: give one", *on, duck)}
		}
		*on, duck = node, id
	}
	if duck == "" {
		return usageError{"give a duck to stop, as `ducks` lists them"}
	}
	if err := c.call(http.MethodPost, "/v1/stop", api.StopRequest{Name: duck, On: *on}, nil); err != nil {
		return err
	}
	fmt.Printf("stopped %s\n", pos[0])
	return nil
}

func runDucks(args []string) error {
	fs := flag.NewFlagSet("ducks", flag.ContinueOnError)
	c := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	local := fs.Bool("local", false, "only the ducks of the node at --addr (default: every node's)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	path := "/v1/ducks?scope=cluster"
	if *local {
		path = "/v1/ducks"
	}
	var ds []api.DuckInfo
	if err := c.call(http.MethodGet, path, nil, &ds); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(ds)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DUCK\tNODE\tVERSION\tSTATE\tADDR\tPID\tGEN\tRESTARTS\tUP")
	for _, d := range ds {
		up := "-"
		if !d.Started.IsZero() && d.State == "running" {
			up = time.Since(d.Started).Round(time.Second).String()
		}
		pid, gen, restarts := strconv.Itoa(d.PID), strconv.Itoa(d.Gen), strconv.Itoa(d.Restarts)
		if d.State == "node unreachable" {
			pid, gen, restarts = "?", "?", "?" // its node did not answer: unknown, not zero
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Node, d.Version, d.State, d.Addr, pid, gen, restarts, up)
	}
	return tw.Flush()
}

func runLogs(args []string) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	c := clientFlags(fs)
	f := fs.Bool("f", false, "follow: keep printing new lines until Ctrl-C")
	n := fs.Int("n", 100, "how many recent lines of each duck to print first (0: none, with -f only what comes next)")
	on := fs.String("on", "", "the node the duck runs on (default: the node at --addr; every node's ducks without DUCK)")
	pos, err := parse(fs, args, "[DUCK]")
	if err != nil {
		return err
	}
	if *n < 0 {
		// Checked here: every node refused it, and each refusal read as that node being gone.
		return usageError{fmt.Sprintf("-n %d: give how many lines, 0 or more", *n)}
	}
	duck := ""
	if len(pos) == 1 {
		duck = pos[0]
		// NODE/DUCK names a duck anywhere in the cluster, as `ducks` lists it.
		if node, id, ok := strings.Cut(duck, "/"); ok {
			*on, duck = node, id
		}
	} else if *on == "" {
		*on = "*"
	}
	return follow(c, *on, duck, *n, *f)
}

// duckURL is where a user reaches a duck serving on addr: one bound to every interface
// (":8396", "0.0.0.0:8396") printed as http://:8396, which no browser or curl takes.
func duckURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return "http://" + net.JoinHostPort("127.0.0.1", port) + " (every interface)"
	}
	return "http://" + addr
}
