package hotswap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

// The environment a supervisor starts a duck with; see the package doc.
const (
	EnvAddr         = "DUCK_ADDR"
	EnvVersion      = "DUCK_VERSION"
	EnvVersionFile  = "DUCK_VERSION_FILE"
	EnvPIDFile      = "DUCK_PIDFILE"
	EnvReadyTimeout = "DUCK_READY_TIMEOUT"
	EnvLifelineFD   = "DUCK_LIFELINE_FD"
	// EnvReportFD names an inherited fd, the write end of a pipe the supervisor reads: each
	// generation writes a Report there, one line of JSON, when a swap fails and it carries on.
	EnvReportFD  = "DUCK_REPORT_FD"
	EnvStateFile = "DUCK_STATE_FILE"
	// EnvDescribe, set to 1, makes Run print the duck's Description as one line of JSON on
	// stdout and return at once, serving nothing: a node asks a version it built whether the
	// state can go back from it before a rollout swaps anything.
	EnvDescribe = "DUCK_DESCRIBE"
)

// Description is what a duck's binary says of its state: the schema it keeps, and the older
// schemas its Config.Downgrade renders the state in (a way back to the versions that keep them).
type Description struct {
	Schema     int   `json:"schema"`
	Downgrades []int `json:"downgrades,omitempty"`
	// Migrates says the version has a Config.Migrate: it takes the state of another schema,
	// an older one as a rule (a version that changed the layout reads the one before).
	Migrates bool `json:"migrates,omitempty"`
}

// CanGoBackTo reports whether state handed over by this version reaches a version that keeps
// schema: the same schema, or one Downgrade renders. (The older version's own Migrate may read
// a newer schema too; a binary cannot say that of another.)
func (d Description) CanGoBackTo(schema int) bool {
	return schema == d.Schema || slices.Contains(d.Downgrades, schema)
}

