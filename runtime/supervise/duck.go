package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

const (
	pollEvery = 20 * time.Millisecond
	// killWait bounds the wait for a SIGKILLed process to be reaped.
	killWait = 2 * time.Second
	// drainWait bounds the wait for the last output of processes that
	// have exited (their pipes' EOF).
	drainWait = time.Second
	// handOverWait bounds how long an old generation may take to exit
	// after its successor is Ready: hotswap drains for DrainBound.
	handOverWait = hotswap.DrainBound + 5*time.Second
	minBackoff   = 100 * time.Millisecond
	maxBackoff   = 5 * time.Second
	// tailSize is how many stderr lines an error quotes.
	tailSize = 10
)

// duck is one supervised duck. Its goroutine, keep, owns the processes:
// it alone starts, swaps, restarts and stops them, so those never race;
// the fields under mu are what others may read.
type duck struct {
	s        *Supervisor
	cfg      Config
	log      *slog.Logger
	id, dir  string
	addr     string
	extraEnv []string
	ctx      context.Context // cancelled by Stop
	cancel   context.CancelFunc
	ops      chan swapOp
	finished chan struct{} // closed when keep (or a failed Start) is done

	mu       sync.Mutex
	version  string
	gen      int // the last generation number handed out
	state    string
	restarts int
	started  time.Time
	lastErr  string
	cur      *proc
	run      *run

	crashes []time.Time // within Window; keep's alone
}

func newDuck(s *Supervisor, spec Spec) *duck {
	ctx, cancel := context.WithCancel(context.Background())
	return &duck{
		s:        s,
		cfg:      s.cfg,
		log:      s.log.With("duck", spec.ID),
		id:       spec.ID,
		dir:      filepath.Join(s.cfg.Dir, spec.ID),
		addr:     spec.Addr,
		extraEnv: append([]string(nil), spec.Env...),
		ctx:      ctx,
		cancel:   cancel,
		ops:      make(chan swapOp),
		finished: make(chan struct{}),
		version:  spec.Version,
		state:    "starting",
	}
}

func (d *duck) path(name string) string { return filepath.Join(d.dir, name) }

func (d *duck) status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := Status{
		ID: d.id, Version: d.version, Addr: d.addr,
		Gen: d.gen, State: d.state, Restarts: d.restarts,
		Started: d.started, LastError: d.lastErr,
	}
	if d.cur != nil && d.cur.alive() {
		st.PID = d.cur.pid
	}
	return st
}

func (d *duck) setState(state string) {
	d.mu.Lock()
	d.state = state
	d.mu.Unlock()
}

func (d *duck) setError(err error) {
	d.mu.Lock()
	d.lastErr = err.Error()
	d.mu.Unlock()
}

func (d *duck) running(p *proc) {
	d.mu.Lock()
	d.cur = p
	d.state = "running"
	d.started = time.Now()
	d.mu.Unlock()
}

// environ is the environment of a first generation: the agent's own,
// without DUCK_ variables meant for the agent and without DUCKRAFT_ ones
// (DUCKRAFT_COOKIE is the key to the whole cluster; a duck is a workload,
// not a member), with HOME and TMPDIR in its own folder when it runs as a
// duck user, then the spec's, then the contract of runtime/hotswap,
// which wins.
func (d *duck) environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DUCK_") && !strings.HasPrefix(kv, "DUCKRAFT_") {
			env = append(env, kv)
		}
	}
	if d.cfg.User != nil {
		// The node's HOME and TMPDIR are closed to the duck user; its own
		// folder is not (hotswap hands the state over through a temp file).
		env = append(env, "HOME="+d.path(runName), "TMPDIR="+d.path(runName))
	}
	env = append(env, d.extraEnv...)
	d.mu.Lock()
	version := d.version
	d.mu.Unlock()
	if d.addr != "" {
		env = append(env, hotswap.EnvAddr+"="+d.addr)
	}
	return append(env,
		hotswap.EnvVersion+"="+version,
		hotswap.EnvVersionFile+"="+d.path(versionName),
		hotswap.EnvPIDFile+"="+d.path(pidName),
		hotswap.EnvReadyTimeout+"="+d.cfg.ReadyTimeout.String(),
		hotswap.EnvStateFile+"="+d.path(stateName),
		hotswap.EnvLifelineFD+"=3", // ExtraFiles[0]
		hotswap.EnvReportFD+"=4",   // ExtraFiles[1]
	)
}

