package supervise

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/atomicfile"
)

// A swap: the old generation hands over to a new binary, which must become Ready and stay up;
// on failure the old version is put back.

type swapOp struct {
	version, binary string
	healthy         time.Duration // how long the new generation must stay up
	reply           chan error
}

// swap carries out Supervisor.Swap; see there.
func (d *duck) swap(op swapOp) error {
	d.mu.Lock()
	old, r, oldVersion, state := d.cur, d.run, d.version, d.state
	d.mu.Unlock()
	fail := func(format string, args ...any) error {
		err := fmt.Errorf("supervise: swapping duck %q from %s to %s: "+format, append([]any{d.id, oldVersion, op.version}, args...)...)
		d.setError(err)
		d.log.Error("swap failed", "err", err)
		return err
	}
	if old == nil {
		return fail("the duck is %s (%s); `stop` it and `spawn` it again", state, d.status().LastError)
	}
	stable, prev, versionFile := d.path(binaryName), d.path(prevName), d.path(versionName)
	tmp, err := stage(d.dir, op.binary)
	if err != nil {
		return fail("%w; %s keeps running", err, oldVersion)
	}
	// Keep the old binary: if the swap fails, a later crash-restart must
	// start the old version, not the one that failed.
	os.Remove(prev)
	if err := os.Link(stable, prev); err != nil {
		os.Remove(tmp)
		return fail("keeping the old binary: %w; %s keeps running", err, oldVersion)
	}
	putBack := func() {
		err := errors.Join(os.Rename(prev, stable), writeFileAtomic(versionFile, oldVersion+"\n"))
		if err != nil {
			d.log.Error("could not put the old binary back; a restart may start the failed version", "err", err)
		}
	}
	if err := writeFileAtomic(versionFile, op.version+"\n"); err != nil {
		os.Remove(tmp)
		putBack()
		return fail("writing the version file: %w; %s keeps running", err, oldVersion)
	}
	// Renamed in now, made durable (with the version file) once the old generation has its
	// signal: the folder's sync took 19 ms (median) of each node's turn when twenty of a hundred
	// nodes swapped at once, and the new process needs only the name.
	if err := place(tmp, stable); err != nil {
		os.Remove(tmp)
		putBack()
		return fail("installing the binary: %w; %s keeps running", err, oldVersion)
	}

	d.setState("swapping")
	failures := r.watchFailures(old.pid)
	defer r.watchFailures(0)
	mark := r.stderrCount()
	pidFile := d.path(pidName)
	// A PID the file holds already is not this swap's new generation: tableflip writes the file
	// at Ready and then tells the old generation, so a new one killed between the two leaves
	// its PID there while the old carries on (found by TestNewGenerationKilledAtSeededMoments:
	// the next swap took the dead PID for its new generation and restarted the duck).
	stale := readPIDFile(pidFile)
	// readyPID is the new generation's PID once the PID file names it, else 0.
	readyPID := func() int {
		if pid := readPIDFile(pidFile); pid != 0 && pid != old.pid && pid != stale && ownedBy(pid, d.cfg.User) {
			return pid
		}
		return 0
	}
	start := time.Now()
	d.log.Info("swapping", "from", oldVersion, "to", op.version, "pid", old.pid)
	old.signal(syscall.SIGHUP)
	if err := atomicfile.SyncDir(d.dir); err != nil {
		// The swap goes on (the new process needs only the name); a power loss could find the
		// old binary named again, which the node's next start repairs (it installs the binary
		// local.json names). Said where `ducks` shows it, not only in the log.
		err = fmt.Errorf("could not sync the duck's folder after installing the new binary: %w; check the disk", err)
		d.setError(err)
		d.log.Warn(err.Error())
	}

	// hotswap starts the new generation at once and gives it ReadyTimeout, running requests
	// included; one that exits before asking for the state (an older SDK) is started again
	// after a wait for running requests (up to ReadyTimeout), with ReadyTimeout of its own.
	bound := 3*d.cfg.ReadyTimeout + 5*time.Second
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var next *proc
	for next == nil {
		if pid := readyPID(); pid != 0 {
			next = r.adopt(pid)
			break
		}
		// Watch the new process before it is Ready, so that it is reaped
		// and killed with the run even if the old one dies first.
		// Only a child that runs the duck's binary is a generation: the old generation's other
		// children are its own helpers, which end with it (sweep), not with the run.
		for _, pid := range childrenOf(old.pid) {
			if runs(pid, stable, d.cfg.User) {
				r.adopt(pid)
			}
		}
		select {
		case report := <-failures:
			putBack()
			d.setState("running")
			return fail("the new version did not take over: %s; %s keeps running (PID %d) and its binary is back at %s; fix %s and swap again%s",
				"the old generation reports: "+report, oldVersion, old.pid, stable, op.version, tail(r.stderrSince(mark)))
		case <-old.done:
			if pid := readyPID(); pid != 0 {
				next = r.adopt(pid) // it handed over before we looked
				continue
			}
			putBack()
			d.endRun(r, false)
			err := fail("the old generation (PID %d) %s during the swap and no new one became Ready; restarting %s from its binary%s", old.pid, old.exited(), oldVersion, tail(r.stderrSince(mark)))
			d.crashed(err.Error())
			return err
		case <-deadline.C:
			// The old generation thaws when the child it waits for dies.
			for _, p := range r.live() {
				if p != old {
					p.signal(syscall.SIGKILL)
				}
			}
			putBack()
			d.setState("running")
			return fail("no new generation became Ready within %s; %s keeps running (PID %d) and its binary is back at %s%s",
				bound, oldVersion, old.pid, stable, tail(r.stderrSince(mark)))
		case <-d.ctx.Done():
			if pid := readyPID(); pid != 0 {
				// It took over: the stop that follows must stop it, and what it runs is op.version.
				next = r.adopt(pid)
				d.mu.Lock()
				d.cur, d.version = next, op.version
				d.mu.Unlock()
				return fail("stopped during the swap, after the new version became Ready")
			}
			putBack()
			return fail("stopped during the swap; the old binary is back at %s", stable)
		case <-tick.C:
		}
	}

	d.mu.Lock()
	d.gen++
	next.gen = d.gen
	d.cur, d.version, d.started = next, op.version, time.Now()
	d.mu.Unlock()
	d.log.Info("swap: new generation ready", "pid", next.pid, "gen", next.gen, "took", time.Since(start))

	// The healthy wait runs from Ready, beside the old generation's exit: waiting for the exit
	// first (its connections moving, its state file synced, 10 to 200 ms when twenty ducks of a
	// host swap at once) put both in every rollout turn, one after the other.
	healthy := time.NewTimer(op.healthy)
	defer healthy.Stop()

	// The old generation hands its open connections over, then exits; it must, because
	// tableflip refuses the next swap until it has.
	select {
	case <-old.done:
	case <-time.After(handOverWait):
		d.log.Warn("old generation did not exit after handing over; killing it", "pid", old.pid, "waited", handOverWait)
		kill(old)
	case <-d.ctx.Done():
		return fail("stopped during the swap, after the new version became Ready")
	}

	// A new generation that died counts even if the healthy wait ended meanwhile: the old one's
	// exit may have taken longer than the wait.
	select {
	case <-healthy.C:
	case <-next.done:
	case <-d.ctx.Done():
		return fail("stopped during the swap, after the new version became Ready")
	}
	select {
	case <-next.done:
		putBack()
		d.mu.Lock()
		d.version = oldVersion
		d.mu.Unlock()
		d.endRun(r, false)
		err := fail("the new generation (PID %d) %s within %s of becoming Ready; restarting %s from its binary and the state it handed over%s",
			next.pid, next.exited(), op.healthy, oldVersion, tail(r.stderrSince(mark)))
		d.crashed(err.Error())
		return err
	default:
	}
	os.Remove(prev)
	d.setState("running")
	d.log.Info("duck swapped", "from", oldVersion, "to", op.version, "pid", next.pid, "gen", next.gen, "took", time.Since(start))
	return nil
}

func tail(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return "; the duck's last stderr lines:\n\t" + strings.Join(lines, "\n\t")
}
