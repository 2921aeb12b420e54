// Package driver is the leader's side of a rolling upgrade: at every look at the log it commits
// whatever rollout.Steps says, with Raft's view of which members the leader still reaches. Only
// the leader acts, and since the next steps are a function of the log and that view alone, a new
// leader continues where the old one stopped.
package driver

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
)

// Log is the replicated log as the leader sees it.
type Log interface {
	IsLeader() bool
	// Rollout is the current rollout, nil before the first commit.
	Rollout() *rollout.Rollout
	// Silence is how long each member has not answered the leader.
	Silence() rollout.Silence
	// Changed is closed at the next change of the applied state.
	Changed() <-chan struct{}
	// CommitSteps appends the steps of one round to the log as one entry: all apply or none.
	CommitSteps(r *rollout.Rollout, steps []rollout.Step, now time.Time) error
	// Index is the log index of the last entry the leader's state applied.
	Index() uint64
}

// MaxSteps bounds the leader's moves committed in one log entry (a wave's grants, skips): a
// hundred steps make an entry of about 20 kB.
const MaxSteps = 100

// Driver moves rollouts forward while its node leads.
type Driver struct {
	Log    Log
	Logger *slog.Logger
	// Tick is how often a round runs with no change to the log (100 ms when zero).
	Tick time.Duration
	// Tell, when set, tells each node granted a turn of it once the grant is committed, with
	// the rollout as the leader has it then (api.Grant, encoded once for all), at log index
	// index: a node learns of a commit from Raft only at the leader's next replication to it.
	Tell func(node string, index uint64, grant []byte)
	// CanaryHealth, when set, is asked about each canary before an automatic promotion
	// (--auto-promote-after), with how long ago the leader took its report that its turn ended:
	// why its ducks are not healthy ("" when every one ran that long without a crash), or an
	// error when it cannot tell yet (the node does not answer, a duck is mid-swap): then the
	// promotion waits. The log alone says only that the canaries' turns ended well; a duck that
	// crashes after its healthy wait was promoted with the rest.
	CanaryHealth func(node string, runningFor time.Duration) (why string, err error)

	mu      sync.Mutex
	runs    bool          // Run was called: rounds take the reports EndTurn hands over
	ended   []turnEnd     // reports waiting for the next round (EndTurn)
	wake    chan struct{} // a report is waiting
	stopped chan struct{} // closed when Run returns: no round will take a report
}

// turnEnd is a node's report that its turn ended, waiting to be committed by a round.
type turnEnd struct {
	n     rollout.Number
	step  rollout.Step
	taken chan bool // whether the round's entry, with the report in it, was committed
}

func (d *Driver) init() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.wake == nil {
		d.wake, d.stopped = make(chan struct{}, 1), make(chan struct{})
	}
}

// EndTurn hands the report of a node whose turn ended (running, or reverted going back) to the
// next round, which commits it in one entry with the grants it frees, and says whether that entry
// was committed. False when this node does not lead, the report ends no turn of the rollout under
// way, the round could not take it or the log did not take the entry: the caller then appends the
// report alone. (An entry whose commit raft could not confirm, leadership lost, may still be
// committed: the report is then proposed again, as on the plain path.)
//
// Before, the leader committed the report, and its next round granted the node after it in a
// second entry: 30 to 99 ms p50 between a turn and the next at a hundred members. The round is
// the only one that commits the leader's steps, so every report and grant is computed from the
// state with all of the leader's earlier entries applied. (Reports committed by their own
// handlers, each with the grants it freed, raced each other and the round: a refused entry still
// shaped what was computed beside it, and a node was granted before one earlier in the order.)
func (d *Driver) EndTurn(n rollout.Number, node string, phase rollout.Phase, msg string) bool {
	if phase != rollout.Running && phase != rollout.Reverted || !d.Log.IsLeader() {
		return false
	}
	if r := d.Log.Rollout(); !r.Active() || r.Version != n {
		return false
	}
	te := turnEnd{n: n, step: rollout.Step{Op: rollout.OpReport, Node: node, Phase: phase, Message: msg, Why: node + " " + string(phase)}, taken: make(chan bool, 1)}
	d.mu.Lock()
	if !d.runs { // Run made wake and stopped before it set runs
		d.mu.Unlock()
		return false
	}
	d.ended = append(d.ended, te)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	select {
	case ok := <-te.taken:
		return ok
	case <-d.stopped:
		// No round will take it, unless one took it already and is answering.
		d.mu.Lock()
		i := slices.IndexFunc(d.ended, func(e turnEnd) bool { return e.taken == te.taken })
		if i >= 0 {
			d.ended = slices.Delete(d.ended, i, i+1)
		}
		d.mu.Unlock()
		if i >= 0 {
			return false
		}
		return <-te.taken
	}
}

