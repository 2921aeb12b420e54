package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progress shows what the CLI is waiting for and for how long: one line redrawn in place on a
// terminal, a line per step when piped (so logs and CI output stay readable).
type progress struct {
	w    io.Writer
	tty  bool
	mu   sync.Mutex
	what string
	t0   time.Time
	done chan struct{}
	once sync.Once
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func newProgress(f *os.File) *progress {
	p := &progress{w: f, tty: isTerminal(f), done: make(chan struct{})}
	if p.tty {
		go p.redraw()
	}
	return p
}

// step starts waiting for something new.
func (p *progress) step(what string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.what, p.t0 = what, time.Now()
	if p.tty {
		p.draw()
	} else {
		fmt.Fprintln(p.w, what+" ...")
	}
}

// finish prints a lasting line for the step that just ended.
func (p *progress) finish(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	took := ""
	if !p.t0.IsZero() {
		took = fmt.Sprintf(" (%.1fs)", time.Since(p.t0).Seconds())
	}
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(p.w, line+took)
	p.what, p.t0 = "", time.Time{}
}

func (p *progress) draw() {
	if p.what == "" {
		return
	}
	fmt.Fprintf(p.w, "\r\033[K%s ... %.1fs", p.what, time.Since(p.t0).Seconds())
}

func (p *progress) redraw() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
			p.mu.Lock()
			p.draw()
			p.mu.Unlock()
		}
	}
}

// close stops redrawing and clears an unfinished line.
func (p *progress) close() {
	p.once.Do(func() {
		close(p.done)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.tty && p.what != "" {
			fmt.Fprint(p.w, "\r\033[K")
		}
	})
}
