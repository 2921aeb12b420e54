package rollout

import (
	"container/heap"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/duckraft/duckraft/runtime/bundle"
)

// The rollout protocol under a simulated clock and network, in the manner of FoundationDB's
// simulation: the leader's Next and every node's Follow, with builds, swaps, reports and the
// log, run in one goroutine under a seeded schedule of crashes, restarts, partitions, leader
// changes, lost and delayed messages, builds that fail or hang and ducks that die in their
// healthy wait. The same seed replays the same run exactly.
//
// The model keeps what the real agent does (agent/rollout.go) and nothing it does not: a node's
// data folder (Local: what its ducks run, the last turn and catch-up it finished) survives a
// crash, its process memory (builds started, a turn under way) does not; the log is one
// sequence every node reads, in batches, once it reaches the leader, and a restarted node
// replays it from a snapshot, through states that are history; the leader sees a node as silent from
// the moment it stopped answering, or from its own election if that came later.

var (
	simSchedules = flag.Int("sim.schedules", 2000, "rollout simulation: how many seeded schedules to run")
	simSeed      = flag.Uint64("sim.seed", 0, "rollout simulation: run only this seed (a failing run prints its seed)")
	simTrace     = flag.Bool("sim.trace", false, "rollout simulation: print every event of the runs")
)

// regressions are seeds that once failed; each stays a fixed case. (A change to the model
// changes the schedule a seed makes; they stay, as more schedules to run.)
var regressions = []uint64{
	57, 225, 246, 312, 324, // a node marked itself synced on the version its turn was leaving
	428, 498, 700, 754, 1122, 1846, // a paused rollout left skipped nodes behind
	265, 409, 3201, 5299, 7022, 15349, 16049, // a swap counted twice across catch-up and revert
	8, 84, 141, 271, // a restarted node replaying its log acted on a turn that was history
}

func TestSimulatedRolloutsAlwaysEnd(t *testing.T) {
	if *simSeed != 0 {
		if err := simulate(*simSeed, *simTrace, t.Logf); err != nil {
			t.Fatalf("seed %d: %v", *simSeed, err)
		}
		return
	}
	seeds := slices.Clone(regressions)
	for i := range *simSchedules {
		seeds = append(seeds, uint64(i)+1)
	}
	failed := 0
	for _, seed := range seeds {
		if err := simulate(seed, false, nil); err != nil {
			failed++
			t.Errorf("seed %d: %v\n  replay: go test ./rollout/ -run TestSimulatedRolloutsAlwaysEnd -sim.seed %d -sim.trace -v", seed, err, seed)
			if failed >= 5 {
				t.FailNow()
			}
		}
	}
	t.Logf("%d schedules", len(seeds))
}

// Kinds of versions the simulation deploys.
type simKind int

const (
	kindGood      simKind = iota
	kindNoCompile         // the build fails on every node
	kindHangs             // the build never ends
	kindCrashes           // a new duck dies within its healthy wait
)

var simPolicy = Policy{
	StartDeadline: 5 * time.Second, BuildDeadline: 40 * time.Second,
	ProgressDeadline: 20 * time.Second, Healthy: 500 * time.Millisecond, DownAfter: 3 * time.Second,
}

type simEvent struct {
	at  time.Time
	seq int
	fn  func()
}

type simQueue []*simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type simNode struct {
	name   string
	labels map[string]string
	up     bool
	cut    bool // partitioned from the others
	inc    int  // incarnation: what a crash ends carries the old one
	// lost is when the leader's heartbeats stopped reaching it (crash or cut).
	lost time.Time

	// The data folder.
	local Local
	// The process.
	building map[Number]bool
	busy     bool
	retryAt  time.Time
	view     *Rollout // the log as far as this node has it
	// pos is how many states of the log's history the node has applied: a restarted node
	// replays from a snapshot, through states that are history. upTo is the leader's count when
	// last asked (at askedAt), as the agent's caughtUp asks the leader's state index.
	pos     int
	upTo    int
	askedAt time.Time
}

