package supervise

import (
	"encoding/json"
	"maps"
	"sync/atomic"

	"github.com/duckraft/duckraft/runtime/hotswap"
	"os"
	"sync"
)

// run is the processes started from one first generation: it and every
// generation that followed it by swaps, sharing one stdout pipe, one
// stderr pipe and one lifeline.
type run struct {
	pgid  int    // the process group of its first generation, which every later one shares
	start uint64 // the first generation's start (clock ticks since boot), to tell its group apart
	ended atomic.Bool
	// cutoff: what started before it in the group and is left to this process is an earlier
	// generation's, to end (the start of the newest generation a swap brought in)
	cutoff   atomic.Uint64
	lifeW    *os.File
	lifeOnce sync.Once
	drained  chan struct{} // closed at EOF of both pipes: every process is gone

	mu      sync.Mutex
	procs   []*proc
	tail    []string // the last tailSize stderr lines
	nstderr int
	failPID int // whose "swap failed" lines to report
	fails   chan string
}

func (r *run) add(p *proc) {
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
}

// adopt returns the watched process pid, watching it if it is new.
func (r *run) adopt(pid int) *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		if p.pid == pid && p.alive() {
			return p
		}
	}
	p := watchAdopted(pid)
	r.procs = append(r.procs, p)
	return p
}

func (r *run) live() []*proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*proc
	keep := r.procs[:0]
	for _, p := range r.procs {
		if p.alive() {
			out = append(out, p)
			keep = append(keep, p)
		}
	}
	r.procs = keep
	return out
}

func (r *run) closeLifeline() {
	r.lifeOnce.Do(func() { r.lifeW.Close() })
}

// watchFailures returns a channel that receives what pid reports of a
// failed swap (hotswap.Report, over the run's report pipe); pid 0 stops
// watching.
func (r *run) watchFailures(pid int) <-chan string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failPID = pid
	r.fails = make(chan string, 1)
	return r.fails
}

func (r *run) stderr(text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nstderr++
	r.tail = append(r.tail, text)
	if len(r.tail) > tailSize {
		r.tail = r.tail[len(r.tail)-tailSize:]
	}
}

func (r *run) stderrCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nstderr
}

// stderrSince returns the kept stderr lines printed after the mark'th.
func (r *run) stderrSince(mark int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(r.nstderr-mark, len(r.tail))
	return append([]string(nil), r.tail[len(r.tail)-n:]...)
}

// reported takes one line of the report pipe: a generation's hotswap.Report. A failed swap
// reported by the generation being watched reaches watchFailures' channel; what an old
// generation did with its connections is added to conns; anything else (a line that does not
// decode, from a duck built with another SDK) is logged nowhere and ignored.
func (r *run) reported(line string, conns *connCounts) {
	var rep hotswap.Report
	if json.Unmarshal([]byte(line), &rep) != nil {
		return
	}
	switch rep.Event {
	case hotswap.EventHandedOver:
		if rep.Connections != nil {
			conns.add(*rep.Connections)
		}
	case hotswap.EventSwapFailed:
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.failPID != 0 && rep.PID == r.failPID {
			select {
			case r.fails <- rep.Error:
			default:
			}
		}
	}
}

// connCounts adds up what the old generations of every duck did with their connections as
// they handed over (hotswap.Connections), for the node's metrics.
type connCounts struct {
	mu  sync.Mutex
	sum hotswap.Connections
}

func (c *connCounts) add(m hotswap.Connections) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sum.Moved += m.Moved
	c.sum.MidRequest += m.MidRequest
	c.sum.Hijacked += m.Hijacked
	c.sum.Forwarded += m.Forwarded
	for why, n := range m.FellBack {
		if c.sum.FellBack == nil {
			c.sum.FellBack = map[string]int{}
		}
		c.sum.FellBack[why] += n
	}
}

func (c *connCounts) get() hotswap.Connections {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.sum
	out.FellBack = maps.Clone(c.sum.FellBack)
	return out
}