// describe is Run's answer when EnvDescribe is set.
func describe[S any](cfg Config[S]) error {
	d := Description{Schema: cfg.Schema, Migrates: cfg.Migrate != nil}
	if cfg.Downgrade != nil {
		var zero S
		for to := cfg.Schema - 1; to >= 0; to-- {
			if _, err := cfg.Downgrade(to, zero); err != nil {
				break
			}
			d.Downgrades = append(d.Downgrades, to)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(d)
}

const (
	DefaultAddr         = "127.0.0.1:8080"
	DefaultReadyTimeout = 10 * time.Second
	// DrainBound is how long a generation that has handed over waits for
	// the connections that could not move to the next generation to end
	// before closing the idle ones (connections that move do so at once,
	// and nothing waits for them). It is short because tableflip refuses
	// the next swap until this process has exited.
	DrainBound = 1500 * time.Millisecond
	// stopTimeout bounds a graceful stop's wait for running requests.
	stopTimeout = 5 * time.Second
)

// Names of the files passed from one generation to the next.
const (
	stateFD     = "duckraft-state"
	stateGateFD = "duckraft-state-gate" // where the next generation asks for the state
	lifelineFD  = "duckraft-lifeline"
	reportFD    = "duckraft-report"
	connsFD     = "duckraft-conns" // the channel HTTP connections move through
)

// Config describes a duck's state type S.
type Config[S any] struct {
	// Schema numbers the layout of S. Bump it when a field changes name,
	// type or meaning, and supply Migrate.
	Schema int
	// Migrate converts state handed over by a version of another schema
	// (older, or newer on a rollback whose writer had no Downgrade to this
	// schema) into S. Without it such a swap fails and the old generation
	// carries on.
	Migrate func(fromSchema int, old json.RawMessage) (S, error)
	// Downgrade renders S in the layout of an older schema toSchema, for a
	// swap back to a version of that schema (a rollback, an auto-revert),
	// which could not know this version's layout: Erlang's
	// code_change({down, Vsn}). Return a value that encodes as JSON the
	// way that version's state decodes, or ErrNoDowngrade for a schema it
	// cannot produce. This generation runs it at every hand-over and at a
	// stop with DUCK_STATE_FILE, asking for Schema-1 first and then each
	// lower schema until ErrNoDowngrade, and the results travel with the
	// state; an older version takes its own. Like Migrate it gets and
	// gives values, so it must not keep or change anything s points to.
	Downgrade func(toSchema int, s S) (any, error)
}

// Duck is the running duck as seen by its setup function.
type Duck[S any] struct {
	// State is restored from the previous generation (or DUCK_STATE_FILE,
	// or the zero S) and handed to the next one.
	State *State[S]
	// Version is DUCK_VERSION_FILE's content, DUCK_VERSION, or "dev".
	Version string
	// Generation counts processes since the first start: 1, then one more
	// per successful swap.
	Generation int

	r *runner
}

// Serve serves h on DUCK_ADDR through every swap. It returns at once;
// connections are accepted once the duck is Ready. Call it once: an
// http.ServeMux holds many handlers.
func (d *Duck[S]) Serve(h http.Handler) error {
	if d.r.http != nil {
		return errors.New("hotswap: Serve called twice; serve one http.ServeMux with every handler")
	}
	ln, err := d.r.listen("tcp", d.r.env.addr)
	if err != nil {
		return err
	}
	d.r.http = newServer(ln, h, d.r.log)
	if d.r.upg.HasParent() {
		f, err := d.r.upg.File(connsFD)
		if err != nil {
			return fmt.Errorf("hotswap: inheriting the connection channel: %w", err)
		}
		// None from a previous generation that serves no HTTP, or that
		// predates moving connections. Either way, and if the channel
		// will not open, the previous generation hears nothing from us and
		// its connections fall back to forward-then-close: serving
		// matters more than moving them.
		if f != nil {
			if err := d.r.http.receiveFrom(f); err != nil {
				d.r.log.Warn("connections will not move from the previous generation", "err", err)
			}
		}
	}
	go d.r.http.serve()
	return nil
}

// Listen returns a listener inherited from the previous generation, or a new
// one. Accept waits while a swap decides, and fails with net.ErrClosed once
// this generation has handed over. Unlike Serve's, connections accepted here
// do not move to the next generation (the SDK cannot tell when their
// protocol is between two messages): they stay with this generation until
// it exits, which is as soon as Serve's connections have moved, at most
// DrainBound and its grace after handing over. Close them when Accept fails.
func (d *Duck[S]) Listen(network, addr string) (net.Listener, error) {
	return d.r.listen(network, addr)
}

// Run starts the duck: it restores the state, calls setup (which serves,
// listens and starts goroutines, then returns), becomes Ready and then
// carries out swaps and stops until this generation ends. It returns nil
// when the generation ended well (handed over, or stopped by a signal or the
// lifeline) and an error that says what to fix otherwise; main should exit
// non-zero on an error, which tells the previous generation the swap failed.
func Run[S any](cfg Config[S], setup func(d *Duck[S]) error) error {
	if os.Getenv(EnvDescribe) == "1" {
		return describe(cfg)
	}
	// When the agent dies, its end of our stdout and stderr pipes goes with it, and Go kills a
	// program that writes to a broken stdout or stderr pipe with SIGPIPE: the duck would die on
	// its first quack or log line, before the lifeline's graceful stop saves its state. Ignored,
	// the write just fails and the stop goes on. Ignored first: Notify below holds the
	// os/signal package's lock through its round trips to the signal-mask thread, and Ignore
	// waited for all of them (0.04 ms of a swap, idle).
	signal.Ignore(syscall.SIGPIPE)
	// Catch signals before Ready writes the PID file: a supervisor may
	// send SIGHUP as soon as it sees it, and SIGHUP's default is to die.
	// Asking for them takes a few hundred microseconds on a busy machine
	// (the Go runtime starts a thread for signal masks and waits on it
	// for each signal), so it is done beside the rest of the start, and
	// waited for before Ready.
	sigs := make(chan os.Signal, 4)
	caught := make(chan struct{})
	go func() {
		signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
		close(caught)
	}()
	env, err := readEnv()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid(), "version", env.version)
	parent := os.Getppid() // the previous generation, if this one has a parent
	// The PID file is this package's to write, not tableflip's: see pidFile.
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: env.readyTimeout})
	if err != nil {
		return fmt.Errorf("hotswap: starting tableflip: %w", err)
	}
	pid := preparePIDFile(env.pidFile)
	defer pid.discard()
	r := &runner{env: env, log: log, upg: upg, schema: cfg.Schema, lifeline: make(chan struct{}), sigs: sigs}
	handed, gate, err := r.inheritState()
	if err != nil {
		upg.Stop()
		return err
	}
	// The setup first, while the previous generation serves on, when that one can be told so
	// (it set envNextGeneration): a setup that takes a while, or hangs, holds no request. The
	// state is asked for once the setup is done or reads it. Otherwise ask for the state first:
	// the previous generation stops and freezes while this one goes on starting.
	var early *earlySetup[S]
	var waitState func() error
	if gate != nil {
		if next := nextGeneration(parent); next > 0 {
			early, err = startSetupEarly(gate, next, cfg, r, setup)
		} else {
			waitState, err = askForState(gate)
			if err != nil {
				err = fmt.Errorf("hotswap: %w", err)
			}
		}
		if err != nil {
			upg.Stop()
			return err
		}
	}
	if err := r.watchLifeline(); err != nil {
		upg.Stop()
		return err
	}
	if err := r.openReport(); err != nil {
		upg.Stop()
		return err
	}
	if early != nil {
		if waitState, err = early.askWhenWanted(); err != nil {
			upg.Stop()
			return err
		}
	}
	if waitState != nil {
		if err := waitState(); err != nil {
			upg.Stop()
			return fmt.Errorf("hotswap: %w", err)
		}
	}
	snap, err := r.restore(handed)
	if err != nil {
		upg.Stop()
		return err
	}
	var v S
	if snap.State != nil {
		var how string
		if v, how, err = decode(cfg, snap); err != nil {
			upg.Stop()
			return fmt.Errorf("hotswap: %w", err)
		}
		if how != "" {
			log.Info("state "+how, "from_schema", snap.Schema, "to_schema", cfg.Schema)
		}
	}
	r.generation = snap.Generation + 1
	if early != nil {
		early.d.State.restore(v)
		if err := <-early.done; err != nil {
			upg.Stop()
			return fmt.Errorf("hotswap: duck setup failed: %w", err)
		}
	} else {
		d := &Duck[S]{State: newState(v, downgrades(cfg, log)), Version: env.version, Generation: r.generation, r: r}
		r.state = d.State
		if err := setup(d); err != nil {
			upg.Stop()
			return fmt.Errorf("hotswap: duck setup failed: %w", err)
		}
	}
	<-caught
	// As tableflip's Ready did: the PID file names this process before the
	// previous generation hears that it is Ready.
	if err := pid.publish(); err != nil {
		upg.Stop()
		return fmt.Errorf("hotswap: writing the PID file %s: %w; check that its folder exists and this user may write it", env.pidFile, err)
	}
	if err := upg.Ready(); err != nil {
		// tableflip says Ready to the previous generation last, after the PID file. If that
		// generation died after it handed its state over (this process was reparented),
		// nobody is left to hear it, and this process holds the state, the listeners and the
		// PID file: it carries on as the duck. Exiting here lost the state the dead one had
		// handed over (found by TestOldGenerationKilledAtSeededMoments).
		if !upg.HasParent() || os.Getppid() == parent {
			upg.Stop()
			return fmt.Errorf("hotswap: signalling Ready: %w", err)
		}
		log.Warn("the previous generation died before it heard that this one was Ready; carrying on as the duck with the state it handed over", "err", err)
	}
	// Learn of the previous generation's exit as it happens, not when the
	// next SIGHUP asks: a swap then need not wait on it. The next swap's
	// gate and connection channel are made then too, not at Ready: made
	// while the previous generation exits (a file created in the temporary
	// folder, two socket pairs), they took the CPU its dying threads waited
	// for on a busy machine, and a swap waits for the previous generation
	// anyway.
	r.parentGone = make(chan struct{})
	go func() {
		// tableflip reports an error only once the previous generation's
		// pipe has ended too (data it did not expect): gone either way.
		if err := upg.WaitForParent(context.Background()); err != nil {
			log.Warn("the previous generation ended oddly", "err", err)
		}
		r.prepareNext()
		close(r.parentGone)
		// Last: the unlink frees the old PID file's inode, which a swap
		// or a stop waiting on the two above need not wait for.
		pid.dropPrev()
	}()
	if err := r.resume(); err != nil {
		upg.Stop()
		return err
	}
	log.Info("ready", "generation", r.generation, "addr", env.addr, "schema", cfg.Schema)
	return r.loop()
}