type sim struct {
	rng    *rand.Rand
	now    time.Time
	seq    int
	q      simQueue
	trace  func(string, ...any)
	nodes  []*simNode
	byName map[string]*simNode

	// The log, and every state it went through (what a node replaying it passes).
	log         *Rollout
	history     []*Rollout
	kinds       map[bundle.ID]simKind // bundle ID -> what it does
	numbers     map[bundle.ID]Number  // bundle ID -> version number
	versions    Number
	current     bundle.ID // bundle ID the cluster runs (consensus.State.current)
	leader      string
	leaderSince time.Time
	electing    bool

	faultsUntil time.Time
	policy      Policy
	operator    bool // resumes a paused rollout after a while
	// waveOps: the operator also goes wave by wave (pause --after-wave once a rollout, resume
	// --one-wave half the time), drawn from a stream of its own so that the other draws of a
	// seed stay as they were.
	waveOps   bool
	opRng     *rand.Rand
	wavePause map[Number]bool
	// swaps counts the switches each node made per incarnation, rollout and version.
	swaps map[string]int
	err   error
}

func (s *sim) at(d time.Duration, fn func()) {
	s.seq++
	heap.Push(&s.q, &simEvent{at: s.now.Add(d), seq: s.seq, fn: fn})
}

func (s *sim) logf(format string, args ...any) {
	if s.trace != nil {
		s.trace("%8.3fs "+format, append([]any{s.now.Sub(simStart).Seconds()}, args...)...)
	}
}

func (s *sim) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("at %.3fs: %s", s.now.Sub(simStart).Seconds(), fmt.Sprintf(format, args...))
	}
}

func (s *sim) jitter(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)+1))
}

var simStart = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// reachable: n can talk to the leader (and so read the log and be heard).
func (s *sim) reachable(n *simNode) bool {
	l := s.byName[s.leader]
	return n.up && !n.cut && l != nil && l.up && !l.cut
}

func (s *sim) quorum() bool {
	ok := 0
	for _, n := range s.nodes {
		if n.up && !n.cut {
			ok++
		}
	}
	return ok*2 > len(s.nodes)
}

// silence is the leader's Raft view of each member.
func (s *sim) silence(name string) time.Duration {
	n := s.byName[name]
	if name == s.leader || n.up && !n.cut {
		return 0
	}
	since := n.lost
	if s.leaderSince.After(since) {
		since = s.leaderSince
	}
	return s.now.Sub(since)
}

// change applies one entry to the log, as the leader's FSM would, and checks what must hold
// at every entry.
func (s *sim) change(what string, fn func(r *Rollout) error) error {
	before := s.log.Clone()
	if err := fn(s.log); err != nil {
		s.logf("refused %s: %v", what, err)
		return err
	}
	s.logf("log: %s -> %s", what, s.log.State)
	s.history = append(s.history, s.log.Clone())
	s.checkEntry(before, s.log)
	if !s.log.Active() && before.Active() {
		s.current = s.log.Target
		if s.log.State == WentBack || s.log.State == Halted {
			s.current = s.log.FromID
		}
	}
	return nil
}

