// Package ducks is what one node runs: the version its ducks are on and the ducks themselves,
// remembered in its data folder (local.json, bundles/) so that a restarted agent starts its
// ducks again at the version it had; loading a version (build it, swap every duck to it, back
// again if one does not come up); spawning, stopping and restarting a duck. It is Erlang's
// c/1 (compile and load a module) and spawn on one node.
//
// One operation that changes the ducks runs at a time, and may take minutes; reading what the
// node runs never waits on one.
package ducks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/atomicfile"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
	"github.com/duckraft/duckraft/runtime/supervise"
)

// Builder turns a version's bundle into a binary; *build.Builder is one.
type Builder interface {
	// Binary is the binary already built for id, if any.
	Binary(id bundle.ID) (string, bool)
	Build(ctx context.Context, id bundle.ID, data []byte) (string, error)
}

// Supervisor runs duck processes; *supervise.Supervisor is one.
type Supervisor interface {
	Start(ctx context.Context, spec supervise.Spec) error
	Swap(ctx context.Context, id, version, binary string, healthy time.Duration) error
	Stop(ctx context.Context, id string) error
	Get(id string) (supervise.Status, bool)
	List() []supervise.Status
}

// Log is what the replicated log says of versions.
type Log interface {
	// Number is the newest version number committed with bundle id; false if none was.
	Number(id bundle.ID) (rollout.Number, bool)
	// Bundle is the bundle of a committed version id while the log keeps it.
	Bundle(id bundle.ID) ([]byte, bool)
}

// Metrics counts builds and swaps; nil counts nothing.
type Metrics interface {
	Built(took time.Duration, err error)
	Swapped(took time.Duration, err error)
}

// Config is where a node keeps its ducks and what it runs them with.
type Config struct {
	Name       string // the node's, for messages
	Dir        string // the node's data folder: local.json and bundles/ live there
	Builder    Builder
	Supervisor Supervisor
	Log        Log
	Metrics    Metrics
	Logger     *slog.Logger
}

// Host is what one node runs.
type Host struct {
	name    string
	dir     string
	builder Builder
	sup     Supervisor
	vlog    Log
	metrics Metrics
	log     *slog.Logger

	// opMu serializes what changes the ducks (load and rollout turns, spawn, stop, restart),
	// which may take minutes; localMu guards local for moments, so that status, metrics and the
	// rollout loops never wait on an operation.
	opMu    sync.Mutex
	localMu sync.Mutex
	local   State
	// notStarted is the ducks RestartAll could not start again, with why (localMu): shown as
	// failed and tried again, where they vanished from `ducks --local` and `status` with the
	// reason in the node's log alone, for good (found by an outside probe: a port taken
	// meanwhile).
	notStarted map[string]string
}

// Open reads what the node ran from its data folder.
func Open(cfg Config) (*Host, error) {
	h := &Host{name: cfg.Name, dir: cfg.Dir, builder: cfg.Builder, sup: cfg.Supervisor, vlog: cfg.Log, metrics: cfg.Metrics, log: cmp.Or(cfg.Logger, slog.Default())}
	var err error
	h.local, err = loadLocal(h.localPath())
	return h, err
}

// State is what this node runs, saved in local.json.
type State struct {
	Version bundle.ID `json:"version,omitempty"` // bundle ID loaded here
	// Label is how Version was shown when it was loaded ("v3"), so that ducks restarted before
	// the node has replayed its log still say v3, not a bare bundle ID.
	Label  api.Label `json:"label,omitempty"`
	Ducks  []Record  `json:"ducks"`
	NextID int       `json:"next_id"`
	// Synced is the rollout step (version/state) this node last caught up with; Acted the last
	// grant it took its turn for. Both survive a restart so no step is taken twice.
	Synced string `json:"synced,omitempty"`
	Acted  string `json:"acted,omitempty"`
}

// Record is one duck the node runs: enough to start it again after a restart.
type Record struct {
	ID   string   `json:"id"`
	Addr string   `json:"addr"`
	Env  []string `json:"env,omitempty"`
	// Version is set for a duck spawned at another version than the node's; the next switch of
	// the node's version takes it along too.
	Version bundle.ID `json:"version,omitempty"`
}

func (h *Host) localPath() string { return filepath.Join(h.dir, "local.json") }

// BundlePath is where version id's bundle is kept.
func (h *Host) BundlePath(id bundle.ID) string {
	return filepath.Join(h.dir, "bundles", string(id)+".tgz")
}