// freezer is the part of State[S] the runner needs, free of S.
type freezer interface {
	freeze() (json.RawMessage, map[int]json.RawMessage, error)
	thaw()
}

// runner carries out swaps and stops for one generation.
type runner struct {
	env        env
	log        *slog.Logger
	upg        *tableflip.Upgrader
	schema     int
	generation int
	state      freezer
	listeners  []*listener
	http       *server
	stateFile  *os.File    // passed to the next generation; nil until a swap
	saved      chan error  // the save of the handed-over state to env.stateFile, while it runs
	out        *handoff    // the channel connections move through, made ahead of the next swap
	gate       *stateGate  // where the next generation asks for the state, made ahead of the next swap
	stopping   atomic.Bool // a stop has begun: a failed swap is not tried again
	// handing says, during a swap, who has the state: handNone until the swap hands it to the
	// new generation (handGiven) or a stop keeps it here (handKept), whichever comes first.
	handing    atomic.Int32
	taker      bool          // the new generation takes connections (known once it is Ready)
	parentGone chan struct{} // closed once the previous generation has exited and the next swap's gate and channel are made
	lifeline   chan struct{}
	report     *os.File // the supervisor's report pipe, nil without one
	sigs       chan os.Signal
	ready      bool
}

func (r *runner) listen(network, addr string) (*listener, error) {
	ln, err := r.upg.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("hotswap: listening on %s %s: %w; pick a free address (%s)", network, addr, err, EnvAddr)
	}
	l, err := newListener(ln)
	if err != nil {
		return nil, fmt.Errorf("hotswap: %w", err)
	}
	r.listeners = append(r.listeners, l)
	if r.ready {
		if err := l.resume(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// inheritState opens the file the previous generation hands its state
// over in, if there is one. It returns the snapshot if the file holds it
// already (a previous generation on an older SDK, or one that froze first);
// if it is pending, it asks for it, and wait returns once it has been
// written.
func (r *runner) inheritState() (handed *snapshot, gate *os.File, err error) {
	if !r.upg.HasParent() {
		return nil, nil, nil
	}
	f, err := r.upg.File(stateFD)
	if err != nil {
		return nil, nil, fmt.Errorf("hotswap: inheriting state: %w", err)
	}
	if f == nil {
		return nil, nil, errors.New("hotswap: the previous generation passed no state; was it built on this SDK?")
	}
	// Our own next swap rewrites this same file: tableflip already
	// passes it on, and the previous generation is done with it once
	// this one has read it.
	r.stateFile = f
	snap, err := readSnapshot(f)
	if err != nil {
		return nil, nil, fmt.Errorf("hotswap: reading handed-over state: %w", err)
	}
	if !snap.Pending {
		return &snap, nil, nil
	}
	g, err := r.upg.File(stateGateFD)
	if err != nil {
		return nil, nil, fmt.Errorf("hotswap: inheriting the state gate: %w", err)
	}
	if g == nil {
		return nil, nil, errors.New("hotswap: the previous generation's state is still to come, but it passed no gate to ask for it through")
	}
	return nil, g, nil
}

// nextGeneration is this generation's number as the previous one, parent, said it through
// envNextGeneration, or 0 if it did not: a previous generation on an older SDK does not, and
// passes on the variable as it got it from its own previous generation (so the PID in it must
// be the parent's).
func nextGeneration(parent int) int {
	var gen, pid int
	if n, _ := fmt.Sscanf(os.Getenv(envNextGeneration), "%d %d", &gen, &pid); n != 2 || pid != parent || gen <= 0 {
		return 0
	}
	return gen
}

// earlySetup is a new generation's setup running before the state has come (Run).
type earlySetup[S any] struct {
	d    *Duck[S]
	gate *net.UnixConn
	done chan error // setup's outcome
	// The ask goes once: from setup's goroutine as soon as setup has returned, if Run's own
	// steps that may fail are done by then (cleared), or else from askWhenWanted.
	cleared chan struct{}
	once    sync.Once
	wait    func() error
	err     error
}

// startSetupEarly greets the previous generation through the gate and starts setup with a
// pending state.
func startSetupEarly[S any](gate *os.File, generation int, cfg Config[S], r *runner, setup func(*Duck[S]) error) (*earlySetup[S], error) {
	uc, err := openGate(gate)
	if err == nil {
		err = sayHello(uc)
		if err != nil {
			uc.Close()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("hotswap: %w", err)
	}
	d := &Duck[S]{State: newPendingState(downgrades(cfg, r.log)), Version: r.env.version, Generation: generation, r: r}
	r.state = d.State
	e := &earlySetup[S]{d: d, gate: uc, done: make(chan error, 1), cleared: make(chan struct{})}
	go func() {
		err := setup(d)
		if err == nil {
			select {
			case <-e.cleared:
				e.ask()
			default: // Run may still fail before it needs the state: it asks then
			}
		}
		e.done <- err
	}()
	return e, nil
}

// ask asks for the state, once; a second caller waits for the first's outcome.
func (e *earlySetup[S]) ask() {
	e.once.Do(func() { e.wait, e.err = ask(e.gate) })
}

// askWhenWanted asks for the state once the setup has returned or reads the state. A setup
// that fails does not ask: the previous generation, greeted, carries on having frozen nothing.
func (e *earlySetup[S]) askWhenWanted() (wait func() error, err error) {
	close(e.cleared) // Run's steps that may fail are behind it
	select {
	case err := <-e.done:
		if err != nil {
			e.gate.Close()
			return nil, fmt.Errorf("hotswap: duck setup failed: %w", err)
		}
		e.done <- nil // for Run, once the state is in
	case <-e.d.State.wantedNow():
	}
	e.ask()
	if e.err != nil {
		return nil, fmt.Errorf("hotswap: %w", e.err)
	}
	return e.wait, nil
}

// restore returns the snapshot handed over by the previous generation
// (handed, or read now from the file it wrote it in), or the one saved at
// the last stop, or an empty one for a first start.
func (r *runner) restore(handed *snapshot) (snapshot, error) {
	if handed != nil {
		return *handed, nil
	}
	if r.upg.HasParent() {
		snap, err := readSnapshot(r.stateFile)
		if err == nil && snap.Pending {
			err = errors.New("it is still pending after the previous generation said it had written it")
		}
		if err != nil {
			return snapshot{}, fmt.Errorf("hotswap: reading handed-over state: %w", err)
		}
		return snap, nil
	}
	if r.env.stateFile == "" {
		return snapshot{}, nil
	}
	f, err := os.Open(r.env.stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return snapshot{}, nil
	}
	if err != nil {
		return snapshot{}, fmt.Errorf("hotswap: opening %s=%s: %w", EnvStateFile, r.env.stateFile, err)
	}
	defer f.Close()
	snap, err := readSnapshot(f)
	if err == nil && snap.Pending {
		err = errors.New("it holds no state")
	}
	if err != nil {
		return snapshot{}, fmt.Errorf("hotswap: reading %s=%s: %w; remove it to start from empty state", EnvStateFile, r.env.stateFile, err)
	}
	r.log.Info("state restored", "file", r.env.stateFile, "schema", snap.Schema)
	return snap, nil
}

// Report is what a generation tells its supervisor over EnvReportFD, one line of JSON each: the
// channel by which a supervisor learns how a swap went, rather than by reading the duck's log.
type Report struct {
	PID   int    `json:"pid"`   // the generation that reports
	Event string `json:"event"` // EventSwapFailed or EventHandedOver
	Error string `json:"error,omitempty"`
	// Connections is what a generation that handed over did with its
	// connections (EventHandedOver), so that a supervisor can count them.
	Connections *Connections `json:"connections,omitempty"`
}

// EventSwapFailed: the new generation failed or timed out; the reporting (old) generation
// thawed and carries on with its state.
const EventSwapFailed = "swap failed"

// EventHandedOver: the reporting (old) generation handed its connections over
// and exits; Report.Connections says how many moved and how many could not.
// A supervisor that does not know the event ignores it.
const EventHandedOver = "handed over"

// openReport takes the report pipe, from the supervisor (the first generation) or from the
// previous generation through tableflip, and passes it on to the next.
func (r *runner) openReport() error {
	if r.env.reportFD < 0 {
		return nil
	}
	if r.upg.HasParent() {
		f, err := r.upg.File(reportFD)
		if err != nil {
			return fmt.Errorf("hotswap: inheriting the report pipe: %w", err)
		}
		r.report = f // nil when the previous generation had none: nothing to tell
		return nil
	}
	fd := r.env.reportFD
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fmt.Errorf("hotswap: %s=%d is not an open file descriptor (%v); pass the write end of a pipe, e.g. with exec.Cmd.ExtraFiles", EnvReportFD, fd, err)
	}
	syscall.CloseOnExec(fd)
	r.report = os.NewFile(uintptr(fd), "report")
	if err := r.upg.AddFile(reportFD, r.report); err != nil {
		return fmt.Errorf("hotswap: passing the report pipe on: %w", err)
	}
	return nil
}

// tell writes rep to the report pipe, if there is one. One write of one line under PIPE_BUF
// (4 KiB) reaches the reader whole, whichever generation writes.
func (r *runner) tell(rep Report) {
	if r.report == nil {
		return
	}
	if len(rep.Error) > 3000 {
		rep.Error = rep.Error[:3000] + " ..."
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return
	}
	if _, err := r.report.Write(append(b, '\n')); err != nil {
		r.log.Warn("could not tell the supervisor", "event", rep.Event, "err", err)
	}
}

// watchLifeline closes r.lifeline when the supervisor's end of the pipe
// closes. Pdeathsig would not do: it is cleared across fork, so the second
// generation would lack it.
func (r *runner) watchLifeline() error {
	if r.env.lifelineFD < 0 {
		return nil
	}
	var f *os.File
	if r.upg.HasParent() {
		// The number in the environment was the first generation's;
		// tableflip hands the pipe on under a name.
		var err error
		if f, err = r.upg.File(lifelineFD); err != nil {
			return fmt.Errorf("hotswap: inheriting the lifeline: %w", err)
		}
		if f == nil {
			return errors.New("hotswap: the previous generation passed no lifeline although " + EnvLifelineFD + " is set")
		}
	} else {
		fd := r.env.lifelineFD
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			return fmt.Errorf("hotswap: %s=%d is not an open file descriptor (%v); pass the read end of a pipe, e.g. with exec.Cmd.ExtraFiles", EnvLifelineFD, fd, err)
		}
		// Only tableflip's copy should reach the next generation.
		syscall.CloseOnExec(fd)
		f = os.NewFile(uintptr(fd), "lifeline")
		if err := r.upg.AddFile(lifelineFD, f); err != nil {
			return fmt.Errorf("hotswap: passing the lifeline on: %w", err)
		}
	}
	go func() {
		io.Copy(io.Discard, f)
		close(r.lifeline)
	}()
	return nil
}

func (r *runner) loop() error {
	sigs := r.sigs
	swapped := make(chan error, 1)
	swapping := false
	for {
		var reason string
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if swapping {
					r.log.Warn("SIGHUP ignored: a swap is already in progress")
					continue
				}
				swapping = true
				r.handing.Store(handNone)
				go func() { swapped <- r.swap() }()
				continue
			}
			reason = sig.String()
		case <-r.lifeline:
			reason = "lifeline closed: the supervisor is gone"
		case err := <-swapped:
			swapping = false
			if err != nil {
				r.log.Error("swap failed; this generation carries on with its state", "err", err)
				r.tell(Report{PID: os.Getpid(), Event: EventSwapFailed, Error: err.Error()})
				continue
			}
			return r.handOver(sigs)
		}
		r.log.Info("stopping", "reason", reason)
		if swapping {
			r.stopping.Store(true)
			// Before the state is handed over, the stop keeps it: tableflip's Stop kills the new
			// generation, and this one saves. After, the state is the new generation's, which
			// may be serving already: killing it then lost what it had answered (found by
			// TestStopAtSeededMomentsOfASwapLosesNothing). The swap then ends as it will, within
			// the ready timeout: handed over, the new generation saves at its own stop; failed,
			// this one has thawed, and saves.
			if r.handing.CompareAndSwap(handNone, handKept) {
				r.upg.Stop()
			}
			if err := <-swapped; err == nil {
				return r.handOver(sigs)
			}
		}
		return r.stop()
	}
}