func (s *sim) checkEntry(before, after *Rollout) {
	for i, name := range after.Order {
		b, a := before.Nodes[name], after.Nodes[name]
		if b.Phase == a.Phase {
			continue
		}
		switch a.Phase {
		case Granted:
			turns := 0
			for _, other := range after.Order {
				o := after.Nodes[other]
				if o.Wave < a.Wave && !o.Phase.Ended() {
					s.fail("%s (wave %d) granted while %s of wave %d is %s: out of order", name, a.Wave, other, o.Wave, o.Phase)
				}
				if o.Phase == Granted || o.Phase == Swapping {
					turns++
				}
			}
			for _, prev := range after.Order[:i] {
				if p := after.Nodes[prev].Phase; after.Nodes[prev].Wave == a.Wave && (p == Pending || p == Building || p == Built) && !(s.silence(prev) > after.Policy.WithDefaults().DownAfter) {
					s.fail("%s granted before %s (%s) of its wave: out of order", name, prev, p)
				}
			}
			if par := after.Policy.parallel(len(after.Order)); turns > par {
				s.fail("%d nodes in their turn at once, over max-parallel %d", turns, par)
			}
		case Reverting:
			for _, later := range after.Order[i+1:] {
				o := after.Nodes[later]
				if o.Wave > a.Wave && (o.Phase == Running || o.Phase == Reverting) {
					s.fail("%s (wave %d) goes back before %s of wave %d (%s): out of order", name, a.Wave, later, o.Wave, o.Phase)
				}
			}
		case Running:
			// The report is sent after the switch, by the process that made it: a crash since
			// would have ended it.
			if have := s.byName[name].local.Have; have != after.Target {
				s.fail("%s recorded running %s but its ducks run %s", name, lbl(after.Target), lbl(have))
			}
		}
	}
}

func lbl(id bundle.ID) string {
	if id == "" {
		return "(none)"
	}
	return string(id)
}

// send delivers a node's report to the leader, retrying every 500 ms through lost messages,
// partitions and elections, as agent.report does; done gets whether the log took it.
func (s *sim) send(n *simNode, version Number, phase Phase, msg string, done func(bool)) {
	inc := n.inc
	var try func()
	try = func() {
		if !n.up || n.inc != inc {
			return // the process that sent it is gone
		}
		if !s.reachable(n) || s.inFaults() && s.rng.IntN(10) == 0 {
			s.at(500*time.Millisecond, try)
			return
		}
		s.at(s.jitter(time.Millisecond, 30*time.Millisecond), func() {
			if !n.up || n.inc != inc || !s.reachable(n) {
				s.at(500*time.Millisecond, try)
				return
			}
			if s.log.Version != version {
				if done != nil {
					done(false)
				}
				return
			}
			// As the agent's driver.EndTurn: the leader's round takes a report that ends a turn
			// while the rollout rolls or goes back, and commits, in the same entry, the steps it
			// frees in the report's wave (each step checked as its own entry here, as in
			// leaderTick). A quarter of the time it goes alone, as when no round could take it.
			byRound := (phase == Running || phase == Reverted) && (s.log.State == Rolling || s.log.State == GoingBack) && s.quorum() && s.rng.IntN(4) != 0
			before := s.log.Clone()
			err := s.change(fmt.Sprintf("%s reports %s", n.name, phase), func(r *Rollout) error { return r.Report(n.name, phase, msg, s.now) })
			if err == nil && byRound && s.log.Active() {
				s.logf("%s's report taken by the leader's round", n.name)
				report := []Step{{Op: OpReport, Node: n.name, Phase: phase}}
				s.commitSteps(before.SameWave(report, s.log.Steps(s.now, s.silence, maxSteps)))
			}
			if s.inFaults() && s.rng.IntN(10) == 0 {
				// The log took it (or refused it), but the answer is lost: the node says it
				// again, as agent.report retries a call that failed.
				s.logf("%s's report of %s: answer lost", n.name, phase)
				s.at(500*time.Millisecond, try)
				return
			}
			if done != nil {
				done(err == nil)
			}
		})
	}
	try()
}

func (s *sim) inFaults() bool { return s.now.Before(s.faultsUntil) }

// leaderTick is driveRollouts.
func (s *sim) leaderTick() {
	defer s.at(100*time.Millisecond, s.leaderTick)
	l := s.byName[s.leader]
	if l == nil || !l.up || l.cut || !s.quorum() {
		s.elect()
		return
	}
	if !s.log.Active() {
		return
	}
	// As driveRollouts: every move the leader can make now, in one entry (each step is checked
	// as its own entry here, so that the invariants see every intermediate state).
	s.commitSteps(s.log.Steps(s.now, s.silence, maxSteps))
}

