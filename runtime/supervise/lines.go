package supervise

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
)

const (
	// RingSize is how many recent lines are kept per duck.
	RingSize = 1000
	// SubscriberBuffer is how far a subscriber may fall behind before it
	// loses lines.
	SubscriberBuffer = 1024
	// maxLine bounds one line; the rest of a longer one is dropped, so a
	// duck printing without newlines cannot grow the agent's memory.
	maxLine = 64 << 10
)

// ring keeps the last RingSize lines.
type ring struct {
	buf   []Line
	start int
}

func (r *ring) add(l Line) {
	if len(r.buf) < RingSize {
		r.buf = append(r.buf, l)
		return
	}
	r.buf[r.start] = l
	r.start = (r.start + 1) % RingSize
}

func (r *ring) last(n int) []Line {
	if n <= 0 || n > len(r.buf) {
		n = len(r.buf)
	}
	out := make([]Line, 0, n)
	for i := len(r.buf) - n; i < len(r.buf); i++ {
		out = append(out, r.buf[(r.start+i)%len(r.buf)])
	}
	return out
}

// hub fans every line out to the rings, the subscribers and OnLine.
type hub struct {
	onLine func(Line)

	mu     sync.Mutex
	byDuck map[string]*ring
	subs   map[chan Line]struct{}
	closed bool
}

func newHub(onLine func(Line)) *hub {
	return &hub{onLine: onLine, byDuck: make(map[string]*ring), subs: make(map[chan Line]struct{})}
}

func (h *hub) publish(l Line) {
	h.mu.Lock()
	r := h.byDuck[l.Duck]
	if r == nil {
		r = new(ring)
		h.byDuck[l.Duck] = r
	}
	r.add(l)
	for c := range h.subs {
		select {
		case c <- l:
		default: // a slow subscriber loses the line; the duck must not wait
		}
	}
	h.mu.Unlock()
	if h.onLine != nil {
		h.onLine(l)
	}
}

func (h *hub) recent(id string, n int) []Line {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n <= 0 {
		return nil // `logs -f -n 0`: only what comes next, as tail -n 0 -f (it printed every line kept)
	}
	if id == "" {
		// Each duck's last n, in the order they were printed: the last n of all the ducks
		// together left a quiet duck out (`logs -n 1` is each duck's last line).
		var out []Line
		for _, r := range h.byDuck {
			out = append(out, r.last(n)...)
		}
		slices.SortStableFunc(out, func(a, b Line) int { return a.Time.Compare(b.Time) })
		return out
	}
	r := h.byDuck[id]
	if r == nil {
		return nil
	}
	return r.last(n)
}

func (h *hub) subscribe() (<-chan Line, func()) {
	c := make(chan Line, SubscriberBuffer)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(c)
		return c, func() {}
	}
	h.subs[c] = struct{}{}
	return c, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[c]; ok {
			delete(h.subs, c)
			close(c)
		}
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for c := range h.subs {
		delete(h.subs, c)
		close(c)
	}
}

// readLines calls emit for every line of r until EOF, without its newline.
func readLines(r io.Reader, emit func(string)) {
	br := bufio.NewReaderSize(r, 4096)
	var long []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(long) < maxLine {
				long = append(long, chunk[:min(len(chunk), maxLine-len(long))]...)
			}
			continue
		}
		if len(chunk) > 0 || len(long) > 0 {
			line := chunk
			if long != nil {
				if len(long) < maxLine {
					long = append(long, chunk[:min(len(chunk), maxLine-len(long))]...)
				}
				line = long
			}
			line = bytes.TrimSuffix(line, []byte("\n"))
			emit(string(bytes.TrimSuffix(line, []byte("\r"))))
			long = nil
		}
		if err != nil {
			return
		}
	}
}