// swap replaces this generation with a new one; on failure it carries on
// with its state as it was. The new generation starts while this one
// serves, and asks for the state through the gate (stategate.go) once its
// runtime is up: only then does this one stop reading requests, wait for
// the running ones, freeze and write the state, so that the requests held
// wait for the state's hand-over and the new generation's last steps, not
// for its whole start. Without a gate (it could not be made), or when the
// new generation exits before asking, as one on an older SDK does when it
// finds no state in the file, nothing is frozen yet: the state is then
// frozen first and the new generation started after it (swapFrozenFirst).
func (r *runner) swap() error {
	start := time.Now()
	if err := r.waitForParent(); err != nil {
		return err
	}
	if r.http != nil && r.out == nil {
		// It could not be made at Ready; try again, before the new
		// generation starts with the files registered by then. Without it
		// connections cannot move and fall back to forwarding.
		r.prepareHandoff()
	}
	gate := r.gate
	r.gate = nil // each swap its own; thaw makes the next
	if gate == nil {
		return r.swapFrozenFirst(start)
	}
	defer gate.close()
	// The next generation runs its setup before it asks, and greets us through the gate first.
	os.Setenv(envNextGeneration, fmt.Sprintf("%d %d", r.generation+1, os.Getpid()))
	up := r.startUpgrade()
	select {
	case err := <-gate.asked():
		if err != nil {
			gate.close()
			<-up.done
			return errors.Join(fmt.Errorf("the new generation did not ask for the state: %w", err), up.err, r.thaw())
		}
	case <-up.done:
		switch {
		case up.err != nil && gate.helloFrom():
			// It greeted us: on this SDK, and its setup failed (or it died) before it needed
			// the state. Nothing was frozen.
			return r.finishSwap(start, up.err)
		case up.err == nil:
			// Ready without the state: not a duck on this SDK. The state
			// is frozen and saved all the same, and the hand-over goes on.
			logFrozen, err := r.freezeForSwap(start, nil)
			if err != nil {
				r.log.Warn("swap: the new generation became Ready without asking for the state; this generation could not freeze it", "err", err)
			} else {
				logFrozen()
			}
			return r.finishSwap(start, nil)
		case r.stopping.Load() || time.Since(up.began) >= r.env.readyTimeout:
			// Not worth a second start: this generation is stopping, or the
			// first start had its whole time. finishSwap says which, and
			// renews the connection channel the dead generation held.
			return r.finishSwap(start, up.err)
		}
		r.log.Warn("swap: the new generation exited before asking for the state; starting it again with the state written first, as an SDK from before the state was asked for expects",
			"err", up.err)
		return r.swapFrozenFirst(start)
	}
	logFrozen, err := r.freezeForSwap(start, up.done)
	if err == nil {
		err = r.handOverState()
	}
	if err != nil {
		gate.close() // the new generation gives up, having changed nothing
		<-up.done
		return errors.Join(err, up.err, r.thaw())
	}
	if err := gate.written(); err != nil {
		// It has gone; its upgrade says how.
		r.log.Warn("swap: telling the new generation that the state is written failed", "err", err)
	}
	logFrozen()
	<-up.done
	return r.finishSwap(start, up.err)
}