func loadLocal(path string) (State, error) {
	var s State
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s is corrupt (%v): fix or delete it (the node then forgets its ducks)", path, err)
	}
	return s, nil
}

// Local returns a copy of what this node runs; it never waits on an operation.
func (h *Host) Local() State {
	h.localMu.Lock()
	defer h.localMu.Unlock()
	l := h.local
	l.Ducks = slices.Clone(h.local.Ducks)
	return l
}

// Change changes what this node runs and writes local.json atomically: a crash mid-write
// must not lose the node's ducks.
func (h *Host) Change(change func(*State)) error {
	h.localMu.Lock()
	defer h.localMu.Unlock()
	change(&h.local)
	b, _ := json.MarshalIndent(h.local, "", "  ")
	return atomicfile.Write(h.localPath(), append(b, '\n'), 0o600)
}

// RestartAll starts again the ducks this node ran before it stopped, at the version it had;
// each continues from the state its last generation saved.
func (h *Host) RestartAll(ctx context.Context) {
	h.opMu.Lock()
	defer h.opMu.Unlock()
	l := h.Local()
	failed := map[string]string{}
	for _, d := range l.Ducks {
		if err := h.startAgain(ctx, l, d); err != nil {
			h.log.Error("restart duck", "duck", d.ID, "err", err, "next", "tried again every "+retryFirst.String()+" to "+retryMost.String())
			failed[d.ID] = err.Error()
		}
	}
	if len(failed) == 0 {
		return
	}
	h.localMu.Lock()
	h.notStarted = failed
	h.localMu.Unlock()
	go h.retryNotStarted(ctx)
}

// startAgain starts duck d of l (the node's state) from its last saved state.
func (h *Host) startAgain(ctx context.Context, l State, d Record) error {
	version := cmp.Or(d.Version, l.Version)
	bin, err := h.Binary(ctx, version)
	if err != nil {
		return fmt.Errorf("no binary of %s: %w", api.LabelOf(version), err)
	}
	if err := h.sup.Start(ctx, supervise.Spec{ID: d.ID, Version: string(h.Label(version)), Binary: bin, Addr: d.Addr, Env: d.Env}); err != nil {
		return err
	}
	h.log.Info("restarted duck", "duck", d.ID, "addr", d.Addr, "version", api.LabelOf(version))
	return nil
}

// How often a duck that could not start again is tried again: from retryFirst, doubling.
const (
	retryFirst = 5 * time.Second
	retryMost  = time.Minute
)

// retryNotStarted tries the ducks RestartAll could not start again until each runs, is stopped,
// or ctx ends. One a rollout started meanwhile (swapOrStart) counts as started.
func (h *Host) retryNotStarted(ctx context.Context) {
	for wait := retryFirst; ; wait = min(2*wait, retryMost) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		h.opMu.Lock()
		l := h.Local()
		h.localMu.Lock()
		left := maps.Clone(h.notStarted)
		h.localMu.Unlock()
		for id := range left {
			i := slices.IndexFunc(l.Ducks, func(d Record) bool { return d.ID == id })
			if _, known := h.sup.Get(id); i < 0 || known {
				delete(left, id)
				continue
			}
			if err := h.startAgain(ctx, l, l.Ducks[i]); err != nil {
				left[id] = err.Error()
				continue
			}
			delete(left, id)
		}
		h.localMu.Lock()
		h.notStarted = left
		h.localMu.Unlock()
		h.opMu.Unlock()
		if len(left) == 0 {
			return
		}
	}
}

// Binary returns the built binary of version id, building it from the stored bundle if the
// cache lost it.
func (h *Host) Binary(ctx context.Context, id bundle.ID) (string, error) {
	if bin, ok := h.builder.Binary(id); ok {
		return bin, nil
	}
	data, err := os.ReadFile(h.BundlePath(id))
	if err != nil {
		return "", fmt.Errorf("node %s does not have version %s: load it here first (%w)", h.name, api.LabelOf(id), err)
	}
	t0 := time.Now()
	bin, err := h.builder.Build(ctx, id, data)
	if h.metrics != nil {
		h.metrics.Built(time.Since(t0), err)
	}
	return bin, err
}

// Load keeps the bundle data and switches every duck here to it (see SwitchTo).
func (h *Host) Load(ctx context.Context, data []byte, event func(api.Event)) error {
	id := bundle.Sum(data)
	if err := h.KeepBundle(id, data); err != nil {
		return err
	}
	return h.SwitchTo(ctx, id, 0, event)
}

