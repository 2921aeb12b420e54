package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/duckraft/duckraft/runtime/duckuser"
)

// adoptPoll is how often a generation whose parent is another generation
// is checked for having become this process's child.
const adoptPoll = 10 * time.Millisecond

// proc is one generation of a duck, reaped by its PID alone.
type proc struct {
	pid  int
	p    *os.Process // signals go through it: it holds a pidfd, so a reused PID is never hit
	done chan struct{}

	mu     sync.Mutex
	gen    int    // set when the supervisor counts it as a generation
	status string // how it ended, once done is closed
}

// exited says how the process ended; valid once done is closed.
func (p *proc) exited() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

func (p *proc) finish(status string) {
	p.mu.Lock()
	p.status = status
	p.mu.Unlock()
	close(p.done)
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if p.alive() && p.p != nil {
		p.p.Signal(sig)
	}
}

// watchCmd waits for a process this one started.
func watchCmd(cmd *exec.Cmd) *proc {
	p := &proc{pid: cmd.Process.Pid, p: cmd.Process, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.finish(describeExit(cmd.ProcessState, err))
	}()
	return p
}

// watchAdopted waits for pid, a later generation whose parent is an earlier
// generation. While that parent lives it reaps pid (tableflip waits for its
// child) and all we can see is pid vanishing from /proc. Once the parent
// has exited, pid is our child, because we are its subreaper, and
// os.FindProcess(pid).Wait reaps it with its status: a wait by PID, which
// leaves every other child's status to its own waiter.
func watchAdopted(pid int) *proc {
	p := &proc{pid: pid, done: make(chan struct{})}
	first, err := readStat(pid)
	if err != nil {
		p.finish("exited (reaped by its parent generation; status unknown)")
		return p
	}
	// FindProcess opens a pidfd now, while the PID is surely this process.
	if p.p, err = os.FindProcess(pid); err != nil {
		p.finish("exited (" + err.Error() + ")")
		return p
	}
	go func() {
		me := os.Getpid()
		for {
			st, err := readStat(pid)
			if err != nil || st.start != first.start {
				p.finish("exited (reaped by its parent generation; status unknown)")
				return
			}
			if st.ppid == me {
				ps, err := p.p.Wait()
				p.finish(describeExit(ps, err))
				return
			}
			time.Sleep(adoptPoll)
		}
	}()
	return p
}

func describeExit(ps *os.ProcessState, err error) string {
	if ps == nil {
		if err != nil {
			return "lost (" + err.Error() + ")"
		}
		return "exited"
	}
	return ps.String() // "exit status 3", "signal: killed"
}

type stat struct {
	ppid  int
	pgid  int
	start uint64 // clock ticks after boot; tells a reused PID apart
	state byte   // R, S, D, Z (zombie), ...
}

var errNoProc = errors.New("no such process")

// readStat reads the parent and start time of pid from /proc/<pid>/stat.
func readStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, errNoProc
	}
	// The command name may hold spaces and parentheses; fields resume
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 {
		return stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgid, err3 := strconv.Atoi(string(f[2]))
	start, err2 := strconv.ParseUint(string(f[19]), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return stat{ppid: ppid, pgid: pgid, start: start, state: f[0][0]}, nil
}

// childrenOf lists the processes whose parent is pid. A swap uses it to see
// the new generation before it is Ready, so that it is watched (and reaped)
// even if the old generation dies before the PID file names it.
func childrenOf(pid int) []int {
	// Each thread's children file is cheap to read, where scanning all of
	// /proc is not; kernels built without CONFIG_PROC_CHILDREN lack it.
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil // pid is gone
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if errors.Is(err, os.ErrNotExist) && t.Name() == strconv.Itoa(pid) {
			return scanChildrenOf(pid)
		}
		for _, f := range bytes.Fields(b) {
			if n, err := strconv.Atoi(string(f)); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// processesRunning lists the live processes, owned by the duck's user, whose program is the
// file at bin (or was, before a swap renamed another over it).
func processesRunning(bin string, u *duckuser.User) []int {
	var out []int
	for _, pid := range allPIDs() {
		if pid != os.Getpid() && runs(pid, bin, u) && !procGone(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// runs reports whether pid, owned by the duck's user, runs the program at bin (or did, before
// a swap renamed another over it).
func runs(pid int, bin string, u *duckuser.User) bool {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && strings.TrimSuffix(exe, " (deleted)") == bin && ownedBy(pid, u)
}

// allPIDs lists the processes in /proc.
func allPIDs() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// procGone reports whether pid has exited; a zombie has, and is reaped if it is this process's
// child (an orphan may become one: a supervisor is a subreaper).
func procGone(pid int) bool {
	st, err := readStat(pid)
	if err != nil {
		return true
	}
	if st.state != 'Z' {
		return false
	}
	if st.ppid == os.Getpid() {
		if p, err := os.FindProcess(pid); err == nil {
			p.Wait()
		}
	}
	return true
}

func scanChildrenOf(pid int) []int {
	var out []int
	for _, n := range allPIDs() {
		if st, err := readStat(n); err == nil && st.ppid == pid {
			out = append(out, n)
		}
	}
	return out
}