// swapFrozenFirst is the swap as an SDK from before the gate made it: the
// state is frozen and written before the new generation starts.
func (r *runner) swapFrozenFirst(start time.Time) error {
	logFrozen, err := r.freezeForSwap(start, nil)
	if err == nil {
		err = r.handOverState()
	}
	if err != nil {
		return errors.Join(err, r.thaw())
	}
	up := r.startUpgrade()
	logFrozen()
	<-up.done
	return r.finishSwap(start, up.err)
}

// Who has the state during a swap (runner.handing).
const (
	handNone int32 = iota
	handGiven
	handKept
)

// handOverState gives the frozen state to the new generation, unless a stop kept it first.
func (r *runner) handOverState() error {
	if !r.handing.CompareAndSwap(handNone, handGiven) {
		return errors.New("stopped before the state was handed over")
	}
	return nil
}

// upgrading is tableflip's Upgrade running in its own goroutine.
type upgrading struct {
	began time.Time
	done  chan struct{}
	err   error // once done is closed
}

func (r *runner) startUpgrade() *upgrading {
	up := &upgrading{began: time.Now(), done: make(chan struct{})}
	go func() {
		up.err = r.upgrade()
		close(up.done)
	}()
	return up
}

// freezeForSwap stops this generation (no request read or running, no
// listener accepting, the state frozen) and writes the state into the
// file the next generation reads; on failure the caller thaws. It gives up
// waiting for running requests when abort closes (the new generation
// failed) or the ready timeout passes. logFrozen says it in the log, to be
// called once the new generation has been told: a line is a write, and
// wakes its reader.
func (r *runner) freezeForSwap(start time.Time, abort <-chan struct{}) (logFrozen func(), err error) {
	// Said only when the hold takes a while: a line is a write, and wakes
	// its reader, on every swap's path; "state frozen" says the rest.
	slow := time.AfterFunc(slowHold, func() {
		running := 0
		if r.http != nil {
			running = r.http.runningNow()
		}
		r.log.Info("swap: waiting for running requests before freezing", "generation", r.generation,
			"requests_running", running, "hint", "a handler that will change the state no more (a stream, a long poll) can call hotswap.Detach")
	})
	if r.http != nil {
		if err := r.http.hold(r.env.readyTimeout, abort); err != nil {
			slow.Stop()
			return nil, fmt.Errorf("waiting for running requests: %w", err)
		}
	}
	slow.Stop()
	for _, l := range r.listeners {
		l.pause()
	}
	raw, older, err := r.state.freeze()
	if err != nil {
		return nil, err
	}
	if err := r.handOff(snapshot{Schema: r.schema, Generation: r.generation, State: raw, Older: older}); err != nil {
		return nil, fmt.Errorf("writing the state for the new generation: %w", err)
	}
	detached := 0
	if r.http != nil {
		detached = r.http.detachedNow()
	}
	frozen := time.Since(start)
	return func() {
		r.log.Info("swap: state frozen and handed over", "state_bytes", len(raw), "frozen_after", frozen, "requests_detached", detached)
	}, nil
}

