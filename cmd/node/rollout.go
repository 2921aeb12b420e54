package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
	"github.com/duckraft/duckraft/term"
)

// runDeploy is Erlang's nl with a rolling upgrade: commit DIR as a new version through the log
// and follow the rollout node by node, like `kubectl rollout status`.
func runDeploy(args []string) error {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	var p rollout.Policy
	c := clientFlags(fs)
	msg := fs.String("m", "", "a message for the version, as a commit message")
	var canary canaryFlag
	fs.Var(&canary, "canary", "upgrade the first node (--canary=`N`: the first N) as a wave of its own, then wait for 'rollout resume' or 'rollout undo'")
	maxPar := fs.String("max-parallel", "1", "nodes of a wave in their turn at once: a number, or a share of the nodes such as 20%")
	fs.DurationVar(&p.AutoPromoteAfter, "auto-promote-after", 0, "with --canary: carry on by itself once the canaries stayed healthy this long")
	fs.StringVar(&p.WaveBy, "wave-by", "", "a label the nodes were started with (start --label zone=eu-1): one wave per value, in natural order")
	fs.IntVar(&p.FailureBudget, "failure-budget", 0, "how many nodes may fail before the rollout halts (0: the first halts it)")
	fs.BoolVar(&p.SameBinary, "same-binary", false, "halt when a node's build differs from the others' (toolchain drift), naming the nodes and their Go versions")
	detach := fs.Bool("detach", false, "return once the version is committed")
	noRevert := fs.Bool("no-revert", false, "on failure, leave upgraded nodes as they are instead of going back")
	fs.DurationVar(&p.BuildDeadline, "build-deadline", rollout.DefaultBuildDeadline, "a node still building this long after the commit fails the rollout")
	fs.DurationVar(&p.ProgressDeadline, "progress-deadline", rollout.DefaultProgressDeadline, "one node's turn (its swaps and healthy wait) may take this long, or it fails the rollout")
	fs.DurationVar(&p.Healthy, "healthy", rollout.DefaultHealthy, "each new duck must stay up this long after Ready for its swap to count")
	fs.DurationVar(&p.StartDeadline, "start-deadline", rollout.DefaultStartDeadline, "a node silent this long in its turn is skipped and catches up when the rollout ends")
	fs.DurationVar(&p.DownAfter, "down-after", rollout.DefaultDownAfter, "a node the leader cannot reach for this long is skipped, in any phase, and catches up when it returns")
	pos, err := parse(fs, canaryCount(args), "DIR")
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		// `deploy --canary 3` may mean one canary and the folder ./3.
		if p2, err2 := parse(fs, args, "DIR"); err2 == nil {
			pos, err = p2, nil
		}
	}
	if err != nil {
		return err
	}
	// Every mistake in the flags is reported before the folder is read or the node is asked.
	p.Canaries = int(canary)
	if pct, ok := strings.CutSuffix(*maxPar, "%"); ok {
		n, err := strconv.Atoi(pct)
		if err != nil {
			return usageError{fmt.Sprintf("--max-parallel %q: give a number or a share such as 20%%", *maxPar)}
		}
		p.MaxParallelPercent = n
	} else if n, err := strconv.Atoi(*maxPar); err != nil || n == 0 {
		// 0 read as one (the policy's zero value): said, not taken silently (an outside probe).
		return usageError{fmt.Sprintf("--max-parallel %q: give a number of nodes (1 or more) or a share such as 20%%", *maxPar)}
	} else {
		p.MaxParallel = n
	}
	if err := p.Validate(); err != nil {
		return usageError{err.Error()}
	}
	b, err := bundle.Pack(pos[0])
	if err != nil {
		return err
	}
	cl, err := c.open()
	if err != nil {
		return err
	}
	// --timeout bounds the commit; the rollout is followed for as long as it takes.
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req := api.CommitRequest{Bundle: b.Data, Message: *msg, Author: author(), NoRevert: *noRevert, Policy: p}
	var res api.CommitResult
	if err := cl.Do(ctx, c.addr, http.MethodPost, "/v1/deploy", req, &res); err != nil {
		return err
	}
	fmt.Println(res.Committed())
	if *detach {
		return nil
	}
	return watch(c, res.N, false, os.Stdout)
}