// credential is who the duck's processes run as: nil, the node's user,
// unless the supervisor has a duck user.
func (d *duck) credential() *syscall.Credential {
	if d.cfg.User == nil {
		return nil
	}
	return d.cfg.User.Credential()
}

// moveOldState moves a state file saved before ducks had a folder of their
// own into run/, where the duck (as its own user) can read and replace it.
func (d *duck) moveOldState() error {
	old, state := d.path(oldStateName), d.path(stateName)
	if _, err := os.Lstat(old); err != nil {
		return nil
	}
	if _, err := os.Lstat(state); err == nil {
		return os.Remove(old) // the newer one wins
	}
	if err := os.Rename(old, state); err != nil {
		return err
	}
	if u := d.cfg.User; u != nil {
		return os.Lchown(state, int(u.UID), int(u.GID))
	}
	return nil
}

// start installs the binary and starts the first generation (Start).
func (d *duck) start(ctx context.Context, binary string) error {
	fail := func(format string, args ...any) error {
		err := fmt.Errorf("supervise: starting duck %q (%s): "+format, append([]any{d.id, d.version}, args...)...)
		d.mu.Lock()
		d.state, d.lastErr = "stopped", err.Error()
		d.mu.Unlock()
		d.log.Error("duck did not start", "err", err)
		return err
	}
	if err := nodeDir(d.dir, d.cfg.User); err != nil {
		return fail("%w", err)
	}
	if err := duckDir(d.path(runName), d.cfg.User); err != nil {
		return fail("making the duck's own folder: %w", err)
	}
	// Before the state file is looked at: a leftover saves its state as it stops.
	if err := d.endLeftovers(ctx); err != nil {
		return fail("%w", err)
	}
	if err := d.moveOldState(); err != nil {
		return fail("moving its state file into %s: %w", d.path(runName), err)
	}
	tmp, err := stage(d.dir, binary)
	if err != nil {
		return fail("%w", err)
	}
	if err := install(tmp, d.path(binaryName)); err != nil {
		os.Remove(tmp)
		return fail("installing the binary: %w", err)
	}
	os.Remove(d.path(prevName)) // left by a swap the agent did not see to its end
	if err := writeFileAtomic(d.path(versionName), d.version+"\n"); err != nil {
		return fail("writing the version file: %w", err)
	}
	r, p, err := d.spawn()
	if err != nil {
		return fail("%w", err)
	}
	if err := d.waitReady(ctx, r, p); err != nil {
		d.endRun(r, false)
		return fail("%w", err)
	}
	d.running(p)
	d.log.Info("duck started", "version", d.version, "pid", p.pid, "gen", d.status().Gen)
	return nil
}

