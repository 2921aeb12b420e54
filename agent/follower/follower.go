// Package follower is every node's side of a rolling upgrade: it builds a version as soon as it
// is committed, swaps the node's ducks when the leader grants it a turn, reports each phase
// through the log, and brings a node that was away to the version the cluster settled on once a
// rollout has ended. What to do is rollout.Follow's decision, a function of the log and of what
// the node remembers; this package only carries it out, one duty at a time.
//
// It reaches the rest of the node through four small interfaces: the log as this node applied it
// (Log), the leader (Leader), the build of a version (Builder) and the node's ducks (Ducks), so
// that it runs under test with fakes of each.
package follower

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// Log is the replicated log as this node has applied it.
type Log interface {
	// Rollout is the current rollout, nil before the first commit.
	Rollout() *rollout.Rollout
	// Changed is closed at the next change of the applied state.
	Changed() <-chan struct{}
	IsLeader() bool
	// Index is how many commands this node's state has applied.
	Index() uint64
}

// Leader is how the follower reaches the cluster's leader.
type Leader interface {
	// StateIndex is the leader's own applied index; an error when no leader answered.
	StateIndex(ctx context.Context) (uint64, error)
	// Report has the leader commit a report. An *api.APIError with status 409 means the log
	// refused it (the rollout moved on); any other error is worth trying again.
	Report(ctx context.Context, r Report) error
}

// Report is a node's word on its part in a rollout.
type Report struct {
	N      rollout.Number // the rollout's version number
	Node   string
	Phase  rollout.Phase
	Error  string
	Build  *rollout.BuildInfo // with Phase Built: what the build made
	States *rollout.StateInfo // with Phase Built: what the binaries say of the ducks' state
}

// Builder builds committed versions on this node.
type Builder interface {
	// Build keeps version id's bundle (from the log if the node does not have it) and builds it.
	Build(ctx context.Context, id bundle.ID) error
	// BuildInfo is the sum of the binary built for id and the toolchain that built it.
	BuildInfo(ctx context.Context, id bundle.ID) (rollout.BuildInfo, error)
	// StateInfo is what r's target and previous binaries say of the ducks' state, nil when
	// either cannot say.
	StateInfo(ctx context.Context, r *rollout.Rollout) *rollout.StateInfo
}

// Ducks is what this node runs.
type Ducks interface {
	// Local is what the node remembers of itself across restarts.
	Local() rollout.Local
	// SetActed and SetSynced remember a turn taken and a rollout end caught up with, durably.
	SetActed(key string) error
	SetSynced(key string) error
	// SwitchTo swaps every duck here to version id (its bundle kept from the log if need be),
	// each new duck staying up for healthy; on failure the ducks stay on what they ran.
	SwitchTo(ctx context.Context, id bundle.ID, healthy time.Duration) error
}

// Config is what a follower acts for and through.
type Config struct {
	Name    string // this node
	Log     Log
	Leader  Leader
	Builder Builder
	Ducks   Ducks
	Logger  *slog.Logger
}

// Follower is this node's side of rollouts.
type Follower struct {
	cfg Config
	log *slog.Logger

	// ctx ends when the follower stops, so that builds, swaps and reports in flight end with it
	// rather than report a stop as a failure.
	ctx context.Context
	wg  sync.WaitGroup

	mu       sync.Mutex
	building map[rollout.Number]bool // rollouts whose target this process has started building
	busy     bool                    // a turn or catch-up is running
	retryAt  time.Time               // a failed catch-up is not tried again before this
	// failedKey and failures count the catch-ups of one rollout's end that failed in a row: each
	// holds the ducks' requests while a new generation starts and dies, so they come further
	// apart (5 s, doubling, up to catchUpBackoffMax).
	failedKey string
	failures  int
	// told is the key of the last turn whose end the log took from this process: until this
	// node's state shows it, its view of that turn is older than what it said.
	told string
	// upTo is the leader's state index when asked at askedAt (0: no leader answered).
	upTo    uint64
	askedAt time.Time
	// granted holds the last grant the leader told of (Granted), until the next round.
	granted chan grant
}

// grant is the leader's rollout as it stood once it had committed a grant, at log index index.
type grant struct {
	index uint64
	r     *rollout.Rollout
}