// commitSteps commits the leader's steps and tells the nodes it granted a turn.
func (s *sim) commitSteps(steps []Step) {
	for _, st := range steps {
		what := fmt.Sprintf("leader %s: %s %s %s %s", s.leader, st.Op, st.Node, st.Phase, st.State)
		if s.change(what, func(r *Rollout) error { return r.Apply(st, s.now) }) != nil {
			s.fail("a step of the leader's batch was refused: %s", what)
		}
	}
	// As the driver's Tell: each node granted a turn is told, once committed, of the rollout
	// as the leader has it; the word may come late, or be lost, and the node acts on it only
	// when it is newer than what it applied.
	for _, st := range steps {
		n := s.byName[st.Node]
		if st.Op != OpGrant || n == nil || st.Node == s.leader || !s.reachable(n) || s.inFaults() && s.rng.IntN(4) == 0 {
			continue
		}
		told, at, inc := s.log.Clone(), len(s.history), n.inc
		late := s.jitter(time.Millisecond, 40*time.Millisecond) // usually before the node's next look
		if s.rng.IntN(4) == 0 {
			late = s.jitter(40*time.Millisecond, 400*time.Millisecond)
		}
		s.at(late, func() {
			// As the follower's newer: past what the node applied, of the rollout it has.
			if n.up && n.inc == inc && at > n.pos && n.view != nil && n.view.Version == told.Version {
				s.logf("%s told of its grant (log %d, applied %d)", n.name, at, n.pos)
				s.act(n, told, true)
			}
		})
	}
}

// maxSteps is how many moves the simulated leader commits at once, as the agent's driver.
const maxSteps = 64

// elect makes a new leader among the nodes that can form a majority, after an election delay.
func (s *sim) elect() {
	if s.electing {
		return
	}
	s.leader = ""
	s.electing = true
	s.at(s.jitter(400*time.Millisecond, 1200*time.Millisecond), func() {
		s.electing = false
		if !s.quorum() {
			return
		}
		var cands []*simNode
		for _, n := range s.nodes {
			if n.up && !n.cut {
				cands = append(cands, n)
			}
		}
		l := cands[s.rng.IntN(len(cands))]
		s.leader, s.leaderSince = l.name, s.now
		s.logf("%s leads", l.name)
	})
}

// operatorTick is someone who resumes a paused rollout a while after it paused, and with
// waveOps asks for a pause at the end of a wave and resumes one wave at a time.
func (s *sim) operatorTick() {
	defer s.at(time.Second, s.operatorTick)
	if !s.operator || s.leader == "" {
		return
	}
	if s.waveOps && s.log.State == Rolling && !s.wavePause[s.log.Version] {
		s.wavePause[s.log.Version] = true
		s.change("operator pauses after the wave", func(r *Rollout) error { return r.SetWaveState(Paused, s.now) })
		return
	}
	if s.log.State != Paused || s.now.Sub(s.log.PausedAt) < 5*time.Second {
		return
	}
	if s.waveOps && s.opRng.IntN(2) == 0 {
		s.change("operator resumes one wave", func(r *Rollout) error { return r.SetWaveState(Rolling, s.now) })
		return
	}
	s.change("operator resumes", func(r *Rollout) error { return r.SetState(Rolling, "resume by hand", s.now) })
}

// nodeTick is followRollouts.
func (s *sim) nodeTick(n *simNode, inc int) {
	if !n.up || n.inc != inc {
		return
	}
	defer s.at(100*time.Millisecond, func() { s.nodeTick(n, inc) })
	if s.reachable(n) && n.pos < len(s.history) {
		// Applied in batches, as Raft hands a follower its committed entries.
		n.pos = min(len(s.history), n.pos+1+s.rng.IntN(4))
		n.view = s.history[n.pos-1].Clone()
	}
	s.act(n, n.view, false)
}

