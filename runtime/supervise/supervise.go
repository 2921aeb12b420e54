// Package supervise is the supervisor inside the node agent: it starts duck
// programs, captures every line they print, swaps them to a new binary with
// tableflip, restarts them when they crash and stops them, tracking each duck
// by a stable ID across all its processes (generations).
//
// It is the other side of the environment contract in runtime/hotswap's
// package doc. A duck is started by an absolute, stable path, Dir/<id>/duck,
// because tableflip re-executes os.Args[0]; a swap renames the new binary
// over that path and sends SIGHUP. The PID file tableflip writes at Ready
// names each new generation.
//
// # Reaping
//
// New makes the calling process a child subreaper, so that when an old
// generation exits its child (the next generation) becomes the agent's
// child rather than init's, and its exit status comes back here. Processes
// are reaped by PID only, never with wait4(-1): a catch-all reaper would
// steal the exit status of the agent's other children (go build), and
// os/exec would then fail. The first generation of a run is an exec.Cmd and
// is waited by cmd.Wait; a later one is waited by os.FindProcess(pid).Wait
// once /proc says its parent is this process.
//
// # Crashes and state
//
// A duck that exits outside a swap or a stop is restarted from the stable
// path with backoff (100ms doubling to 5s), OTP style: more than
// Config.MaxRestarts crashes within Config.Window and it is given up on
// (state "failed"). Any exit counts, even status 0: a duck is meant to run
// until it is stopped. A restarted duck starts from DUCK_STATE_FILE, which
// the duck writes when it stops gracefully (Stop, Close, its lifeline
// closing) and also at every swap's handover; a crash (kill -9, a panic)
// writes none, so a crash loses every change since the last graceful stop
// or handover. A new version that dies within Config.Healthy has the old
// one restarted from the state it handed over.
//
// # Lifeline
//
// Each run of a duck gets the read end of a pipe (DUCK_LIFELINE_FD) whose
// write end only the supervisor holds; every generation inherits it, and
// sees EOF when the agent dies, so ducks die with their agent even across
// swaps (Pdeathsig would not: it is cleared across fork).
//
// # Users
//
// With Config.User set (a root node), ducks run with that user's
// credentials and no supplementary groups, and the folders are laid out so
// that a duck can run, swap and keep its state but change nothing the node
// executes:
//
//	Dir/            root, group User's, 0710: traversed, not listed
//	Dir/<id>/       root, group User's, 0710
//	Dir/<id>/duck   root 0755: exec'd by tableflip, replaced by the node (rename)
//	Dir/<id>/version root 0644
//	Dir/<id>/run/   User's, 0700: the PID file and state file (tableflip and
//	                the SDK write both by rename in their folder), and the
//	                duck's working directory
//
// A PID the duck writes in its PID file is believed only for a process of
// User: otherwise a duck could name any process for the node to signal.
// The lifeline and the listeners are descriptors, inherited whoever runs.
package supervise

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/duckraft/duckraft/runtime/duckuser"
	"github.com/duckraft/duckraft/runtime/hotswap"
)

// Config configures a Supervisor; zero fields take the defaults below.
type Config struct {
	// Dir is the node's ducks folder: Dir/<id>/ holds the stable binary
	// path (duck) and the version file (version), which only the node
	// writes, and run/, the duck's own folder and its working directory,
	// which holds the PID file (pid) and the state file (state.json).
	Dir string
	// User, when set, is who ducks run as (see the package doc, # Users);
	// nil runs them as this process's user.
	User *duckuser.User
	Log  *slog.Logger
	// OnLine is called for every line any duck prints, from the goroutine
	// reading that duck's output: it must return quickly, or the duck
	// blocks on a full pipe.
	OnLine func(Line)
	// ReadyTimeout is how long a new generation may take to become Ready;
	// it is passed to ducks as DUCK_READY_TIMEOUT too. Default 10s.
	ReadyTimeout time.Duration
	// Healthy is how long a new generation must stay up after Ready for a
	// Swap to succeed. Default 500ms.
	Healthy time.Duration
	// MaxRestarts crashes within Window are restarted; one more and the
	// duck is given up on (OTP's restart intensity). Default 5 in 30s.
	MaxRestarts int
	Window      time.Duration
	// StopTimeout bounds a graceful stop before SIGKILL. Default 8s: the duck SDK gives running
	// requests 5 s at a stop, then saves the state, which a kill at 5 s lost.
	StopTimeout time.Duration
}

// Defaults for Config's zero fields.
const (
	DefaultReadyTimeout = 10 * time.Second
	DefaultHealthy      = 500 * time.Millisecond
	DefaultMaxRestarts  = 5
	DefaultWindow       = 30 * time.Second
	DefaultStopTimeout  = 8 * time.Second
)