// KeepBundle stores a version's bundle in the data folder, so the node can rebuild it after its
// build cache is gone and go back to it without asking anyone.
func (h *Host) KeepBundle(id bundle.ID, data []byte) error {
	if _, err := os.Stat(h.BundlePath(id)); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(h.BundlePath(id)), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(h.BundlePath(id), data, 0o600)
}

// SwitchTo builds version id (its bundle already kept) and swaps every duck on this node to it,
// one at a time. If a duck does not come up on it, the ducks already swapped go back and the
// node stays on the version it ran.
//
// healthy is how long each new duck must stay up after Ready (0: the node's --healthy).
func (h *Host) SwitchTo(ctx context.Context, id bundle.ID, healthy time.Duration, event func(api.Event)) error {
	v := h.Label(id)
	event(api.Event{Phase: "building", Version: v})
	bin, err := h.Binary(ctx, id)
	if err != nil {
		return err
	}
	event(api.Event{Phase: "built", Version: v})

	h.opMu.Lock()
	defer h.opMu.Unlock()
	l := h.Local()
	old, oldLabel := l.Version, l.Label
	if oldLabel == "" {
		oldLabel = api.LabelOf(old)
	}
	// Already there (a node that loaded the version it now spreads, a turn taken again after a
	// restart): nothing to swap, unless a duck still shows the version under its old name.
	if old == id && !slices.ContainsFunc(l.Ducks, func(d Record) bool {
		st, _ := h.sup.Get(d.ID)
		return d.Version != "" || st.Version != string(v)
	}) {
		event(api.Event{Phase: "done", Version: v, Message: fmt.Sprintf("%d duck(s) already on %s", len(l.Ducks), v)})
		return nil
	}
	var swapped []string
	for _, d := range l.Ducks {
		event(api.Event{Phase: "swapping", Duck: d.ID, Version: v})
		t0 := time.Now()
		err := h.swapOrStart(ctx, d, v, bin, healthy)
		if h.metrics != nil {
			h.metrics.Swapped(time.Since(t0), err)
		}
		if err != nil {
			// A turn's deadline ends the wait for a swap, not the swap: this duck may still
			// come up on v, after the error. It goes back too, after that swap, and the going
			// back has a context of its own, since the turn's has ended (found by an outside
			// probe: with --progress-deadline a node's ducks stayed on the version the node
			// went back from, for good).
			back := swapped
			if ctx.Err() != nil {
				back = append(back, d.ID)
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revertBound)
			h.revert(rctx, old, back, event)
			cancel()
			return fmt.Errorf("duck %s did not come up on %s, so the ducks stay on %s: %w", d.ID, v, oldLabel, err)
		}
		swapped = append(swapped, d.ID)
		event(api.Event{Phase: "swapped", Duck: d.ID, Version: v})
	}
	err = h.Change(func(l *State) {
		l.Version, l.Label = id, v
		for i := range l.Ducks {
			l.Ducks[i].Version = ""
		}
	})
	if err != nil {
		return err
	}
	event(api.Event{Phase: "done", Version: v, Message: fmt.Sprintf("%d duck(s) on %s", len(swapped), v)})
	return nil
}

// swapOrStart swaps a running duck to bin; one that is not running (it could not be restarted,
// or its supervisor gave up on it) is started afresh on bin instead, so that one broken duck
// does not fail every version its node is given.
func (h *Host) swapOrStart(ctx context.Context, d Record, v api.Label, bin string, healthy time.Duration) error {
	if st, ok := h.sup.Get(d.ID); ok && st.State != "failed" {
		return h.sup.Swap(ctx, d.ID, string(v), bin, healthy)
	}
	h.sup.Stop(ctx, d.ID) // forget a given-up duck; nothing to do for an unknown one
	return h.sup.Start(ctx, supervise.Spec{ID: d.ID, Version: string(v), Binary: bin, Addr: d.Addr, Env: d.Env})
}

// revertBound bounds a going back after a failed switch: a swap is bounded by the supervisor
// (three ready timeouts and a healthy wait), and a duck's swap still under way is waited for.
const revertBound = 5 * time.Minute

// revert swaps the ducks that already took a failed version back to the one they had. One
// whose swap is still under way goes back after it (the supervisor queues the operation): if
// that swap failed, the duck is swapped to the version it runs, at no cost to its clients.
func (h *Host) revert(ctx context.Context, old bundle.ID, ids []string, event func(api.Event)) {
	if old == "" || len(ids) == 0 {
		return
	}
	bin, err := h.Binary(ctx, old)
	if err != nil {
		h.log.Error("cannot revert", "version", api.LabelOf(old), "err", err)
		return
	}
	v := h.Label(old)
	for _, id := range slices.Backward(ids) {
		event(api.Event{Phase: "reverting", Duck: id, Version: v})
		if err := h.sup.Swap(ctx, id, string(v), bin, 0); err != nil {
			h.log.Error("revert duck", "duck", id, "err", err)
		}
	}
}