// spawn starts a first generation from the stable path: a new run, with
// new pipes for its output and a new lifeline.
func (d *duck) spawn() (*run, *proc, error) {
	os.Remove(d.path(pidName)) // so only the new process's PID counts as Ready
	// Output, the lifeline, and the report pipe by which every generation of the run says how
	// its swaps went.
	ps, err := pipes(4)
	if err != nil {
		return nil, nil, err
	}
	outR, outW, errR, errW := ps[0][0], ps[0][1], ps[1][0], ps[1][1]
	lifeR, lifeW, repR, repW := ps[2][0], ps[2][1], ps[3][0], ps[3][1]
	stable := d.path(binaryName)
	env := d.environ()
	cmd, err := startCmd(func() *exec.Cmd {
		return &exec.Cmd{
			Path:       stable,
			Args:       []string{stable}, // tableflip re-executes os.Args[0]
			Dir:        d.path(runName),
			Env:        env,
			Stdout:     outW, // an *os.File is inherited as is, by every generation
			Stderr:     errW,
			ExtraFiles: []*os.File{lifeR, repW},
			// Its own process group: a Ctrl-C at the agent's terminal is
			// the agent's to handle, and it stops its ducks (or they see
			// the lifeline close).
			SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Credential: d.credential()},
		}
	})
	// Only the ducks keep these ends: the pipes' EOF then means every
	// process of the run is gone, and the lifeline's write end stays
	// with us alone.
	outW.Close()
	errW.Close()
	lifeR.Close()
	repW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		lifeW.Close()
		repR.Close()
		return nil, nil, fmt.Errorf("starting %s: %w", stable, err)
	}
	r := &run{pgid: cmd.Process.Pid, lifeW: lifeW, drained: make(chan struct{})}
	if st, err := readStat(cmd.Process.Pid); err == nil {
		r.start = st.start
		writeFileAtomic(d.path(groupName), fmt.Sprintf("%d %d %s\n", r.pgid, r.start, bootID()))
	}
	go func() {
		readLines(repR, func(line string) { r.reported(line, &d.s.conns) })
		repR.Close()
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	for stream, f := range map[string]*os.File{"stdout": outR, "stderr": errR} {
		go func() {
			defer wg.Done()
			readLines(f, func(text string) { d.emit(r, stream, text) })
			f.Close()
		}()
	}
	go func() {
		wg.Wait()
		close(r.drained)
	}()
	p := watchCmd(cmd)
	r.add(p)
	d.mu.Lock()
	d.gen++
	p.gen = d.gen
	d.cur, d.run = p, r
	d.mu.Unlock()
	return r, p, nil
}

// startCmd retries a start that failed with "text file busy": a process
// forked elsewhere in the agent may hold a descriptor of the binary for a
// moment (stage prevents it for its own copies).
func startCmd(mk func() *exec.Cmd) (*exec.Cmd, error) {
	for try := 1; ; try++ {
		cmd := mk()
		err := cmd.Start()
		if !errors.Is(err, syscall.ETXTBSY) || try == 10 {
			return cmd, err
		}
		time.Sleep(time.Duration(try) * 10 * time.Millisecond)
	}
}

func (d *duck) emit(r *run, stream, text string) {
	d.mu.Lock()
	l := Line{Duck: d.id, Version: d.version, Gen: d.gen, Stream: stream, Text: text, Time: time.Now()}
	d.mu.Unlock()
	if stream == "stderr" {
		r.stderr(text)
	}
	d.s.lines.publish(l)
}

// waitReady waits for the PID file to name p, the first generation of r.
func (d *duck) waitReady(ctx context.Context, r *run, p *proc) error {
	timer := time.NewTimer(d.cfg.ReadyTimeout)
	defer timer.Stop()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	pidFile := d.path(pidName)
	for {
		if readPIDFile(pidFile) == p.pid {
			return nil
		}
		select {
		case <-p.done:
			d.waitDrained(r)
			return fmt.Errorf("it exited before it was Ready: %s; fix the duck (or its environment) and start it again%s", p.exited(), tail(r.stderrSince(0)))
		case <-timer.C:
			kill(p)
			d.waitDrained(r)
			return fmt.Errorf("it was not Ready within %s and was killed; make its setup return sooner or raise the ready timeout%s", d.cfg.ReadyTimeout, tail(r.stderrSince(0)))
		case <-ctx.Done():
			kill(p)
			return fmt.Errorf("gave up waiting for Ready: %w", ctx.Err())
		case <-d.ctx.Done():
			kill(p)
			return errors.New("stopped before it was Ready")
		case <-tick.C:
		}
	}
}

func kill(p *proc) {
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(killWait):
	}
}

func (d *duck) waitDrained(r *run) {
	select {
	case <-r.drained:
	case <-time.After(drainWait):
	}
}

// reapEvery is how often the supervisor reaps the exited processes a duck's generations left to
// it (it is their subreaper): a daemon a duck started becomes a zombie here when it exits.
const reapEvery = 5 * time.Second