// New returns a follower; Run starts it.
func New(cfg Config) *Follower {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Follower{cfg: cfg, log: cfg.Logger, building: map[rollout.Number]bool{}, granted: make(chan grant, 1)}
}

// Granted is the leader telling this node, once the entry is committed, that it granted it a
// turn: r is the leader's rollout at log index index. A node learns of a commit from Raft only
// at the leader's next replication to it (50 to 100 ms later when nothing else is written, and
// up to twice that at a hundred members); told, it takes the turn at once. What it is told was
// committed, so acting on it is acting on the log, only sooner; a grant the node has applied
// already (index not past its own), or of a rollout whose commit it has yet to apply, is left
// to its own round, and only a turn is taken from it.
func (f *Follower) Granted(index uint64, r *rollout.Rollout) {
	if r == nil {
		return
	}
	for {
		select {
		case f.granted <- grant{index, r}:
			return
		default:
		}
		select {
		case <-f.granted: // an older one, not yet looked at: the newer replaces it
		default:
		}
	}
}

// probeTimeout is how long the leader may take to say how far its log is applied.
const probeTimeout = time.Second

// Run follows rollouts until ctx ends, then waits for the builds, turns and reports it started.
func (f *Follower) Run(ctx context.Context) {
	f.ctx = ctx
	defer f.wg.Wait()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		// Taken before the round, so that a grant applied while it runs wakes the next one.
		changed := f.cfg.Log.Changed()
		// The index first: the rollout read after it is at least as new.
		at := f.cfg.Log.Index()
		f.round(f.cfg.Log.Rollout(), at, false)
		select {
		case <-f.ctx.Done():
			return
		case <-t.C:
		case <-changed:
		case g := <-f.granted:
			if f.newer(g) {
				f.round(g.r, g.index, true)
			}
		}
	}
}

// newer reports whether g tells this node more than its own log: it is past the node's index,
// of the rollout the node has applied the commit of. A node that has not (one replaying its log
// after a restart) knows neither the version's name nor what it ran before: it acted on a word
// of version 4 as on an unnamed version (found by TestNemesis), and waits for its log instead.
func (f *Follower) newer(g grant) bool {
	own := f.cfg.Log.Rollout()
	return g.index > f.cfg.Log.Index() && own != nil && own.Version == g.r.Version
}

// round is one look at the log: build what was committed, take the node's turn when granted,
// catch up with the cluster once a rollout has ended. Woken by the log (a grant, a report) at
// once, by the leader's word of a grant (told: r is the leader's, and only a turn is taken from
// it), while a ticker catches what the log does not announce (timeouts, a leader change, a Raft
// reset on connect).
//
// at is the log index r is at least as new as: whether the node has the whole log is judged by
// r's index, not by the index when the leader answers (the log goes on applying while the node
// asks; a restarted node judged by the later index acted on a rollout from its replay, and
// swapped its ducks to a version undone long ago for a moment, found by trying it).
func (f *Follower) round(r *rollout.Rollout, at uint64, told bool) {
	if r == nil {
		return
	}
	f.mu.Lock()
	building := f.building[r.Version]
	f.mu.Unlock()
	if r.NeedsBuild(f.cfg.Name, building) {
		f.prebuild(r)
	}
	f.mu.Lock()
	busy := f.busy
	f.mu.Unlock()
	if busy {
		// One duty at a time: a turn under way changes what this node runs, so what to do
		// next is decided once it is over (deciding now marked a node synced on the
		// version it was leaving).
		return
	}
	l := f.cfg.Ducks.Local()
	duty := r.Follow(f.cfg.Name, l)
	if told && duty.Kind != rollout.Turn {
		return
	}
	f.mu.Lock()
	reported := f.told
	f.mu.Unlock()
	if duty.Kind == rollout.Idle || duty.Kind == rollout.Report && duty.Key == reported {
		// A turn that ended here and whose report the log took looks unreported until this
		// node applies the report: saying it again put a second entry in the log for a node in
		// ten at a hundred members.
		return
	}
	// A duty is acted on only once this node has the whole log. A restarted node replays it,
	// and the states it passes through are history: a turn it took long ago looks like a turn
	// under way (it swapped a duck back to version 1, found by TestLeaderKilledWhileCommitting
	// once followers learnt commits 50 ms later), and what the cluster settled on is known only
	// at the end.
	//
	// A turn granted less than probeEvery ago needs no asking: the node's state holds the grant,
	// so it holds everything the leader had applied when it granted it, as much as the leader's
	// answer would tell. Asking cost every turn whose node had waited for over a second a round
	// trip to the leader (30 to 200 ms at a hundred members). The clocks of the leader, which
	// stamps the grant, and of the node are assumed to agree within a fraction of a second; a
	// turn taken on a view that was stale after all is refused at its end and undone.
	fresh := duty.Kind == rollout.Turn && r.GrantedWithin(f.cfg.Name, time.Now(), probeEvery)
	if !fresh && !f.caughtUp(at) {
		return
	}
	switch duty.Kind {
	case rollout.Turn:
		f.turn(r, duty)
	case rollout.Report:
		f.reportAgain(r, duty, l.Have)
	case rollout.CatchUp:
		f.catchUp(r, duty)
	case rollout.MarkSynced:
		f.setSynced(duty.Key)
	}
}