// Spec describes a duck to start.
type Spec struct {
	// ID names the duck across all its processes; it is a folder name
	// under Config.Dir, so letters, digits, '.', '_' and '-' only.
	ID string
	// Version labels the duck's code: DUCK_VERSION, the version file and
	// the tag on its lines.
	Version string
	// Binary is a built duck; it is hard-linked (or, where it cannot be,
	// copied) to Dir/<id>/duck, so the caller's file may be shared by
	// several ducks and replaced later by rename, never written in place.
	Binary string
	Addr   string   // DUCK_ADDR
	Env    []string // extra environment, e.g. DUCK_INTERVAL=200ms
}

// Line is one line a duck printed.
type Line struct {
	Duck    string
	Version string
	// Gen numbers the duck's processes as far as the supervisor knows: 1
	// for the first, one more per swap and per restart. Lines a new
	// generation prints before it is Ready carry the old one's number.
	Gen    int
	Stream string // "stdout" or "stderr"
	Text   string
	Time   time.Time
}

// Status is a duck as the supervisor sees it.
type Status struct {
	ID, Version, Addr string
	PID               int
	Gen               int
	// State is one of "starting", "running", "swapping", "restarting",
	// "failed", "stopped".
	State    string
	Restarts int       // crash restarts so far
	Started  time.Time // when the current generation became Ready
	// LastError is the last failure (a crash, a failed swap); it stays
	// after the duck recovers.
	LastError string
}

// ErrUnknownDuck is returned (wrapped) for an ID the supervisor does not run.
var ErrUnknownDuck = errors.New("no such duck")

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("supervisor closed")

// Supervisor runs ducks. Its methods are safe for concurrent use.
type Supervisor struct {
	cfg   Config
	log   *slog.Logger
	lines *hub

	mu     sync.Mutex
	ducks  map[string]*duck
	closed bool

	conns connCounts
}

// Connections adds up what the old generations of this supervisor's ducks did with their
// connections as they handed over, since it started: how many moved to the next generation,
// and how many could not, by reason (hotswap.FallbackReasons). Generations on an SDK that
// does not report it are not counted.
func (s *Supervisor) Connections() hotswap.Connections { return s.conns.get() }