// NoCode is this node's UndefinedFunctionError.
func (h *Host) NoCode() error {
	return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("node %s has no duck code loaded (the analogue of UndefinedFunctionError): run `load DIR` against it, or `spread` from a node that has it", h.name)}
}

// Has reports whether this node can run version id without asking anyone.
func (h *Host) Has(id bundle.ID) bool {
	if _, ok := h.builder.Binary(id); ok {
		return true
	}
	_, err := os.Stat(h.BundlePath(id))
	return err == nil
}

// Spawn starts a duck here, at the version req names or the node's, on req's address or a
// free loopback port, and remembers it.
func (h *Host) Spawn(ctx context.Context, req api.SpawnRequest) (api.DuckInfo, error) {
	h.opMu.Lock()
	defer h.opMu.Unlock()
	nodeVersion := h.Local().Version
	version := cmp.Or(req.Version, nodeVersion)
	if version == "" {
		return api.DuckInfo{}, h.NoCode()
	}
	if !version.Valid() {
		return api.DuckInfo{}, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("%q is not a version ID (64 hex digits)", version)}
	}
	if !h.Has(version) {
		// Erlang's UndefinedFunctionError: the code was compiled on another node only.
		from := cmp.Or(req.From, "another node")
		return api.DuckInfo{}, &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("node %s does not have version %s, which %s runs (the analogue of UndefinedFunctionError): run `spread` against %s to give it to every node (Erlang's nl), or `load DIR` against %s", h.name, h.Label(version), from, from, h.name)}
	}
	addr := req.Addr
	if addr == "" {
		var err error
		if addr, err = freeLoopbackAddr(); err != nil {
			return api.DuckInfo{}, err
		}
	}
	bin, err := h.Binary(ctx, version)
	if err != nil {
		return api.DuckInfo{}, err
	}
	var id string
	// The ID is taken, and saved, before the duck starts, so a failed one is never reused.
	if err := h.Change(func(l *State) { l.NextID++; id = "duck-" + strconv.Itoa(l.NextID) }); err != nil {
		return api.DuckInfo{}, err
	}
	spec := supervise.Spec{ID: id, Version: string(h.Label(version)), Binary: bin, Addr: addr, Env: req.Env}
	err = h.sup.Start(ctx, spec)
	// A port picked here may be taken by another process before the duck binds it (at a hundred
	// nodes on one host, by their own connections): pick another, a few times.
	for attempt := 0; err != nil && req.Addr == "" && strings.Contains(err.Error(), "address already in use") && attempt < 5; attempt++ {
		if spec.Addr, err = freeLoopbackAddr(); err != nil {
			break
		}
		h.log.Info("the duck's port was taken before it bound it; trying another", "duck", id, "addr", spec.Addr)
		err = h.sup.Start(ctx, spec)
	}
	if err != nil {
		msg := fmt.Sprintf("duck %s did not start on %s: %v", id, h.name, err)
		if req.Addr != "" && strings.Contains(err.Error(), "address already in use") {
			// The duck's own words name DUCK_ADDR, which spawn sets from --port or --listen.
			msg += fmt.Sprintf("; something on %s already serves on %s: spawn it with another --port or --listen, or without either for a free port", h.name, req.Addr)
		}
		return api.DuckInfo{}, &api.APIError{Status: http.StatusUnprocessableEntity, Message: msg}
	}
	addr = spec.Addr
	rec := Record{ID: id, Addr: addr, Env: req.Env}
	if version != nodeVersion {
		rec.Version = version
	}
	if err := h.Change(func(l *State) { l.Ducks = append(l.Ducks, rec) }); err != nil {
		// Not remembered, so not left running: a restarted node would not know it.
		h.sup.Stop(ctx, id)
		return api.DuckInfo{}, err
	}
	st, _ := h.sup.Get(id)
	return Info(h.name, st), nil
}