// probeEvery is how long the leader's answer to how far its log is applied stands.
const probeEvery = time.Second

// caughtUp reports whether this node's FSM has applied every command the leader's had when last
// asked (at most a second ago). A restarted node replays the log in batches, and Raft's own
// applied index runs ahead of the FSM: catching up with the rollout it found halfway swapped
// ducks to a version the log had already moved past (found by TestLeaderKilledWhileCommitting).
// The mark is the leader's FSM index, not Raft's commit index, which counts configuration
// entries that never reach an FSM: a node that joined last would wait for ever. The leader is
// asked once a second, not at every look, so a node is not left behind by a leader that keeps
// committing.
func (f *Follower) caughtUp(at uint64) bool {
	if f.cfg.Log.IsLeader() {
		return true
	}
	f.mu.Lock()
	target, asked := f.upTo, f.askedAt
	f.mu.Unlock()
	if time.Since(asked) > probeEvery {
		target = 0
		ctx, cancel := context.WithTimeout(f.ctx, probeTimeout)
		if i, err := f.cfg.Leader.StateIndex(ctx); err == nil {
			target = max(i, 1)
		}
		cancel()
		f.mu.Lock()
		f.upTo, f.askedAt = target, time.Now()
		f.mu.Unlock()
	}
	return target > 0 && at >= target
}

// prebuild starts building the rollout's target at once, so that the rollout waits on swaps, not
// builds. A version that does not build fails the rollout before any node swaps.
func (f *Follower) prebuild(r *rollout.Rollout) {
	f.mu.Lock()
	if f.building[r.Version] {
		f.mu.Unlock()
		return
	}
	f.building[r.Version] = true
	f.mu.Unlock()
	// The first node in the order starts at once and every other one a moment later, so that the
	// first takes the host's build slot and the others its result.
	stagger := time.Duration(min(slices.Index(r.Order, f.cfg.Name), 1)) * 100 * time.Millisecond
	deadline := r.Started.Add(r.Policy.WithDefaults().BuildDeadline)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		// Building is said while the build runs, not before it starts: a hundred nodes saying it
		// at once waited up to 0.8 s for the leader. What this node says next waits for it, so
		// that the leader hears the two in order.
		said := make(chan struct{})
		go func() {
			defer close(said)
			f.report(r.Version, rollout.Building, "")
		}()
		defer func() { <-said }()
		select {
		case <-time.After(stagger):
		case <-f.ctx.Done():
			return
		}
		// Past the build deadline the leader fails the rollout anyway; a build that hangs must
		// not hold this node's one build slot for longer.
		ctx, cancel := context.WithDeadline(f.ctx, deadline)
		defer cancel()
		err := f.cfg.Builder.Build(ctx, r.Target)
		if f.ctx.Err() != nil {
			return
		}
		<-said
		if err != nil {
			f.report(r.Version, rollout.Failed, Failure(err))
			return
		}
		info, err := f.cfg.Builder.BuildInfo(ctx, r.Target)
		if err != nil {
			f.log.Warn("what the build made", "version", r.Version, "err", err)
			f.report(r.Version, rollout.Built, "")
			return
		}
		f.send(Report{N: r.Version, Node: f.cfg.Name, Phase: rollout.Built, Build: &info, States: f.cfg.Builder.StateInfo(ctx, r)})
	}()
}