// act is the follower's round on r: the node's own view, or what the leader told it of a grant
// (told: only a turn is taken from it).
func (s *sim) act(n *simNode, r *Rollout, told bool) {
	if r == nil {
		return
	}
	if r.NeedsBuild(n.name, n.building[r.Version]) {
		s.build(n, r)
	}
	if n.busy {
		return // one duty at a time: what it does changes what it has
	}
	d := r.Follow(n.name, n.local)
	if told && d.Kind != Turn {
		return
	}
	// As the follower: a turn granted less than a second ago needs no asking the leader.
	if d.Kind == Idle || !(d.Kind == Turn && r.GrantedWithin(n.name, s.now, time.Second)) && !s.caughtUp(n) {
		return
	}
	switch d.Kind {
	case Turn:
		s.turn(n, r, d)
	case CatchUp:
		if !s.now.Before(n.retryAt) {
			s.catchUp(n, r, d)
		}
	case Report:
		n.busy = true
		inc := n.inc
		msg := ""
		if n.local.Have != d.Version {
			msg = "the swap did not complete"
		}
		s.send(n, r.Version, d.Success, msg, func(bool) {
			if n.inc == inc {
				n.busy = false
			}
		})
	case MarkSynced:
		n.local.Synced = d.Key
	}
}

func (s *sim) build(n *simNode, r *Rollout) {
	n.building[r.Version] = true
	inc := n.inc
	s.send(n, r.Version, Building, "", nil)
	kind := s.kinds[r.Target]
	took := s.jitter(300*time.Millisecond, 4*time.Second)
	deadline := r.Started.Add(r.Policy.WithDefaults().BuildDeadline)
	if kind == kindHangs || s.now.Add(took).After(deadline) {
		// The agent's build context ends at the build deadline.
		s.at(max(deadline.Sub(s.now), 0), func() {
			if n.up && n.inc == inc {
				s.send(n, r.Version, Failed, "build: context deadline exceeded", nil)
			}
		})
		return
	}
	s.at(took, func() {
		if !n.up || n.inc != inc {
			return
		}
		if kind == kindNoCompile {
			s.send(n, r.Version, Failed, "does not compile", nil)
			return
		}
		s.send(n, r.Version, Built, "", nil)
	})
}

// switchTo is agent.switchTo: every duck to version id, or back to what it had.
// why tells a turn forward, a turn back and a catch-up apart: a node may switch to the same
// version once for each (caught up with it during a pause, then back to it in a revert).
func (s *sim) switchTo(n *simNode, r *Rollout, id bundle.ID, why string, done func(error)) {
	inc := n.inc
	took := s.jitter(50*time.Millisecond, 2*time.Second)
	if s.rng.IntN(40) == 0 {
		took += s.jitter(0, 30*time.Second) // a slow machine
	}
	took += r.Policy.WithDefaults().Healthy
	s.at(took, func() {
		if !n.up || n.inc != inc {
			return // died mid-swap: its ducks restart on what local.Have says
		}
		if s.kinds[id] == kindCrashes {
			done(errors.New("duck died in its healthy wait"))
			return
		}
		key := fmt.Sprintf("%s#%d/v%d/%s/%s", n.name, n.inc, r.Version, id, why)
		s.swaps[key]++
		if s.swaps[key] > 1 {
			s.fail("%s swapped to %s twice (%s) in rollout %d without a restart", n.name, lbl(id), why, r.Version)
		}
		n.local.Have = id
		done(nil)
	})
}

// turn is follower.turn: the start of a forward turn is said beside the swap, not waited for;
// a turn whose end the log refuses goes back to what the node ran. The node's one duty slot is
// held until every report of the turn is answered.
func (s *sim) turn(n *simNode, r *Rollout, d Duty) {
	n.busy = true
	inc := n.inc
	pending := 1
	end := func() {
		pending--
		if pending == 0 && n.inc == inc {
			n.busy = false
		}
	}
	forward := d.Success == Running
	had := n.local.Have
	if forward && r.Nodes[n.name].Phase == Granted {
		pending++
		s.send(n, r.Version, Swapping, "", func(bool) { end() })
	}
	s.switchTo(n, r, d.Version, "turn "+string(d.Success), func(err error) {
		n.local.Acted = d.Key
		if err != nil {
			end()
			if d.Success == Running {
				s.send(n, r.Version, Failed, err.Error(), nil)
			} else {
				s.send(n, r.Version, d.Success, "could not go back: "+err.Error(), nil)
			}
			return
		}
		s.send(n, r.Version, d.Success, "", func(ok bool) {
			if ok || !forward || had == "" || had == d.Version || n.inc != inc {
				end()
				return
			}
			if s.log.Version == r.Version && s.log.Nodes[n.name].Phase == Running {
				s.fail("%s goes back to %s though the log records it running %s", n.name, lbl(had), lbl(d.Version))
			}
			s.logf("%s goes back to %s: the log refused its turn", n.name, lbl(had))
			s.switchTo(n, r, had, "undo "+d.Key, func(error) { end() })
		})
	})
}