// finishSwap acts on the new generation's upgrade: Ready (err nil), this
// generation's connections go; otherwise it thaws.
func (r *runner) finishSwap(start time.Time, err error) error {
	if err != nil {
		if r.out != nil {
			r.out.close()
			r.out = nil
		}
		why := fmt.Errorf("the new generation failed before it was Ready: %w", err)
		if time.Since(start) >= r.env.readyTimeout {
			why = fmt.Errorf("the new generation did not become Ready within %s: %w", r.env.readyTimeout, err)
		}
		return errors.Join(why, r.thaw())
	}
	// The idle connections go now, from here, rather than after the
	// runner's loop has heard of the outcome.
	if r.http != nil {
		r.taker = r.http.release(r.out)
	}
	// The new generation's PID is in its own "ready" line: reading the PID
	// file here would delay the hand-over.
	r.log.Info("swap: new generation ready", "took", time.Since(start))
	return nil
}

// slowHold is how long a swap's hold may take before the log says that
// the swap waits for running requests.
const slowHold = 100 * time.Millisecond

// prepareHandoff makes the channel the next swap's connections move
// through, ahead of the swap so that a swap does not wait for it; r.out
// stays nil if it cannot be made.
func (r *runner) prepareHandoff() {
	out, err := newHandoff(r.upg.AddFile)
	if err != nil {
		r.log.Warn("connections will not move to the next generation; they will fall back to forwarding", "err", err)
		return
	}
	r.out = out
}