// freeLoopbackAddr picks a free loopback port for a duck: at random below the kernel's range of
// ports for outgoing connections where it can, so that no connection of this host takes it
// before the duck binds it. Another duck's pick still could; spawn then tries another.
func freeLoopbackAddr() (string, error) {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	if low > 11000 {
		for range 20 {
			port := 10000 + rand.IntN(low-10000)
			if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
				l.Close()
				return l.Addr().String(), nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a port for the duck: %w; pass --port", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Stop stops duck id gracefully and forgets it.
func (h *Host) Stop(ctx context.Context, id string) error {
	h.opMu.Lock()
	defer h.opMu.Unlock()
	if !slices.ContainsFunc(h.Local().Ducks, func(d Record) bool { return d.ID == id }) {
		return &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("node %s runs no duck %q: `ducks` lists them", h.name, id)}
	}
	// A duck the supervisor does not know (it could not be restarted) is stopped already.
	if err := h.sup.Stop(ctx, id); err != nil && !errors.Is(err, supervise.ErrUnknownDuck) {
		return err
	}
	return h.Change(func(l *State) {
		l.Ducks = slices.DeleteFunc(l.Ducks, func(d Record) bool { return d.ID == id })
	})
}

// Restart stops a duck gracefully (it saves its state) and starts it again at once on the
// same binary, address and environment; it returns once the new process is Ready.
func (h *Host) Restart(ctx context.Context, id string) error {
	h.opMu.Lock()
	defer h.opMu.Unlock()
	l := h.Local()
	i := slices.IndexFunc(l.Ducks, func(d Record) bool { return d.ID == id })
	if i < 0 {
		return &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("node %s runs no duck %q: `ducks` lists them", h.name, id)}
	}
	d := l.Ducks[i]
	version := cmp.Or(d.Version, l.Version)
	bin, err := h.Binary(ctx, version)
	if err != nil {
		return err
	}
	if err := h.sup.Stop(ctx, id); err != nil && !errors.Is(err, supervise.ErrUnknownDuck) {
		return err
	}
	return h.sup.Start(ctx, supervise.Spec{ID: d.ID, Version: string(h.Label(version)), Binary: bin, Addr: d.Addr, Env: d.Env})
}

// List is every duck the supervisor runs here, as the API shows it.
func (h *Host) List() []api.DuckInfo {
	out := []api.DuckInfo{}
	known := map[string]bool{}
	for _, st := range h.sup.List() {
		out = append(out, Info(h.name, st))
		known[st.ID] = true
	}
	l := h.Local()
	h.localMu.Lock()
	notStarted := maps.Clone(h.notStarted)
	h.localMu.Unlock()
	for _, d := range l.Ducks {
		if why, ok := notStarted[d.ID]; ok && !known[d.ID] {
			out = append(out, api.DuckInfo{Node: h.name, ID: d.ID, Version: h.Label(cmp.Or(d.Version, l.Version)), Addr: d.Addr, State: "failed",
				LastError: "could not start again after the node restarted (tried again now and then; `stop` forgets it): " + why})
		}
	}
	return out
}

// Info is how the API shows a duck the supervisor runs on node.
func Info(node string, st supervise.Status) api.DuckInfo {
	d := api.DuckInfo{
		Node: node, ID: st.ID, Version: api.Label(st.Version), Addr: st.Addr, PID: st.PID, Gen: st.Gen,
		State: st.State, Restarts: st.Restarts, Started: st.Started, LastError: st.LastError,
	}
	if !st.Started.IsZero() {
		d.UpFor = time.Since(st.Started)
	}
	return d
}

// VersionLabel names a version as users see it: vN once committed; a loaded but uncommitted one
// by its short ID, marked local.
func (h *Host) VersionLabel(id bundle.ID) api.Label {
	if id == "" {
		return ""
	}
	l := h.Label(id)
	if l == api.LabelOf(id) {
		return l + " (local)"
	}
	return l
}

// Label is the version string a duck reports: vN once committed, else the short ID.
func (h *Host) Label(id bundle.ID) api.Label {
	// The newest version of this bundle: `rollout undo --to 1` commits v1's bundle again as v3,
	// and a duck that runs it runs v3.
	if n, ok := h.vlog.Number(id); ok {
		return api.Label(n.Label())
	}
	if l := h.Local(); l.Version == id && l.Label != "" {
		return l.Label // the log is not replayed yet
	}
	return api.LabelOf(id)
}

// KeepCommitted copies a committed version's bundle from the state into the data folder.
func (h *Host) KeepCommitted(id bundle.ID) error {
	if _, err := os.Stat(h.BundlePath(id)); err == nil {
		return nil
	}
	if b, ok := h.vlog.Bundle(id); ok && len(b) > 0 {
		return h.KeepBundle(id, b)
	}
	return fmt.Errorf("node %s does not have version %s and the log no longer keeps its bundle: deploy it again", h.name, api.LabelOf(id))
}