// keep runs the duck from its first Ready to its stop.
func (d *duck) keep() {
	defer close(d.finished)
	reap := time.NewTicker(reapEvery)
	defer reap.Stop()
	for {
		d.mu.Lock()
		cur, r := d.cur, d.run
		d.mu.Unlock()
		var died <-chan struct{} // nil, never ready, once the duck failed
		if cur != nil {
			died = cur.done
		}
		select {
		case <-d.ctx.Done():
			d.shutdown()
			return
		case <-reap.C:
			if r != nil {
				// What a helper of an earlier generation started, once the helper has gone;
				// and the zombies of what the running one left to this process.
				d.sweep(r, r.cutoff.Load())
			}
		case op := <-d.ops:
			err := d.swap(op)
			d.mu.Lock()
			next := d.cur
			d.mu.Unlock()
			if err == nil && next != nil {
				// The old generation is gone: what it started and left behind goes with it.
				if st, serr := readStat(next.pid); serr == nil {
					r.cutoff.Store(st.start)
					d.sweep(r, st.start)
				}
			}
			op.reply <- err
		case <-died:
			if d.ctx.Err() != nil {
				// A stop came too, and select picks among ready cases at random. The death is
				// most likely the stop's own doing (a generation that handed over to a new one
				// exits), and a crash's restart ends the run with SIGKILL: that killed a new
				// generation serving already, before it saved what it had answered
				// (TestStopAtSeededMomentsOfASwapLosesNothing, about one run in thirty).
				d.shutdown()
				return
			}
			if d.followSwap(r, cur) {
				continue
			}
			d.crashed(fmt.Sprintf("generation %d (PID %d) %s", cur.gen, cur.pid, cur.exited()))
		}
	}
}

// followSwap takes in the new generation of a swap this supervisor did not start (a SIGHUP
// sent to the duck by hand: the SDK swaps on it) once the old generation, having handed over,
// has exited: the PID file names a live generation of the duck's binary. Taken for a crash,
// the restart SIGKILLed the new generation, serving already, and started the duck again from
// the state saved at the hand-over, losing what was answered since (found by review).
func (d *duck) followSwap(r *run, old *proc) bool {
	if r == nil {
		return false
	}
	pid := readPIDFile(d.path(pidName))
	if pid == 0 || pid == old.pid || !runs(pid, d.path(binaryName), d.cfg.User) || procGone(pid) {
		return false
	}
	next := r.adopt(pid)
	if !next.alive() {
		return false
	}
	d.mu.Lock()
	d.gen++
	next.gen = d.gen
	d.cur, d.started = next, time.Now()
	d.mu.Unlock()
	d.log.Info("the duck swapped itself (a SIGHUP this node did not send): following its new generation", "old_pid", old.pid, "old_exit", old.exited(), "pid", pid, "gen", next.gen)
	// As after a swap: what the old generation left behind goes with it.
	if st, err := readStat(pid); err == nil {
		r.cutoff.Store(st.start)
		d.sweep(r, st.start)
	}
	return true
}

// shutdown stops the current run gracefully: SIGTERM to every generation
// still alive (a duck writes its state file when it stops), SIGKILL past
// StopTimeout.
func (d *duck) shutdown() {
	d.mu.Lock()
	r := d.run
	d.mu.Unlock()
	if r != nil {
		d.endRun(r, true)
	}
	d.mu.Lock()
	d.state, d.cur = "stopped", nil
	d.mu.Unlock()
	d.log.Info("duck stopped")
}

// endRun ends every process of r, then closes its lifeline (any process we
// did not know of sees EOF and stops) and waits a moment for the last lines.
func (d *duck) endRun(r *run, graceful bool) {
	d.endGenerations(r, graceful)
	// What the generations started and left in their process group ends with the run: it held
	// the output pipes open, and outlived every stop (found by trying it: a duck's helper
	// processes survived stop, swap and restart, and piled up as zombies of this process). Not
	// by killing the group: a generation this run did not know of may still be saving its
	// state there (TestStopAtSeededMomentsOfASwapLosesNothing lost POSTs so). SIGTERM first, a
	// moment to finish, then SIGKILL; what one of them started in turn becomes this process's
	// child as it dies, and goes the same way.
	sig := syscall.SIGTERM
	for end := time.Now().Add(killWait + time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		left := d.groupChildren(r)
		for _, c := range left {
			c.Signal(sig)
		}
		d.sweep(r, 0) // reaps what has died
		if len(left) == 0 {
			break
		}
		if time.Until(end) < killWait {
			sig = syscall.SIGKILL
		}
	}
	r.ended.Store(true) // its group's number may be given to another from now on
	os.Remove(d.path(groupName))
	r.closeLifeline()
	d.waitDrained(r)
}

