package hotswap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// The new generation is started before the old one freezes its state, so
// that its exec and the Go runtime's start overlap with the old one still
// serving. It then asks for the state through a gate, a Unix socket pair
// whose far end it inherits through tableflip, and waits: the old
// generation stops, freezes, writes the state into the file it passed and
// says so through the gate. Until then that file holds pendingState,
// which the new generation takes for "ask". A new generation on an SDK
// from before the gate reads the file at once, finds no state in it and
// exits; the old generation, which has frozen nothing yet, starts it again
// the way that SDK expects (the state written first). The gate also
// tells a new generation whose old one could not freeze to give up: it
// closes, and the new generation exits before it has changed anything.

// Bytes on the gate, one message each.
const (
	askByte     = 'w' // the new generation waits for the state
	writtenByte = 's' // the state is in the file
	// gateHelloByte: the new generation runs its setup before it asks (Run), while the old one
	// serves on. Sent only to an old generation that said it understands it (envNextGeneration):
	// one that does not would take it for a bad ask. An old generation that heard it knows the
	// new one is on this SDK, and does not start it again the older SDKs' way if it exits
	// before asking: its setup failed.
	gateHelloByte = 'h'
)

// envNextGeneration is set by an old generation before it starts the next one: the next one's
// generation number, which also says that this old generation takes a hello on the gate. A
// duck's setup reads Duck.Generation, and it runs before the state (with the generation in
// it) has come.
const envNextGeneration = "DUCK_NEXT_GENERATION" // "<generation> <PID of the one that set it>"

// pendingState is the content of the state file while the next generation
// has still to ask for the state. It has no "state" field, so an SDK from
// before the gate refuses it rather than taking it for an empty state.
var pendingState = []byte(`{"pending":true}`)

// stateGate is the old generation's end of the gate.
type stateGate struct {
	uc      *net.UnixConn
	ask     chan error    // the outcome of reading the ask: nil for an ask
	helloC  chan struct{} // closed at the hello
	helloed atomic.Bool
}

// newStateGate makes the gate and registers its far end with tableflip, so
// that the next generation inherits it; the one read of it (the next
// generation's ask) starts at once, and asked delivers its outcome.
func newStateGate(add func(name string, f *os.File) error) (*stateGate, error) {
	uc, err := passedPair(add, stateGateFD, "the state gate")
	if err != nil {
		return nil, err
	}
	g := &stateGate{uc: uc, ask: make(chan error, 1), helloC: make(chan struct{})}
	go func() {
		var b [1]byte
		for {
			n, err := g.uc.Read(b[:])
			switch {
			case err != nil:
			case n == 1 && b[0] == gateHelloByte && !g.helloed.Load():
				g.helloed.Store(true)
				close(g.helloC)
				continue
			case n != 1 || b[0] != askByte:
				err = fmt.Errorf("the new generation sent %q through the state gate, not an ask", b[:n])
			}
			g.ask <- err
			return
		}
	}()
	return g, nil
}

// helloFrom reports whether the next generation, which has exited, said hello: it is on an SDK
// that runs its setup before it asks for the state. Its hello, if any, is in the gate's buffer
// by then, but the reader may not have run yet (found by review: one swap in ninety took a
// setup that failed for an older SDK's exit): it gets a moment.
func (g *stateGate) helloFrom() bool {
	select {
	case <-g.helloC:
		return true
	case <-time.After(helloWait):
		return g.helloed.Load()
	}
}

// helloWait bounds helloFrom's wait; only a new generation that exits before it asks, without
// a hello (one on an older SDK), waits it out.
const helloWait = 100 * time.Millisecond

// asked delivers nil once the next generation has asked for the state, or
// why it will not (the gate closed).
func (g *stateGate) asked() <-chan error { return g.ask }

// written tells the next generation that the state is in the file.
func (g *stateGate) written() error {
	_, err := g.uc.Write([]byte{writtenByte})
	return err
}

// close ends the gate; a next generation waiting on it gives up.
func (g *stateGate) close() { g.uc.Close() }

// errNoState is what a new generation waiting on the gate hears when the
// old one closed it: it could not freeze, or it is gone.
var errNoState = errors.New("the previous generation closed the state gate without handing its state over (it could not freeze, or it stopped)")

// askForState is the new generation's side: it asks through the gate f,
// and wait returns once the old generation has written the state, or with
// errNoState. Asking is split from waiting so that the new generation can
// go on starting while the old one freezes.
func askForState(f *os.File) (wait func() error, err error) {
	uc, err := openGate(f)
	if err != nil {
		return nil, err
	}
	return ask(uc)
}

// openGate is the new generation's end of the gate, from the file it inherited.
func openGate(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("opening the state gate from the previous generation: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("the state gate from the previous generation is a %T, not a Unix socket", c)
	}
	return uc, nil
}

// sayHello tells the old generation that this one runs its setup before it asks.
func sayHello(uc *net.UnixConn) error {
	if _, err := uc.Write([]byte{gateHelloByte}); err != nil {
		return fmt.Errorf("greeting the previous generation through the state gate: %w", err)
	}
	return nil
}

// ask asks through the gate uc; see askForState.
func ask(uc *net.UnixConn) (wait func() error, err error) {
	if _, err := uc.Write([]byte{askByte}); err != nil {
		uc.Close()
		return nil, fmt.Errorf("asking the previous generation for the state: %w", err)
	}
	return func() error {
		defer uc.Close()
		var b [8]byte
		n, err := uc.Read(b[:])
		if err != nil || n != 1 || b[0] != writtenByte {
			return errNoState
		}
		return nil
	}, nil
}