// waitForParent waits for the previous generation to finish draining:
// tableflip refuses to swap until it has exited, and a SIGHUP that comes
// while it drains is better served late than refused. It also waits for the
// gate and connection channel made once it has gone (Run).
func (r *runner) waitForParent() error {
	select {
	case <-r.parentGone:
		return nil
	default:
	}
	bound := time.NewTimer(DrainBound + 10*time.Second)
	defer bound.Stop()
	select {
	case <-r.parentGone:
		return nil
	case <-r.upg.Exit():
		// A stop should not wait for the parent, nor for a gate stuck in its
		// making (a hung file system): it must get to save the state.
		return errors.New("stopping; the swap is not made")
	case <-bound.C:
		return fmt.Errorf("the previous generation has not exited after %s; swap again once it has", DrainBound+10*time.Second)
	}
}

// upgrade is tableflip's Upgrade, retried while tableflip has not yet
// noticed the parent's exit that WaitForParent already reported (its own
// goroutine learns of it a moment later). tableflip does not export that
// error, hence the string.
func (r *runner) upgrade() error {
	for try := 0; ; try++ {
		err := r.upg.Upgrade()
		if err == nil || err.Error() != "parent hasn't exited" || try == 100 {
			return err
		}
		time.Sleep(time.Millisecond)
	}
}

// openStateFile makes the file the state is handed over in, if this
// generation has none yet, and registers it with tableflip so that the next
// generation inherits it. The file has no name: only the generations ever
// see it.
func (r *runner) openStateFile() error {
	if r.stateFile != nil {
		return nil
	}
	f, err := os.CreateTemp("", "duck-state-")
	if err != nil {
		return err
	}
	os.Remove(f.Name())
	if err := r.upg.AddFile(stateFD, f); err != nil {
		f.Close()
		return err
	}
	r.stateFile = f
	return nil
}

// prepareGate readies the next swap to start the new generation before
// freezing: the state file says the state is pending, and the gate the
// new generation asks for it through is made. r.gate stays nil if either
// fails, and the next swap freezes first.
func (r *runner) prepareGate() {
	if r.gate != nil {
		return
	}
	err := r.openStateFile()
	if err == nil {
		err = writeContent(r.stateFile, pendingState)
	}
	if err == nil {
		r.gate, err = newStateGate(r.upg.AddFile)
	}
	if err != nil {
		r.log.Warn("the next swap will freeze the state before starting the new generation, holding requests longer", "err", err)
	}
}

// handOff writes the snapshot into the file the next generation inherits.
func (r *runner) handOff(snap snapshot) error {
	if err := r.openStateFile(); err != nil {
		return err
	}
	if err := writeSnapshot(r.stateFile, snap); err != nil {
		return err
	}
	// Also leave the handed-over state where a restart looks for it: if both generations die
	// after the swap (a kill -9, the machine), the supervisor starts the duck again from this
	// state instead of the one saved at its last graceful stop. It is saved with an fsync,
	// 0.2 ms and more on a disk, so alongside the new generation's last steps rather than before them;
	// this generation waits for it before it exits (handOver), before its next save, and the
	// next generation waits for this one's exit before it saves at a stop.
	if r.env.stateFile != "" {
		r.waitSaved()
		saved := make(chan error, 1)
		go func() { saved <- saveSnapshot(r.env.stateFile, snap) }()
		r.saved = saved
	}
	return nil
}

// waitSaved waits for the save handOff started, if any.
func (r *runner) waitSaved() {
	if r.saved == nil {
		return
	}
	if err := <-r.saved; err != nil {
		r.log.Error("saving the handed-over state failed; after a crash the duck would start from the state saved before", "file", r.env.stateFile, "err", err)
	}
	r.saved = nil
}

// thaw lets this generation serve and change its state again after a failed
// swap, and makes what the next swap needs (at the first Ready, Run does
// the two apart).
func (r *runner) thaw() error {
	if err := r.resume(); err != nil {
		return err
	}
	r.prepareNext()
	return nil
}

// resume lets this generation serve and change its state.
func (r *runner) resume() error {
	r.ready = true
	r.state.thaw()
	r.reclaimPIDFile()
	if r.http != nil {
		if err := r.http.carryOn(); err != nil {
			return fmt.Errorf("hotswap: %w", err)
		}
	}
	for _, l := range r.listeners {
		if err := l.resume(); err != nil {
			return fmt.Errorf("hotswap: %w", err)
		}
	}
	return nil
}