func (s *sim) catchUp(n *simNode, r *Rollout, d Duty) {
	n.busy = true
	inc := n.inc
	s.switchTo(n, r, d.Version, "catch-up "+d.Key, func(err error) {
		if n.inc != inc {
			return
		}
		n.busy = false
		if err != nil {
			n.retryAt = s.now.Add(5 * time.Second)
			return
		}
		n.local.Synced = d.Key
	})
}

// caughtUp is the agent's caughtUp: whether the node has applied as much of the log as the
// leader had when last asked, at most a second ago.
func (s *sim) caughtUp(n *simNode) bool {
	if s.now.Sub(n.askedAt) > time.Second {
		n.upTo, n.askedAt = 0, s.now
		if l := s.byName[s.leader]; l != nil && l.up && !l.cut && s.reachable(n) {
			n.upTo = len(s.history)
		}
	}
	return n.upTo > 0 && n.pos >= n.upTo
}

func (s *sim) start(n *simNode) {
	n.up = true
	n.inc++
	n.building = map[Number]bool{}
	n.busy = false
	// A restarted node comes back from its last snapshot, somewhere in what it had, and
	// replays the rest.
	n.pos = s.rng.IntN(n.pos + 1)
	n.view = nil
	if n.pos > 0 {
		n.view = s.history[n.pos-1].Clone()
	}
	n.askedAt = time.Time{}
	inc := n.inc
	s.at(s.jitter(0, 100*time.Millisecond), func() { s.nodeTick(n, inc) })
}

func (s *sim) crash(n *simNode) {
	if !n.up {
		return
	}
	s.logf("crash %s", n.name)
	n.up = false
	if !n.cut {
		n.lost = s.now
	}
	if n.name == s.leader {
		s.leader = ""
	}
}

// commit is `deploy` of a new version of the given kind, refused while a rollout is active, as
// consensus refuses it.
func (s *sim) commit(kind simKind) {
	if s.log != nil && s.log.Active() {
		return
	}
	if s.leader == "" {
		return
	}
	s.versions++
	id := bundle.ID(fmt.Sprintf("v%d", s.versions))
	if kind != kindGood {
		id += []bundle.ID{"", "-nocompile", "-hangs", "-crashes"}[kind]
	}
	s.kinds[id] = kind
	s.numbers[id] = s.versions
	var members []Member
	for _, n := range s.nodes {
		members = append(members, Member{Name: n.name, Labels: n.labels})
	}
	from := s.numbers[s.current]
	s.log = New(s.versions, id, from, s.current, members, false, true, s.policy, s.now)
	s.history = append(s.history, s.log.Clone())
	s.logf("commit %s (from %s)", id, lbl(s.current))
}