// endGenerations ends every generation of r: SIGTERM (graceful) and a wait of up to StopTimeout,
// then SIGKILL. It looks for new generations again at every round, not once: a stop that comes
// during a swap may find the old generation before it has started its new one, and the old
// one, stopped after it handed its state over, lets the swap end and exits, leaving the new one
// serving as this process's child. Looked for once, that one was never stopped with the run:
// it stopped later by its lifeline and saved its state after the next start had read the older
// one (TestStopAtSeededMomentsOfASwapLosesNothing, seed 1795906611613156525, now and then).
func (d *duck) endGenerations(r *run, graceful bool) {
	sig := syscall.SIGKILL
	end := time.Now().Add(killWait)
	if graceful {
		sig, end = syscall.SIGTERM, time.Now().Add(d.cfg.StopTimeout)
	}
	sent := map[*proc]syscall.Signal{}
	for {
		d.adoptNewGenerations(r)
		live := r.live()
		if len(live) == 0 {
			return
		}
		if time.Now().After(end) {
			if sig == syscall.SIGKILL {
				d.log.Warn("generations of the duck still there after SIGKILL", "bound", killWait)
				return
			}
			d.log.Warn("duck did not stop within the bound; killing it", "bound", d.cfg.StopTimeout)
			sig, end = syscall.SIGKILL, time.Now().Add(killWait)
		}
		for _, p := range live {
			if sent[p] != sig {
				p.signal(sig)
				sent[p] = sig
			}
		}
		// A short wait, so that a generation that appears meanwhile is found soon.
		waitAll(live, pollEvery)
	}
}

// groupChildren lists this process's live children in r's process group that are not
// generations (they do not run the duck's binary), each held by a pidfd so that a signal never
// reaches a process that took a PID over.
func (d *duck) groupChildren(r *run) []*os.Process {
	var out []*os.Process
	for _, m := range d.groupMembers(r) {
		if m.st.state != 'Z' && !runs(m.pid, d.path(binaryName), d.cfg.User) {
			out = append(out, m.p)
		}
	}
	return out
}

// member is a child of this process in a run's group, held by a pidfd.
type member struct {
	pid int
	st  stat
	p   *os.Process
}

// groupMembers lists this process's children in r's process group, zombies too. None once the
// run has ended, or when the group's number is another's now (its leader is not r's first
// generation): a group's number is free for reuse once its last process has gone.
func (d *duck) groupMembers(r *run) []member {
	if r == nil || r.pgid <= 0 || r.ended.Load() {
		return nil
	}
	me := os.Getpid()
	var out []member
	for _, pid := range childrenOf(me) {
		st, err := readStat(pid)
		if err != nil || st.ppid != me || st.pgid != r.pgid {
			continue
		}
		if pid == r.pgid && st.start != r.start {
			return nil
		}
		p, err := os.FindProcess(pid) // a pidfd, opened while pid is surely this process
		if err != nil {
			continue
		}
		if again, err := readStat(pid); err != nil || again.start != st.start {
			continue
		}
		out = append(out, member{pid: pid, st: st, p: p})
	}
	return out
}