// Failure is an error as the rollout records it: a compiler's words verbatim.
func Failure(err error) string {
	var ce *build.CompileError
	if errors.As(err, &ce) {
		return "does not compile:\n" + ce.Output
	}
	return err.Error()
}

// turn swaps every duck here to the duty's version because the leader granted it, and reports
// the outcome.
//
// The start of a forward turn (swapping) is said beside the swap, not before it: waiting for
// the leader to commit it put a round trip through the log in every turn (0.1 to 0.25 s at a
// hundred members). The end is what counts: a turn whose running report the log refuses (the
// rollout went back or halted before it heard of the swap, or gave up on the node) goes back to
// what the node ran, so the log and the ducks agree again.
func (f *Follower) turn(r *rollout.Rollout, duty rollout.Duty) {
	if !f.claim() {
		return
	}
	me := r.Nodes[f.cfg.Name]
	had := f.cfg.Ducks.Local().Have
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer f.release()
		if duty.Success == rollout.Running && me.Phase == rollout.Granted {
			said := make(chan struct{})
			go func() {
				defer close(said)
				f.report(r.Version, rollout.Swapping, "")
			}()
			// The turn ends once both reports are answered, so that the next one waits.
			defer func() { <-said }()
		}
		p := r.Policy.WithDefaults()
		ctx, cancel := context.WithTimeout(f.ctx, p.ProgressDeadline)
		defer cancel()
		err := f.cfg.Ducks.SwitchTo(ctx, duty.Version, p.Healthy)
		if f.ctx.Err() != nil {
			// Stopping is not the version's fault: report nothing and leave the turn open, so
			// the restarted agent takes it again.
			return
		}
		if err != nil {
			f.setActed(duty.Key)
			f.log.Error("rollout turn failed", "version", r.Version, "err", err)
			if duty.Success == rollout.Running {
				f.end(r.Version, duty.Key, rollout.Failed, Failure(err))
			} else {
				f.end(r.Version, duty.Key, duty.Success, "could not go back: "+err.Error())
			}
			return
		}
		// A turn that went well is marked acted beside its report, not before it: a write that
		// waits for the disk took 21 ms (median) of each turn at a hundred members. Lost with the
		// process before the report, the turn is taken again after the restart and finds the
		// version there (SwitchTo says done at once), so the report is the same.
		acted := make(chan struct{})
		go func() {
			defer close(acted)
			f.setActed(duty.Key)
		}()
		defer func() { <-acted }()
		if f.end(r.Version, duty.Key, duty.Success, "") || duty.Success != rollout.Running || f.ctx.Err() != nil {
			return
		}
		f.undo(ctx, r, duty.Version, had)
	}()
}

// undo takes a node whose swap the log refused back to the version it ran before.
func (f *Follower) undo(ctx context.Context, r *rollout.Rollout, swapped, had bundle.ID) {
	if had == "" || had == swapped {
		return
	}
	f.log.Warn("the log did not take this turn: going back", "version", r.Version, "to", api.LabelOf(had))
	if err := f.cfg.Ducks.SwitchTo(ctx, had, r.Policy.WithDefaults().Healthy); err != nil && f.ctx.Err() == nil {
		// The ducks stay on the version the turn brought; the catch-up at the rollout's end
		// brings them to the cluster's choice.
		f.log.Error("going back after a refused turn", "version", r.Version, "err", err)
	}
}

// reportAgain says once more how a turn that ended here went: its report went down with the
// process that sent it.
func (f *Follower) reportAgain(r *rollout.Rollout, duty rollout.Duty, have bundle.ID) {
	if !f.claim() {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer f.release()
		msg := ""
		if have != duty.Version {
			msg = "the swap did not complete: its agent stopped before it could report, and the ducks run what they ran"
			if duty.Success == rollout.Reverted {
				msg = "could not go back: " + msg
			}
		}
		f.log.Info("reporting a turn again", "version", r.Version, "phase", duty.Success)
		f.end(r.Version, duty.Key, duty.Success, msg)
	}()
}