func simulate(seed uint64, trace bool, logf func(string, ...any)) error {
	s := &sim{
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), now: simStart,
		byName: map[string]*simNode{}, kinds: map[bundle.ID]simKind{}, numbers: map[bundle.ID]Number{"v1": 1}, swaps: map[string]int{},
	}
	if trace {
		s.trace = logf
	}
	size := 3 + s.rng.IntN(5)
	zones := 1 + s.rng.IntN(3)
	for i := range size {
		n := &simNode{name: fmt.Sprintf("n%d", i+1), labels: map[string]string{"zone": fmt.Sprintf("z%d", s.rng.IntN(zones))}}
		if s.rng.IntN(8) == 0 {
			n.labels = nil // a node started without the label
		}
		s.nodes = append(s.nodes, n)
		s.byName[n.name] = n
	}
	s.policy = simPolicy
	switch s.rng.IntN(3) {
	case 1:
		s.policy.MaxParallel = 1 + s.rng.IntN(3)
	case 2:
		s.policy.MaxParallelPercent = 20 + s.rng.IntN(60)
	}
	if s.rng.IntN(3) == 0 {
		s.policy.WaveBy = "zone"
	}
	if s.rng.IntN(4) == 0 {
		s.policy.Canaries = 1 + s.rng.IntN(2)
		if s.rng.IntN(2) == 0 {
			s.policy.AutoPromoteAfter = s.jitter(time.Second, 10*time.Second)
		}
	}
	if s.rng.IntN(4) == 0 {
		s.policy.FailureBudget = 1
	}
	s.operator = s.rng.IntN(2) == 0
	s.opRng = rand.New(rand.NewPCG(seed^0x5bd1e995, seed))
	s.waveOps = s.operator && s.opRng.IntN(2) == 0
	s.wavePause = map[Number]bool{}
	s.logf("%d nodes, policy %+v, operator %v, wave by wave %v", size, s.policy, s.operator, s.waveOps)
	// Version 1 runs everywhere, as after a first rollout.
	s.versions, s.current = 1, "v1"
	s.kinds["v1"] = kindGood
	var members []Member
	for _, n := range s.nodes {
		members = append(members, Member{Name: n.name})
	}
	s.log = New(1, "v1", 0, "", members, false, true, Policy{}, s.now)
	for _, name := range s.log.Order {
		s.log.Nodes[name].Phase = Running
	}
	s.log.State = Done
	s.history = []*Rollout{s.log.Clone()}
	for _, n := range s.nodes {
		n.local = Local{Have: "v1", Synced: SyncKey(s.log)}
		n.pos = 1
		s.start(n)
		n.pos = 1 // a first start: the whole (one-entry) log is the snapshot
		n.view = s.log.Clone()
	}
	s.leader, s.leaderSince = s.nodes[0].name, s.now
	s.at(0, s.leaderTick)
	s.at(time.Second, s.operatorTick)

	// The schedule: a few deploys while faults strike, then quiet.
	faults := time.Duration(20+s.rng.IntN(60)) * time.Second
	s.faultsUntil = simStart.Add(faults)
	deploys := 1 + s.rng.IntN(4)
	for i := range deploys {
		kind := kindGood
		switch x := s.rng.IntN(20); {
		case x == 0:
			kind = kindNoCompile
		case x == 1:
			kind = kindHangs
		case x < 4:
			kind = kindCrashes
		}
		at := time.Duration(i)*faults/time.Duration(deploys) + s.jitter(0, 3*time.Second)
		var try func()
		try = func() {
			if s.log.Active() || s.leader == "" {
				if s.inFaults() || s.now.Sub(simStart) < faults+5*time.Minute {
					s.at(time.Second, try)
				}
				return
			}
			s.commit(kind)
		}
		s.at(at, try)
	}
	for t := s.jitter(0, 2*time.Second); t < faults; t += s.jitter(500*time.Millisecond, 6*time.Second) {
		s.at(t, func() { s.fault() })
	}
	// Faults stop: every node comes back and every cut heals.
	s.at(faults, func() {
		s.logf("faults stop")
		for _, n := range s.nodes {
			if n.cut {
				n.cut = false
			}
			if !n.up {
				s.start(n)
			}
		}
	})

	// Run until the cluster is quiet after the faults, within a bound no correct run needs:
	// every deadline in a row, for every node.
	p := simPolicy
	bound := faults + 5*time.Minute + time.Duration(deploys*(size+1))*(p.BuildDeadline+p.ProgressDeadline+p.StartDeadline+p.DownAfter)
	for s.q.Len() > 0 && s.err == nil {
		e := heap.Pop(&s.q).(*simEvent)
		s.now = e.at
		if s.now.Sub(simStart) > bound {
			break
		}
		e.fn()
		if !s.inFaults() && s.now.Sub(simStart) > faults+time.Second && s.settled() {
			return s.check()
		}
	}
	if s.err != nil {
		return s.err
	}
	return fmt.Errorf("not settled %s after the faults stopped: %s", bound-faults, s.describe())
}