// canaryCount joins `--canary N` into --canary=N, as every other flag with a value is written:
// --canary alone means one canary (a boolean flag to the flag package), so N was taken for the
// folder and the deploy failed with "want DIR, got 2 argument(s)". When joined they leave no
// folder, runDeploy reads the arguments as given (`deploy --canary 3` deploys ./3 with one
// canary).
func canaryCount(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if (a == "--canary" || a == "-canary") && i+1 < len(args) && isCount(args[i+1]) {
			out = append(out, a+"="+args[i+1])
			i++
			continue
		}
		out = append(out, a)
	}
	return out
}

func isCount(s string) bool {
	// A negative one too, so that it is refused as a count ("deploy has no flag --1" before).
	s = strings.TrimPrefix(s, "-")
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// canaryFlag is --canary (one canary), --canary=N or --canary N (canaryCount).
type canaryFlag int

func (c *canaryFlag) String() string   { return strconv.Itoa(int(*c)) }
func (c *canaryFlag) IsBoolFlag() bool { return true }
func (c *canaryFlag) Set(s string) error {
	switch s {
	case "true":
		*c = 1
		return nil
	case "false":
		*c = 0
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("--canary=%q: give a number of nodes, such as --canary=3", s)
	}
	*c = canaryFlag(n)
	return nil
}

// runSpread is Erlang's nl: the version loaded on the node at --addr becomes the cluster's.
func runSpread(args []string) error {
	fs := flag.NewFlagSet("spread", flag.ContinueOnError)
	c := clientFlags(fs)
	msg := fs.String("m", "", "a message for the version")
	detach := fs.Bool("detach", false, "return once the version is committed")
	noRevert := fs.Bool("no-revert", false, "on failure, leave upgraded nodes as they are instead of going back (as deploy --no-revert)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var res api.CommitResult
	q := url.Values{"m": {*msg}, "author": {author()}}
	if *noRevert {
		q.Set("no_revert", "1") // a node of an older duckraft ignores it
	}
	if err := c.call(http.MethodPost, "/v1/spread?"+q.Encode(), nil, &res); err != nil {
		return err
	}
	fmt.Println(res.Committed())
	if *detach {
		return nil
	}
	return watch(c, res.N, false, os.Stdout)
}

func author() string {
	name := "someone"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// watch follows rollout n (0: whatever rollout is current) until it ends, redrawing a table in
// place on a terminal and printing a line per change otherwise. With wantBack (undo), going back
// is the success. It returns an error saying why when the rollout halted or went back.
func watch(c *client, n rollout.Number, wantBack bool, w *os.File) error {
	cl, err := c.open()
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	tty := isTerminal(w)
	seen := map[string]string{}

	drawn := 0
	for {
		var v api.RolloutView
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		err := cl.Do(rctx, c.addr, http.MethodGet, "/v1/rollout", nil, &v)
		rcancel()
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "stopped watching; the rollout carries on (`rollout status` shows it)")
			return nil
		}
		if err != nil {
			return fmt.Errorf("lost the node at %s while watching: %w; `rollout status` on another node shows the rollout", c.addr, err)
		}
		r := v.Rollout
		if r == nil && n == 0 {
			return errors.New("nothing has been deployed yet")
		}
		if n != 0 && (r == nil || r.Version < n) {
			// This node has not applied the commit yet.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if tty {
			if drawn > 0 {
				fmt.Fprintf(w, "\033[%dA\033[J", drawn)
			}
			drawn = drawRollout(w, r, v.Leader)
		} else {
			printChanges(w, r, seen)
		}
		// A pause the canaries lift by themselves is not an outcome: the verdict comes after
		// (a deploy that exited 0 there was counted a success by a script, and then went back).
		// Unless the promotion is long past due (a canary that does not answer holds it).
		autoPromote := r.AutoPromoting()
		if note := promotionNote(r, time.Now()); autoPromote && note != "" {
			if !tty && seen["\x00note"] == "" {
				fmt.Fprintf(w, "version %d: %s\n", r.Version, note)
				seen["\x00note"] = note
			}
			if late := time.Since(r.PausedAt) - r.Policy.AutoPromoteAfter; late > max(30*time.Second, r.Policy.AutoPromoteAfter) {
				return fmt.Errorf("version %d stays paused: %s; `rollout resume` carries on, `rollout undo` goes back", r.Version, note)
			}
		}
		if !r.Active() || r.State == rollout.Paused && !autoPromote && !turnsUnderWay(r) {
			if wantBack && r.State == rollout.WentBack {
				return wentBack(r)
			}
			err := outcome(r)
			if err == nil && r.State == rollout.Done {
				warnUnhealthyDucks(ctx, cl, c.addr, r, os.Stderr)
			}
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// warnUnhealthyDucks says, once a rollout is done, on which nodes a duck crashed since the node's
// turn ended: the healthy wait covers only a turn's first moments, and a duck that crash-looped
// after it showed only in `status`'s DUCKS column while deploy said the version ran everywhere.
// The rollout stays done; whether to undo is the operator's call.
func warnUnhealthyDucks(ctx context.Context, cl *api.Client, addr string, r *rollout.Rollout, w io.Writer) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var ds []api.DuckInfo
	if cl.Do(ctx, addr, http.MethodGet, "/v1/ducks?scope=cluster", nil, &ds) != nil {
		return
	}
	byNode := map[string][]api.DuckInfo{}
	for _, d := range ds {
		if d.State != "node unreachable" {
			byNode[d.Node] = append(byNode[d.Node], d)
		}
	}
	now := time.Now()
	for _, name := range r.Order {
		nr := r.Nodes[name]
		if nr.Phase != rollout.Running || nr.Done.IsZero() {
			continue
		}
		// A margin: the turn's end is the leader's stamp, a duck's age its node's (a duck that
		// did not crash is older than that by the healthy wait besides).
		why, err := api.DucksHealth(byNode[name], now.Sub(nr.Done)-250*time.Millisecond)
		if err == nil && why != "" {
			fmt.Fprintf(w, "warning: on %s, %s: `logs --on %s` shows why; `rollout undo` goes back\n", name, why, name)
		}
	}
}

// turnsUnderWay reports whether a node is in its turn: a pause lets them end, and a command
// that followed the rollout said "paused" (exit 3) before knowing how the turn went.
func turnsUnderWay(r *rollout.Rollout) bool {
	for _, name := range r.Order {
		switch r.Nodes[name].Phase {
		case rollout.Granted, rollout.Swapping, rollout.Reverting:
			return true
		}
	}
	return false
}

// drawRollout writes the rollout as a table and returns how many lines it took.
func drawRollout(w io.Writer, r *rollout.Rollout, leader string) int {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "version %d %s (leader %s)\n", r.Version, r.State, leader)
	line := policyLine(r.Policy)
	if !r.AutoRevert {
		line += ", no auto-revert"
	}
	fmt.Fprintf(&buf, "  policy: %s\n", line)
	if r.Reason != "" {
		fmt.Fprintf(&buf, "  %s\n", firstLine(r.Reason))
	}
	if line := binariesLine(r); line != "" {
		fmt.Fprintf(&buf, "  %s\n", line)
	}
	if r.PauseAfter > 0 && r.State == rollout.Rolling {
		fmt.Fprintf(&buf, "  pauses when wave %d has ended, as asked\n", r.PauseAfter)
	}
	if note := promotionNote(r, time.Now()); note != "" {
		fmt.Fprintf(&buf, "  %s\n", note)
	}
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tWAVE\tNODE\tPHASE\tFOR\tNOTE")
	for i, name := range r.Order {
		nr := r.Nodes[name]
		fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t%s\t%s\n", i+1, nr.Wave+1, name, phaseLabel(nr), phaseTime(nr, r.Ended), firstLine(nr.Error))
	}
	tw.Flush()
	w.Write(buf.Bytes())
	return bytes.Count(buf.Bytes(), []byte("\n"))
}

// binariesLine says how many distinct binaries the nodes built from the version, and which.
func binariesLine(r *rollout.Rollout) string {
	groups := r.Binaries()
	if len(groups) == 0 {
		return ""
	}
	var parts []string
	for _, g := range groups {
		parts = append(parts, fmt.Sprintf("%.12s by %s (%d node(s))", g.Sum, g.Toolchain, len(g.Nodes)))
	}
	word := "binaries"
	if len(groups) == 1 {
		word = "binary"
	}
	return fmt.Sprintf("%d distinct %s: %s", len(groups), word, strings.Join(parts, "; "))
}

// promotionNote says why an automatic promotion that is due has not happened: the leader asks
// every canary how its ducks are first, and waits while one does not answer (a canary whose
// node was killed kept the rollout paused with nothing to say why).
func promotionNote(r *rollout.Rollout, now time.Time) string {
	p := r.Policy.WithDefaults()
	if !r.AutoPromoting() {
		return ""
	}
	late := now.Sub(r.PausedAt) - p.AutoPromoteAfter
	if late < 2*time.Second {
		return ""
	}
	return fmt.Sprintf("the promotion is %s past due: the leader promotes only once every canary answers that its ducks are healthy; `members` and `ducks` show which does not", late.Round(time.Second))
}

// policyLine is the rules a rollout runs under, each bound a phase has.
func policyLine(p rollout.Policy) string {
	p = p.WithDefaults()
	line := fmt.Sprintf("build deadline %s, progress deadline %s, healthy %s, start deadline %s, down after %s",
		p.BuildDeadline, p.ProgressDeadline, p.Healthy, p.StartDeadline, p.DownAfter)
	switch {
	case p.MaxParallelPercent > 0:
		line += fmt.Sprintf(", %d%% at once", p.MaxParallelPercent)
	case p.MaxParallel > 1:
		line += fmt.Sprintf(", %d at once", p.MaxParallel)
	}
	if p.Canaries > 0 {
		line += fmt.Sprintf(", %d canaries", p.Canaries)
		if p.AutoPromoteAfter > 0 {
			line += fmt.Sprintf(" promoted after %s", p.AutoPromoteAfter)
		}
	}
	if p.WaveBy != "" {
		line += ", waves by " + p.WaveBy
	}
	if p.FailureBudget > 0 {
		line += fmt.Sprintf(", failure budget %d", p.FailureBudget)
	}
	if p.SameBinary {
		line += ", one binary"
	}
	return line
}

// phaseTime is how long node nr has been in its phase, or took for its turn; for a rollout that
// has ended (ended), how long it was in its phase until then, not a clock that runs on.
func phaseTime(nr *rollout.Node, ended time.Time) string {
	end := time.Now()
	if !ended.IsZero() {
		end = ended
	}
	// A node going back was granted again after its turn's end: its Done is the earlier turn's
	// (it printed -3.039s).
	if !nr.Done.IsZero() && !nr.Granted.IsZero() && !nr.Done.Before(nr.Granted) {
		return nr.Done.Sub(nr.Granted).Round(time.Millisecond).String()
	}
	// A build that ended after the rollout halted is still reported (-100ms before).
	if nr.Since.IsZero() || end.Before(nr.Since) {
		return "-"
	}
	return end.Sub(nr.Since).Round(100 * time.Millisecond).String()
}

// phaseLabel is a node's phase as the tables show it: a turn back that failed is recorded as
// reverted with the reason, and the node stayed on the target.
// caughtUp reports whether a node the ended rollout r skipped runs now what r left the cluster
// on: it caught up.
func caughtUp(r *rollout.Rollout, nr *rollout.Node, l *api.Local) bool {
	if r == nil || r.Active() || nr.Phase != rollout.Skipped || l == nil {
		return false
	}
	want := r.From
	if r.State == rollout.Done {
		want = r.Version
	}
	return want > 0 && string(l.Label) == want.Label()
}

func phaseLabel(nr *rollout.Node) string {
	if nr.CouldNotGoBack() {
		return "not reverted"
	}
	return string(nr.Phase)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// printChanges prints a line for each node whose phase changed since the last call, in the order
// the phases were entered (the rollout's order for ties): a poll that saw c reverted and b
// reverting printed them in the rollout's order, as if they had gone back at once.
func printChanges(w io.Writer, r *rollout.Rollout, seen map[string]string) {
	var changed []string
	for _, name := range r.Order {
		if seen[name] != string(r.Nodes[name].Phase) {
			changed = append(changed, name)
		}
	}
	slices.SortStableFunc(changed, func(a, b string) int { return r.Nodes[a].Since.Compare(r.Nodes[b].Since) })
	for _, name := range changed {
		nr := r.Nodes[name]
		seen[name] = string(nr.Phase)
		line := fmt.Sprintf("  %s: %s", name, phaseLabel(nr))
		if nr.Phase == rollout.Running || nr.Phase == rollout.Reverted {
			line += " (" + phaseTime(nr, r.Ended) + ")"
		}
		if nr.Error != "" {
			line += ": " + nr.Error
		}
		fmt.Fprintln(w, line)
	}
	if seen[""] != string(r.State) {
		seen[""] = string(r.State)
		fmt.Fprintf(w, "version %d %s: order %s\n", r.Version, r.State, strings.Join(r.Order, " -> "))
	}
}

// outcome turns how a rollout ended into the command's result.
func outcome(r *rollout.Rollout) error {
	switch r.State {
	case rollout.Done:
		var skipped, failed []string
		for _, name := range r.Order {
			switch r.Nodes[name].Phase {
			case rollout.Skipped:
				skipped = append(skipped, name)
			case rollout.Failed:
				failed = append(failed, name)
			}
		}
		if len(failed) > 0 {
			// Within the failure budget the rollout carries on, and says so: "runs on every
			// node" hid a node that failed and runs the version before.
			verb := "run"
			if len(failed) == 1 {
				verb = "runs"
			}
			also := ""
			if len(skipped) > 0 {
				// Said too: the message left skipped nodes out (found by an outside probe).
				also = fmt.Sprintf("; %s %s down and skipped (%s when %s)", strings.Join(skipped, ", "), plural(len(skipped), "was", "were"),
					plural(len(skipped), "it catches up", "they catch up"), plural(len(skipped), "it returns", "they return"))
			}
			return fmt.Errorf("version %d rolled out, but %s failed (within the failure budget of %d) and %s version %d%s: `rollout status` has the errors",
				r.Version, strings.Join(failed, ", "), r.Policy.FailureBudget, verb, r.From, also)
		}
		if len(skipped) > 0 {
			var left, down []string
			for _, name := range skipped {
				if strings.HasPrefix(r.Nodes[name].Error, rollout.LeftMessage) {
					left = append(left, name)
				} else {
					down = append(down, name)
				}
			}
			var parts []string
			if len(down) > 0 {
				parts = append(parts, fmt.Sprintf("%s %s down and skipped; %s when %s", strings.Join(down, ", "), plural(len(down), "was", "were"),
					plural(len(down), "it catches up", "they catch up"), plural(len(down), "it returns", "they return")))
			}
			if len(left) > 0 {
				// Not "catches up when it returns": it left, or was forgotten (found by an
				// outside probe).
				parts = append(parts, fmt.Sprintf("%s left the cluster during it", strings.Join(left, ", ")))
			}
			return fmt.Errorf("version %d rolled out, but %s", r.Version, strings.Join(parts, "; "))
		}
		fmt.Printf("version %d runs on every node (%s)\n", r.Version, r.Ended.Sub(r.Started).Round(time.Millisecond))
		return nil
	case rollout.Paused:
		fmt.Printf("version %d paused: %s\n", r.Version, r.Reason)
		return pausedError{int(r.Version)}
	case rollout.WentBack, rollout.Halted:
		if !slices.ContainsFunc(r.Order, func(n string) bool { return !r.Nodes[n].Granted.IsZero() }) {
			// "reverted" said a swap was undone where none had happened (a version that does
			// not compile fails at its first build).
			return fmt.Errorf("version %d stopped before any node swapped, so every node runs what it ran: %s", r.Version, r.Reason)
		}
	}
	if on := r.OnTarget(); r.State == rollout.Halted && r.FromID != "" && len(on) > 0 && !slices.ContainsFunc(on, func(n string) bool { return r.Nodes[n].CouldNotGoBack() }) {
		// Halted without going back (--no-revert): it said what failed, not what to do.
		return fmt.Errorf("version %d %s: %s; it runs on %s: `rollout undo` takes them back to version %d, or deploy a fixed version", r.Version, r.State, r.Reason, strings.Join(on, ", "), r.From)
	}
	return fmt.Errorf("version %d %s: %s", r.Version, r.State, r.Reason)
}

func runWatch(args []string) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	c := clientFlags(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	return watch(c, 0, false, os.Stdout)
}

// runRollout is `rollout status|history|pause|resume|undo`.
func runRollout(args []string) error {
	fs := flag.NewFlagSet("rollout", flag.ContinueOnError)
	c := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	to := fs.Int("to", 0, "undo: go back to this version instead of the previous one")
	noRevert := fs.Bool("no-revert", false, "undo --to: if the rollout back fails, leave upgraded nodes as they are (as deploy --no-revert; needed to go back across a state layout with no way back)")
	afterWave := fs.Bool("after-wave", false, "pause: let the wave under way end, then pause")
	oneWave := fs.Bool("one-wave", false, "resume: run the next wave only, then pause again")
	force := fs.Bool("force", false, "resume: carry on past canaries whose ducks are not healthy, or cannot say; undo: go back even though the versions' state layouts say it would fail")
	pos, err := parse(fs, args, "status|history|pause|resume|undo")
	if err != nil {
		return err
	}
	toSet := false
	fs.Visit(func(f *flag.Flag) { toSet = toSet || f.Name == "to" })
	if toSet && (pos[0] != "undo" || *to < 1) {
		return usageError{fmt.Sprintf("--to %d: give it with undo, and a version number (1 or more; 'rollout history' lists them)", *to)}
	}
	if *noRevert && (pos[0] != "undo" || !toSet) {
		return usageError{"--no-revert goes with 'rollout undo --to N' (the rollout back to N); a plain undo already goes back"}
	}
	if *afterWave && pos[0] != "pause" || *oneWave && pos[0] != "resume" || *force && pos[0] != "resume" && pos[0] != "undo" {
		return usageError{"--after-wave goes with 'rollout pause', --one-wave with 'rollout resume', --force with 'rollout resume' or 'rollout undo'"}
	}
	switch pos[0] {
	case "status", "history":
		var v api.RolloutView
		path := "/v1/rollout"
		if pos[0] == "status" {
			path += "?canaries=1" // a rollout waiting after its canaries says how they are
		}
		if err := c.call(http.MethodGet, path, nil, &v); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(v)
		}
		if pos[0] == "history" {
			return printHistory(v)
		}
		if v.Rollout == nil {
			fmt.Println("nothing has been deployed yet")
			return nil
		}
		drawRollout(os.Stdout, v.Rollout, v.Leader)
		for _, c := range v.Canaries {
			fmt.Println(canaryLine(c))
		}
		if strings.Contains(v.Rollout.Reason, "\n") {
			fmt.Println(v.Rollout.Reason) // the compiler's words, whole
		}
		return nil
	case "pause", "resume", "undo":
		var res api.CommitResult
		if err := c.call(http.MethodPost, "/v1/rollout", api.RolloutAction{Action: pos[0], To: rollout.Number(*to), NoRevert: *noRevert, Wave: *afterWave || *oneWave, Force: *force}, &res); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(res)
		}
		if pos[0] == "undo" && *to != 0 {
			fmt.Printf("committed version %d (%s), the source of version %d\n", res.N, api.LabelOf(res.ID), *to)
			return watch(c, res.N, false, os.Stdout)
		}
		switch {
		case *afterWave:
			fmt.Printf("version %d: pauses once the wave under way has ended (after the last wave, it is done)\n", res.N)
		case *oneWave:
			fmt.Printf("version %d: resumed for one wave\n", res.N)
		default:
			fmt.Printf("version %d: %s\n", res.N, pos[0])
		}
		if pos[0] != "pause" {
			// The node asked answered once it had applied the change (a change it forwards to
			// the leader waits for that), so what it shows from now on includes it.
			return watch(c, res.N, pos[0] == "undo", os.Stdout)
		}
		return nil
	}
	return usageError{fmt.Sprintf("unknown rollout command %q: status, history, pause, resume or undo", pos[0])}
}

// canaryLine is one canary's health as `rollout status` shows it while the rollout waits after
// its canaries.
func canaryLine(c api.CanaryCheck) string {
	switch {
	case c.Unknown:
		return fmt.Sprintf("canary %s: cannot tell yet (%s)", c.Node, c.Why)
	case !c.Healthy:
		return fmt.Sprintf("canary %s: NOT HEALTHY: %s (`rollout undo` goes back; `rollout resume --force` carries on anyway)", c.Node, c.Why)
	}
	return fmt.Sprintf("canary %s: healthy", c.Node)
}

func printHistory(v api.RolloutView) error {
	outcome := map[rollout.Number]rollout.State{}
	for _, r := range append(v.Past, v.Rollout) {
		if r != nil {
			outcome[r.Version] = r.State
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tID\tCOMMITTED\tBY\tROLLOUT\tMESSAGE")
	for _, ver := range v.Versions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", ver.N, api.LabelOf(ver.ID), ver.Committed.Local().Format("2006-01-02 15:04:05"), cell(ver.Author), outcome[ver.N], cell(ver.Message))
	}
	return tw.Flush()
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// runStatus is every node at a glance: role, reachability, version, rollout phase, ducks.
func runStatus(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	c := clientFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var st api.Status
	if err := c.call(http.MethodGet, "/v1/status", nil, &st); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(st)
	}
	if st.Removed != "" {
		fmt.Printf("%s\nWhat follows is what this node last knew.\n", st.Removed)
	}
	fmt.Println(tolerance(st))
	if r := st.Rollout.Rollout; r != nil {
		fmt.Printf("version %d %s, order %s\n", r.Version, r.State, strings.Join(r.Order, " -> "))
		if r.Reason != "" {
			fmt.Printf("  %s\n", firstLine(r.Reason))
		}
		if line := binariesLine(r); line != "" {
			fmt.Printf("  %s\n", line)
		}
		if note := promotionNote(r, time.Now()); note != "" {
			fmt.Printf("  %s\n", note)
		}
	}
	var ended time.Time
	if r := st.Rollout.Rollout; r != nil {
		ended = r.Ended
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tREACHABLE\tVERSION\tPHASE\tFOR\tDUCKS")
	for _, n := range st.Nodes {
		version, ducks := "?", "?"
		if n.Local != nil {
			version = string(n.Local.Label)
			var ds []string
			for _, d := range n.Local.Ducks {
				if d.Restarts > 0 {
					// A duck that crash-loops read "running" between its crashes.
					ds = append(ds, fmt.Sprintf("%s(%s,%s,%d restarts)", d.ID, d.Version, d.State, d.Restarts))
					continue
				}
				ds = append(ds, fmt.Sprintf("%s(%s,%s)", d.ID, d.Version, d.State))
			}
			ducks = strings.Join(ds, " ")
		}
		phase, since := "-", "-"
		if n.Rollout != nil {
			phase, since = phaseLabel(n.Rollout), phaseTime(n.Rollout, ended)
			if r := st.Rollout.Rollout; caughtUp(r, n.Rollout, n.Local) {
				// "skipped" read as if the node still lagged (found by an outside probe).
				phase = "skipped, caught up"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Member.Name, n.Member.Role, yesNo(n.Reachable), version, phase, since, ducks)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printDuckUsers(st)
	return nil
}

// printDuckUsers says, once, that ducks run as their node's user and what follows: a duck is
// code its deployer wrote, and the node's user is what it can act as.
func printDuckUsers(st api.Status) {
	for _, n := range st.Nodes {
		if n.Local != nil && strings.HasPrefix(n.Local.DuckUser, "shared") {
			fmt.Println("\nducks run as their node's user: a duck can read and write what that user can (the cookie file,")
			fmt.Println("the data and build folders) but not the node's memory or environment; see docs/SECURITY.md")
			return
		}
	}
}

// tolerance says how many more voters the cluster can lose and still commit, from those that
// answered: it counted every voter, so with two of five gone it still said "can lose 2" (found
// by trying it).
func tolerance(st api.Status) string {
	quorum := st.Voters/2 + 1
	head := fmt.Sprintf("%d voters of %d members", st.Voters, len(st.Nodes))
	switch down := st.Voters - st.VotersReachable; {
	case st.VotersReachable < quorum:
		return fmt.Sprintf("%s, %d of them answering: fewer than the %d needed, so the cluster cannot commit until enough are back", head, st.VotersReachable, quorum)
	case down > 0:
		return fmt.Sprintf("%s, %d not answering: the cluster can lose %d more of them and still commit", head, down, st.VotersReachable-quorum)
	}
	return fmt.Sprintf("%s: the cluster can lose %d of them and still commit", head, st.Tolerates)
}

// cell is s for one cell of a table: escaped as term.Safe does, and its line breaks and tabs
// too, which term.Safe keeps (a message could otherwise add rows to the table).
func cell(s string) string {
	return strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`).Replace(term.Safe(s))
}

// wentBack is how an undo that went back ends. A node skipped after its turn began (down, or
// silent) may still run the version: "every node is back" and exit 0 hid it (found by an
// outside probe).
func wentBack(r *rollout.Rollout) error {
	var away []string
	for _, name := range r.Order {
		if nr := r.Nodes[name]; nr.Phase == rollout.Skipped && !nr.Granted.IsZero() {
			away = append(away, name)
		}
	}
	if len(away) > 0 {
		return fmt.Errorf("version %d reverted, but %s %s skipped while down and may still run it; %s back to version %d when %s", r.Version,
			strings.Join(away, ", "), plural(len(away), "was", "were"), plural(len(away), "it goes", "they go"), r.From, plural(len(away), "it returns", "they return"))
	}
	fmt.Printf("version %d reverted: every node is back on version %d\n", r.Version, r.From)
	return nil
}

// plural picks one or many by n.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