// New returns a Supervisor keeping its ducks under cfg.Dir. It makes the
// calling process a child subreaper (see the package doc), which lasts for
// the life of the process.
func New(cfg Config) (*Supervisor, error) {
	if cfg.Dir == "" {
		return nil, errors.New("supervise: Config.Dir is empty; give the node's ducks folder")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("supervise: %w", err)
	}
	if err := nodeDir(dir, cfg.User); err != nil {
		return nil, fmt.Errorf("supervise: creating the ducks folder: %w", err)
	}
	// The folder as the kernel names it: /proc/PID/exe shows a duck's binary by its resolved
	// path, and telling a generation by its binary compares the two (a home reached through a
	// symbolic link, as /home -> /var/home, made every generation look like a stranger).
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	cfg.Dir = dir
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	if cfg.Healthy <= 0 {
		cfg.Healthy = DefaultHealthy
	}
	if cfg.MaxRestarts <= 0 {
		cfg.MaxRestarts = DefaultMaxRestarts
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("supervise: becoming a child subreaper (prctl PR_SET_CHILD_SUBREAPER): %w; Linux 3.4 or later is needed to keep swapped ducks", err)
	}
	return &Supervisor{
		cfg:   cfg,
		log:   cfg.Log,
		lines: newHub(cfg.OnLine),
		ducks: make(map[string]*duck),
	}, nil
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// Start copies spec.Binary to the duck's stable path, starts its first
// generation and waits for it to become Ready. If it exits first, or is
// not Ready within ReadyTimeout (it is then killed), Start returns an error
// with the exit status and the duck's last stderr lines, and forgets the
// duck: it is not restarted.
func (s *Supervisor) Start(ctx context.Context, spec Spec) error {
	if !safeID.MatchString(spec.ID) || spec.ID == "." || spec.ID == ".." {
		return fmt.Errorf("supervise: duck ID %q is not a safe folder name; use letters, digits, '.', '_' and '-' (at most 128)", spec.ID)
	}
	if spec.Version == "" {
		return fmt.Errorf("supervise: duck %q has no version label; set Spec.Version", spec.ID)
	}
	if spec.Binary == "" {
		return fmt.Errorf("supervise: duck %q has no binary; set Spec.Binary to a built duck", spec.ID)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("supervise: starting duck %q: %w", spec.ID, ErrClosed)
	}
	if _, ok := s.ducks[spec.ID]; ok {
		s.mu.Unlock()
		return fmt.Errorf("supervise: duck %q is already running; stop it first or pick another ID", spec.ID)
	}
	d := newDuck(s, spec)
	s.ducks[spec.ID] = d
	s.mu.Unlock()

	if u := s.cfg.User; u != nil {
		// Else exec fails with a bare "permission denied".
		if err := u.CheckReach(d.dir); err != nil { // its own folder is made 0710 below
			s.forget(d)
			close(d.finished)
			return fmt.Errorf("supervise: starting duck %q: %w", spec.ID, err)
		}
	}

	if err := d.start(ctx, spec.Binary); err != nil {
		s.forget(d)
		close(d.finished)
		return err
	}
	go d.keep()
	return nil
}

// Swap replaces the running duck id with binary, labelled version: the
// binary is linked or copied next to the stable path, the version file written, the
// copy renamed over the stable path and the current generation sent
// SIGHUP. Swap returns nil once the new generation is Ready, the old one has
// exited and the new one stayed up for Config.Healthy. On failure the error
// says why (exit status, the old generation's report, last stderr lines),
// the old binary and version file are put back, and the old version keeps
// running (restarted from its binary if it had already handed over).
//
// If ctx ends first Swap returns, but a swap under way runs to its end;
// Get shows the outcome.
//
// healthy overrides Config.Healthy for this swap when it is not 0: a rollout's policy says how
// long a new version must stay up.
func (s *Supervisor) Swap(ctx context.Context, id, version, binary string, healthy time.Duration) error {
	if version == "" || binary == "" {
		return fmt.Errorf("supervise: swapping duck %q needs a version label and a binary", id)
	}
	d, err := s.duck(id)
	if err != nil {
		return err
	}
	op := swapOp{version: version, binary: binary, healthy: cmp.Or(healthy, s.cfg.Healthy), reply: make(chan error, 1)}
	select {
	case d.ops <- op:
	case <-d.finished:
		return fmt.Errorf("supervise: swapping duck %q: it is being stopped", id)
	case <-ctx.Done():
		return fmt.Errorf("supervise: swapping duck %q: gave up waiting for its previous operation (a restart or swap): %w", id, ctx.Err())
	}
	select {
	case err := <-op.reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("supervise: swapping duck %q to %s: stopped waiting (%w); the swap carries on, see its status", id, version, ctx.Err())
	}
}

// Stop stops the duck id gracefully (SIGTERM, so it writes its state file;
// SIGKILL past Config.StopTimeout) and forgets it. Its folder stays, so a
// later Start of the same ID continues from its state.
func (s *Supervisor) Stop(ctx context.Context, id string) error {
	d, err := s.duck(id)
	if err != nil {
		return err
	}
	d.cancel()
	select {
	case <-d.finished:
	case <-ctx.Done():
		return fmt.Errorf("supervise: stopping duck %q: %w; it is still being stopped", id, ctx.Err())
	}
	s.forget(d)
	return nil
}

// List returns the status of every duck, sorted by ID.
func (s *Supervisor) List() []Status {
	s.mu.Lock()
	ducks := make([]*duck, 0, len(s.ducks))
	for _, d := range s.ducks {
		ducks = append(ducks, d)
	}
	s.mu.Unlock()
	out := make([]Status, 0, len(ducks))
	for _, d := range ducks {
		out = append(out, d.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Get returns the status of duck id.
func (s *Supervisor) Get(id string) (Status, bool) {
	s.mu.Lock()
	d, ok := s.ducks[id]
	s.mu.Unlock()
	if !ok {
		return Status{}, false
	}
	return d.status(), true
}

// Recent returns the last n lines (at most RingSize) of duck id, oldest
// first, or the last n of each duck when id is "", in the order printed.
// Lines of a stopped duck stay until its ID prints again.
func (s *Supervisor) Recent(id string, n int) []Line {
	return s.lines.recent(id, n)
}

// Subscribe returns the live lines of every duck and a function that ends
// the subscription and closes the channel. A subscriber that falls more
// than SubscriberBuffer lines behind loses lines rather than block a duck.
func (s *Supervisor) Subscribe() (<-chan Line, func()) {
	return s.lines.subscribe()
}

// Close stops every duck gracefully, so each writes its state file, and
// ends every subscription. Start fails afterwards.
func (s *Supervisor) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ids := make([]string, 0, len(s.ducks))
	for id := range s.ducks {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Stop(ctx, id); err != nil && !errors.Is(err, ErrUnknownDuck) {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	s.lines.close()
	return errors.Join(errs...)
}

func (s *Supervisor) duck(id string) (*duck, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.ducks[id]
	if !ok {
		return nil, fmt.Errorf("supervise: duck %q: %w on this node; `ducks` lists the ducks it runs", id, ErrUnknownDuck)
	}
	return d, nil
}

func (s *Supervisor) forget(d *duck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ducks[d.id] == d {
		delete(s.ducks, d.id)
	}
}