// takeEnded takes the reports waiting for a round, at most MaxSteps of them (an entry stays
// bounded); the rest wait for the next round, which runs at once.
func (d *Driver) takeEnded() []turnEnd {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := min(len(d.ended), MaxSteps)
	ended := slices.Clone(d.ended[:n])
	d.ended = slices.Delete(d.ended, 0, n)
	if len(d.ended) > 0 {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	return ended
}

// Run drives rollouts until ctx ends: woken by the log (a report) at once, while a ticker
// catches what the log does not announce (deadlines, a leader change, a Raft reset).
//
// A round runs at once, then at every change or tick. The change a round waits for is taken
// before the round before it: a round that commits waits for its entry (20 to 65 ms at a
// hundred members), and reports applied meanwhile were seen only at the next report or tick. At a hundred members a node's running report waited
// 140 ms (median) for the grant of the next node.
func (d *Driver) Run(ctx context.Context) {
	d.init()
	d.mu.Lock()
	if d.runs {
		d.mu.Unlock()
		panic("driver: Run called twice")
	}
	d.runs = true
	d.mu.Unlock()
	defer func() {
		close(d.stopped)
		for _, te := range d.takeEnded() {
			te.taken <- false
		}
	}()
	t := time.NewTicker(cmp.Or(d.Tick, 100*time.Millisecond))
	defer t.Stop()
	for {
		changed := d.Log.Changed()
		d.Round(time.Now().UTC())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		case <-d.wake:
		}
	}
}

// Round commits the steps the rollout can take at now, if this node leads, and returns them;
// none when it does not lead, nothing is rolling out, or the log did not take them.
//
// The reports handed over by EndTurn go first in the round's entry, and its steps are computed
// with them applied; each is answered whether the entry was committed.
func (d *Driver) Round(now time.Time) []rollout.Step {
	ended := d.takeEnded()
	answer := func(ok bool) {
		for _, te := range ended {
			te.taken <- ok
		}
		ended = nil
	}
	defer answer(false) // whatever is still unanswered
	if !d.Log.IsLeader() {
		return nil
	}
	r := d.Log.Rollout()
	if !r.Active() {
		return nil
	}
	after := r
	var reports []rollout.Step
	if len(ended) > 0 && (r.State == rollout.Rolling || r.State == rollout.GoingBack) {
		after = r.Clone()
		var took []turnEnd
		for _, te := range ended {
			if te.n != r.Version || after.Apply(te.step, now) != nil {
				te.taken <- false // alone, the log says why it refuses it
				continue
			}
			took, reports = append(took, te), append(reports, te.step)
		}
		ended = took
	} else {
		answer(false) // not now: each goes in alone, without waiting for the round
	}
	steps := after.Steps(now, d.Log.Silence(), MaxSteps-len(reports))
	if len(reports) > 0 {
		steps = r.SameWave(reports, steps)
	}
	steps = d.checkPromotion(r, steps, now)
	if len(reports)+len(steps) == 0 {
		return nil
	}
	if err := d.Log.CommitSteps(r, append(slices.Clone(reports), steps...), now); err != nil {
		d.logger().Warn("rollout steps", "reports", len(reports), "steps", len(steps), "err", err)
		return nil
	}
	for _, step := range steps {
		d.logger().Info("rollout", "version", r.Version, "step", step.Op, "node", step.Node, "phase", step.Phase, "state", step.State, "why", step.Message)
	}
	d.tell(steps)
	answer(true)
	return steps
}

// checkPromotion lets an automatic promotion of the canaries through only when CanaryHealth
// says every canary is healthy; a canary that is not halts the rollout, or sends it back when
// it reverts by itself, as a failed node would.
func (d *Driver) checkPromotion(r *rollout.Rollout, steps []rollout.Step, now time.Time) []rollout.Step {
	// Paused, the only step rollout.Next takes by itself is the automatic promotion (the
	// grants it allows follow it in the same round).
	if d.CanaryHealth == nil || r.State != rollout.Paused || !r.Canary || len(steps) == 0 || steps[0].Op != rollout.OpState || steps[0].State != rollout.Rolling {
		return steps
	}
	for _, name := range r.RanCanaries() {
		why, err := d.CanaryHealth(name, now.Sub(r.Nodes[name].Done))
		if err != nil {
			d.logger().Debug("canary promotion waits", "node", name, "err", err)
			return nil
		}
		if cur := d.Log.Rollout(); cur == nil || cur.Version != r.Version || cur.State != r.State {
			// The operator (undo, resume) or another leader moved it while the canaries were
			// asked: the verdict is about a rollout that is no more.
			return nil
		}
		if why != "" {
			state := rollout.Halted
			if r.AutoRevert && r.FromID != "" {
				state = rollout.GoingBack
			}
			return []rollout.Step{{Op: rollout.OpState, State: state, Message: fmt.Sprintf("canary %s is not healthy, not promoted: %s", name, why)}}
		}
	}
	return steps
}

// tell tells the nodes granted a turn in steps, which the log has committed.
func (d *Driver) tell(steps []rollout.Step) {
	if d.Tell == nil || !slices.ContainsFunc(steps, func(st rollout.Step) bool { return st.Op == rollout.OpGrant }) {
		return
	}
	// The index first: the rollout read after it is at least as new.
	index := d.Log.Index()
	body, err := json.Marshal(api.Grant{Index: index, Rollout: d.Log.Rollout()})
	if err != nil {
		d.logger().Warn("encoding the grants to tell", "err", err)
		return
	}
	for _, st := range steps {
		if st.Op == rollout.OpGrant {
			d.Tell(st.Node, index, body)
		}
	}
}

func (d *Driver) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.Default()
	}
	return d.Logger
}