// fault strikes one node: a crash (restarted after a while), a cut (healed after a while), or
// the leader's loss of leadership.
func (s *sim) fault() {
	n := s.nodes[s.rng.IntN(len(s.nodes))]
	if s.rng.IntN(3) == 0 && s.leader != "" {
		n = s.byName[s.leader] // the leader is the interesting one
	}
	back := s.jitter(200*time.Millisecond, 12*time.Second)
	switch s.rng.IntN(4) {
	case 0, 1:
		s.crash(n)
		s.at(back, func() {
			if !n.up {
				s.logf("restart %s", n.name)
				s.start(n)
			}
		})
	case 2:
		if n.cut || !n.up {
			return
		}
		s.logf("cut %s", n.name)
		n.cut, n.lost = true, s.now
		if n.name == s.leader {
			s.leader = ""
		}
		s.at(back, func() {
			s.logf("heal %s", n.name)
			n.cut = false
		})
	case 3:
		if s.leader != "" {
			s.logf("%s loses leadership", s.leader)
			s.leader = ""
		}
	}
}

// settled: the rollout has ended and no node has anything left to do.
func (s *sim) settled() bool {
	if s.log.Active() && s.log.State != Paused || s.leader == "" {
		return false
	}
	if s.log.State == Paused && (s.operator || s.log.Policy.AutoPromoteAfter > 0 && s.log.canariesHealthy()) {
		return false // someone will resume it
	}
	for _, n := range s.nodes {
		if !n.up || n.busy || n.view == nil || n.view.Version != s.log.Version || n.view.State != s.log.State {
			return false
		}
		if n.view.Follow(n.name, n.local).Kind != Idle {
			return false
		}
	}
	return true
}

// check is what must hold once the faults stopped and the cluster is quiet.
func (s *sim) check() error {
	r := s.log
	var got []bundle.ID
	for _, n := range s.nodes {
		want := r.Desired(n.name)
		if nr := r.Nodes[n.name]; r.State == Paused && nr != nil && (nr.Phase == Skipped || nr.Phase == Failed) && (n.local.Have == r.Target || n.local.Have == r.FromID) {
			got = append(got, n.local.Have)
			continue // it waits for the end (Follow)
		}
		if n.local.Have != want {
			return fmt.Errorf("rollout of %s ended %s, but %s runs %s where it should run %s: %s", r.Target, r.State, n.name, lbl(n.local.Have), lbl(want), s.describe())
		}
		got = append(got, n.local.Have)
	}
	failed := false
	for _, name := range r.Order {
		failed = failed || r.Nodes[name].Phase == Failed
	}
	if r.State == Done && !failed || r.State == WentBack {
		if len(slices.Compact(slices.Sorted(slices.Values(got)))) != 1 {
			return fmt.Errorf("rollout ended %s with nodes on different versions %v: %s", r.State, got, s.describe())
		}
	}
	if r.State == WentBack && got[0] != r.FromID {
		return fmt.Errorf("rollout went back but nodes run %s, not %s", got[0], r.FromID)
	}
	return nil
}

func (s *sim) describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version %d (%s) %s, reason %q;", s.log.Version, s.log.Target, s.log.State, s.log.Reason)
	for _, name := range s.log.Order {
		n := s.byName[name]
		fmt.Fprintf(&b, " %s=%s/has %s", name, s.log.Nodes[name].Phase, lbl(n.local.Have))
		if !n.up {
			b.WriteString("/down")
		}
	}
	return b.String()
}