// sweep ends and reaps what generations of r left behind: processes they started that outlived
// them, which this process (their subreaper) now parents, while still in the run's process
// group. A live one that started before `before` (kernel clock ticks since boot, as in
// /proc/PID/stat) gets SIGTERM, and SIGKILL if it is still there StopTimeout later: after a swap,
// `before` is the new generation's start, so that what it started itself stays (a daemon it
// left to us is the duck's while the duck runs). A zombie is reaped. The run's generations are
// left alone: those it knows, and a new one not yet adopted (it runs the duck's binary). A
// process that left the group (setsid) is beyond this: only a cgroup would hold it. Signals and
// reaping go through pidfds: a PID another process took over is never hit.
func (d *duck) sweep(r *run, before uint64) {
	known := map[int]bool{}
	r.mu.Lock()
	for _, p := range r.procs {
		known[p.pid] = true
	}
	r.mu.Unlock()
	bin := d.path(binaryName)
	for _, m := range d.groupMembers(r) {
		switch {
		case known[m.pid]:
		case m.st.state == 'Z':
			m.p.Wait() // a zombie: returns at once
		case m.st.start >= before || runs(m.pid, bin, d.cfg.User):
		default:
			d.log.Info("ending a process the duck's generations left behind", "pid", m.pid)
			m.p.Signal(syscall.SIGTERM)
			go func(p *os.Process) {
				done := make(chan struct{})
				go func() { p.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(d.cfg.StopTimeout):
					p.Signal(syscall.SIGKILL)
				}
			}(m.p)
		}
	}
}

// adoptNewGenerations takes into r every child of its processes that runs the duck's binary: a
// new generation a swap started is known only once the PID file names it, and one still
// unknown at a stop learnt of it from the lifeline's EOF after the stop had returned, then saved
// its state after the next start had read the older one (found by
// TestStopAtSeededMomentsOfASwapLosesNothing). Other children of a duck are its own.
//
// The supervisor's own children count too: once the old generation has handed over and exited,
// its new one is the subreaper's child, and a stop that came before the swap read the PID file
// found it under nobody (the loss that stayed, one run in forty, 28 of 29 POSTs).
func (d *duck) adoptNewGenerations(r *run) {
	bin := d.path(binaryName)
	parents := []int{os.Getpid()}
	for _, p := range r.live() {
		parents = append(parents, p.pid)
	}
	for _, parent := range parents {
		for _, pid := range childrenOf(parent) {
			if runs(pid, bin, d.cfg.User) {
				r.adopt(pid)
			}
		}
	}
}

// endLeftovers stops the processes of an earlier run of this duck that no supervisor here knows:
// those of an agent that was killed. They stop by themselves once their lifeline ends, saving
// their state, but a node restarted at once started its duck while they still held its port
// and before they had saved: the start failed on "address already in use", and the next one
// read the older state (a POST lost, found by TestNemesis, seed 1795909888423381574). Each is
// asked to stop (SIGTERM, the same graceful stop) and waited for, up to StopTimeout, then
// killed.
func (d *duck) endLeftovers(ctx context.Context) error {
	if err := d.endLeftoverGenerations(ctx); err != nil {
		return err
	}
	d.endLeftoverHelpers()
	return nil
}