// catchUp brings a node that was away (skipped, down during a commit, joined later) to the
// version the cluster settled on, once the rollout has ended. It acts once per rollout end, so a
// version loaded by hand on this node stays until the cluster moves on.
func (f *Follower) catchUp(r *rollout.Rollout, duty rollout.Duty) {
	f.mu.Lock()
	wait := time.Now().Before(f.retryAt)
	f.mu.Unlock()
	if wait || !f.claim() {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer f.release()
		p := r.Policy.WithDefaults()
		ctx, cancel := context.WithTimeout(f.ctx, p.BuildDeadline+p.ProgressDeadline)
		defer cancel()
		f.log.Info("catching up with the cluster", "version", r.Version, "to", api.LabelOf(duty.Version))
		if err := f.cfg.Ducks.SwitchTo(ctx, duty.Version, p.Healthy); err != nil {
			if f.ctx.Err() == nil {
				f.mu.Lock()
				if f.failedKey != duty.Key {
					f.failedKey, f.failures = duty.Key, 0
				}
				f.failures++
				wait := catchUpBackoff(f.failures)
				f.retryAt = time.Now().Add(wait)
				f.mu.Unlock()
				f.log.Error("catch up failed; will retry", "in", wait, "failures", f.failures, "err", err)
			}
			return
		}
		f.mu.Lock()
		f.failedKey, f.failures = "", 0
		f.mu.Unlock()
		f.setSynced(duty.Key)
	}()
}

// catchUpBackoffMax bounds the wait between catch-ups that keep failing.
const catchUpBackoffMax = 5 * time.Minute

// catchUpBackoff is the wait after the nth catch-up in a row that failed: 5 s, doubling.
func catchUpBackoff(n int) time.Duration {
	d := 5 * time.Second
	for i := 1; i < n && d < catchUpBackoffMax; i++ {
		d *= 2
	}
	return min(d, catchUpBackoffMax)
}

// end reports how the turn key ended, and remembers that the log took it.
func (f *Follower) end(n rollout.Number, key string, phase rollout.Phase, msg string) bool {
	if !f.report(n, phase, msg) {
		return false
	}
	f.mu.Lock()
	f.told = key
	f.mu.Unlock()
	return true
}

// report sends this node's progress to the leader (see send).
func (f *Follower) report(n rollout.Number, phase rollout.Phase, msg string) bool {
	return f.send(Report{N: n, Node: f.cfg.Name, Phase: phase, Error: msg})
}

// send has the leader commit a report, retrying through elections: a lost report would stall
// the rollout until the swap timeout. It says whether the log took it: false when the leader
// refused it (the rollout moved on) or the follower is stopping.
func (f *Follower) send(rep Report) bool {
	for attempt := 0; ; attempt++ {
		if f.ctx.Err() != nil {
			return false // stopping: a stop is not a failure to report
		}
		ctx, cancel := context.WithTimeout(f.ctx, 10*time.Second)
		err := f.cfg.Leader.Report(ctx, rep)
		cancel()
		var ae *api.APIError
		switch {
		case err == nil:
			return true
		case errors.As(err, &ae) && ae.Status == http.StatusConflict:
			f.log.Info("report not taken", "phase", rep.Phase, "reason", err)
			return false
		}
		f.log.Warn("report", "phase", rep.Phase, "attempt", attempt, "err", err)
		select {
		case <-f.ctx.Done():
			return false
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (f *Follower) setActed(key string) {
	if err := f.cfg.Ducks.SetActed(key); err != nil {
		f.log.Error("save local state", "err", err)
	}
}

func (f *Follower) setSynced(key string) {
	if err := f.cfg.Ducks.SetSynced(key); err != nil {
		f.log.Error("save local state", "err", err)
	}
}

// claim takes the node's one duty slot; false when a turn or catch-up holds it.
func (f *Follower) claim() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy {
		return false
	}
	f.busy = true
	return true
}

func (f *Follower) release() {
	f.mu.Lock()
	f.busy = false
	f.mu.Unlock()
}