// prepareNext makes what the next swap needs ahead of it: the channel its
// connections move through and the gate its state is asked for through.
func (r *runner) prepareNext() {
	if r.http != nil && r.out == nil {
		r.prepareHandoff()
	}
	r.prepareGate()
}

// reclaimPIDFile names this process in the PID file again after a failed
// swap: tableflip writes the file when the new generation is Ready, before
// it tells this one, so a new generation that died in between left its own
// PID there, and whoever reads the file (a supervisor, the next swap) would
// take a dead process for the duck.
func (r *runner) reclaimPIDFile() {
	if r.env.pidFile == "" || readPID(r.env.pidFile) == os.Getpid() {
		return
	}
	tmp, err := writePIDTemp(r.env.pidFile)
	if err == nil {
		if err = os.Rename(tmp, r.env.pidFile); err != nil {
			os.Remove(tmp)
		}
	}
	if err != nil {
		r.log.Warn("the PID file may name the failed new generation", "file", r.env.pidFile, "err", err)
	}
}

// readPID is the PID a PID file holds, 0 if none.
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// handOver moves this generation's connections to the next one, forwarding
// requests that come before they can move, then returns so the process
// exits.
func (r *runner) handOver(sigs <-chan os.Signal) error {
	for _, l := range r.listeners {
		l.Close()
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case sig := <-sigs:
				if sig == syscall.SIGHUP {
					r.log.Warn("SIGHUP ignored: this generation has handed over; signal the new one (see the PID file)")
					continue
				}
				close(stop)
				return
			case <-r.lifeline:
				close(stop)
				return
			case <-done:
				return
			}
		}
	}()
	if r.http == nil {
		r.waitSaved()
		r.log.Info("exiting: handed over", "generation", r.generation)
		return nil
	}
	start := time.Now()
	m := r.http.handOver(r.out, r.taker, DrainBound, stop)
	r.waitSaved()
	r.log.Info("exiting: handed over", "generation", r.generation, "took", time.Since(start),
		"connections_moved", m.Moved, "connections_moved_mid_request", m.MidRequest, "connections_fell_back", m.fellBackTotal(), "connections_hijacked", m.Hijacked,
		"requests_forwarded", m.Forwarded)
	r.tell(Report{PID: os.Getpid(), Event: EventHandedOver, Connections: &m})
	return nil
}

// stop ends the duck for good: no generation follows.
func (r *runner) stop() error {
	for _, l := range r.listeners {
		l.pause()
	}
	if r.http != nil {
		r.http.shutdown(stopTimeout)
	}
	raw, older, err := r.state.freeze()
	if err == nil && r.env.stateFile != "" {
		r.waitSaved()
		// The previous generation may still be saving what it handed
		// over (handOff); this generation's state is newer and must
		// land last.
		select {
		case <-r.parentGone:
		case <-time.After(DrainBound + stopTimeout):
		}
		err = saveSnapshot(r.env.stateFile, snapshot{Schema: r.schema, Generation: r.generation, State: raw, Older: older})
	}
	r.upg.Stop()
	if err != nil {
		return fmt.Errorf("hotswap: saving the state at stop: %w", err)
	}
	r.log.Info("stopped", "generation", r.generation)
	return nil
}

type env struct {
	addr         string
	version      string
	pidFile      string
	readyTimeout time.Duration
	lifelineFD   int
	reportFD     int
	stateFile    string
}

func readEnv() (env, error) {
	e := env{
		addr:         os.Getenv(EnvAddr),
		version:      os.Getenv(EnvVersion),
		pidFile:      os.Getenv(EnvPIDFile),
		readyTimeout: DefaultReadyTimeout,
		lifelineFD:   -1,
		reportFD:     -1,
		stateFile:    os.Getenv(EnvStateFile),
	}
	if e.addr == "" {
		e.addr = DefaultAddr
	}
	if p := os.Getenv(EnvVersionFile); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return e, fmt.Errorf("hotswap: reading %s=%s: %w; write the version there before starting or swapping", EnvVersionFile, p, err)
		}
		e.version = strings.TrimSpace(string(b))
	}
	if e.version == "" {
		e.version = "dev"
	}
	if s := os.Getenv(EnvReadyTimeout); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return e, fmt.Errorf("hotswap: %s=%q is not a positive duration; use a Go duration such as 10s", EnvReadyTimeout, s)
		}
		e.readyTimeout = d
	}
	if s := os.Getenv(EnvLifelineFD); s != "" {
		fd, err := strconv.Atoi(s)
		if err != nil || fd < 3 {
			return e, fmt.Errorf("hotswap: %s=%q is not a file descriptor number above 2; pass the read end of the supervisor's pipe", EnvLifelineFD, s)
		}
		e.lifelineFD = fd
	}
	if s := os.Getenv(EnvReportFD); s != "" {
		fd, err := strconv.Atoi(s)
		if err != nil || fd < 3 {
			return e, fmt.Errorf("hotswap: %s=%q is not a file descriptor number above 2; pass the write end of the supervisor's report pipe", EnvReportFD, s)
		}
		e.reportFD = fd
	}
	return e, nil
}