// endLeftoverHelpers ends what the generations of a run this supervisor never ended (its
// agent was killed) left in that run's process group: init took them over, and they ran on
// for good (found by trying it). The group is the one recorded at that run's start, on this
// boot; a process counts only if it is in it, the duck user's, and started after the group's
// first generation, and none does if a live leader of that number is another process.
func (d *duck) endLeftoverHelpers() {
	b, err := os.ReadFile(d.path(groupName))
	if err != nil {
		return
	}
	defer os.Remove(d.path(groupName))
	var pgid int
	var start uint64
	var boot string
	if n, _ := fmt.Sscanf(string(b), "%d %d %s", &pgid, &start, &boot); n != 3 || pgid <= 1 || boot != bootID() {
		return
	}
	if st, err := readStat(pgid); err == nil && st.start != start {
		return // the number leads another group now
	}
	var left []*os.Process
	for _, pid := range allPIDs() {
		st, err := readStat(pid)
		if err != nil || pid == os.Getpid() || st.pgid != pgid || st.start < start || !ownedBy(pid, d.cfg.User) {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil {
			left = append(left, p)
		}
	}
	if len(left) == 0 {
		return
	}
	d.log.Warn("ending what an earlier run of the duck left in its process group", "processes", len(left))
	for _, p := range left {
		p.Signal(syscall.SIGTERM)
	}
	time.AfterFunc(d.cfg.StopTimeout, func() {
		for _, p := range left {
			p.Signal(syscall.SIGKILL) // through its pidfd: a process that has gone is not hit
		}
	})
}

// bootID tells this boot from the next: a process group recorded before a reboot means nothing.
func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// endLeftoverGenerations stops the generations of an earlier run that no supervisor here knows.
func (d *duck) endLeftoverGenerations(ctx context.Context) error {
	pids := processesRunning(d.path(binaryName), d.cfg.User)
	if len(pids) == 0 {
		return nil
	}
	d.log.Warn("processes of an earlier run of the duck are still there (its agent was killed?); stopping them before the start", "pids", pids)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(d.cfg.StopTimeout)
	for {
		left := pids[:0]
		for _, pid := range pids {
			if !procGone(pid) {
				left = append(left, pid)
			}
		}
		pids = left
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			d.log.Warn("processes of an earlier run did not stop within the bound; killed", "pids", pids, "bound", d.cfg.StopTimeout)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for processes %v of an earlier run of the duck to stop: %w", pids, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

func waitAll(ps []*proc, bound time.Duration) bool {
	timer := time.NewTimer(bound)
	defer timer.Stop()
	for _, p := range ps {
		select {
		case <-p.done:
		case <-timer.C:
			return false
		}
	}
	return true
}

// crashed restarts the duck from its stable path after its current
// generation died outside a swap or a stop, unless it crashed too often.
func (d *duck) crashed(why string) {
	if d.ctx.Err() != nil {
		// Being stopped: the stop ends the run gracefully (shutdown), so that a generation
		// still alive saves its state, where a crash's restart would SIGKILL it.
		d.log.Info("duck exited while being stopped", "why", why)
		return
	}
	d.log.Warn("duck exited unexpectedly; restarting it", "why", why)
	d.mu.Lock()
	r := d.run
	d.mu.Unlock()
	d.endRun(r, false)
	for d.ctx.Err() == nil {
		now := time.Now()
		recent := d.crashes[:0]
		for _, t := range d.crashes {
			if now.Sub(t) < d.cfg.Window {
				recent = append(recent, t)
			}
		}
		d.crashes = append(recent, now)
		d.mu.Lock()
		d.cur = nil
		if len(d.crashes) > d.cfg.MaxRestarts {
			d.state = "failed"
			d.lastErr = fmt.Sprintf("gave up after %d crashes within %s; last: %s; fix the duck, then `stop` it and `spawn` it again", len(d.crashes), d.cfg.Window, why)
			d.mu.Unlock()
			d.log.Error("duck failed: crashing too often", "crashes", len(d.crashes), "window", d.cfg.Window, "last", why)
			return
		}
		d.state, d.lastErr = "restarting", why
		d.restarts++
		d.mu.Unlock()
		backoff := min(minBackoff<<(len(d.crashes)-1), maxBackoff)
		select {
		case <-time.After(backoff):
		case <-d.ctx.Done():
			return
		}
		r, p, err := d.spawn()
		if err != nil {
			why = "restart failed: " + err.Error()
			continue
		}
		if err := d.waitReady(d.ctx, r, p); err != nil {
			d.endRun(r, false)
			why = "restarted generation " + strconv.Itoa(p.gen) + ": " + err.Error()
			continue
		}
		d.running(p)
		d.log.Info("duck restarted", "pid", p.pid, "gen", p.gen, "backoff", backoff)
		return
	}
}

// pipes makes n pipes, read end first; on a failure it closes those it made.
func pipes(n int) ([][2]*os.File, error) {
	var out [][2]*os.File
	for range n {
		r, w, err := os.Pipe()
		if err != nil {
			for _, p := range out {
				p[0].Close()
				p[1].Close()
			}
			return nil, err
		}
		out = append(out, [2]*os.File{r, w})
	}
	return out, nil
}
