package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/atomicfile"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/duckraft/duckraft/owned"
	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/bundle"
	"github.com/duckraft/duckraft/runtime/supervise"
)

// This file is the seed's c/1 and QuackingDuck.start on one node: load a version (build it, swap
// every duck here to it), spawn a duck, stop it, list ducks, read their output. What a node runs
// is remembered in its data folder (local.json, bundles/), so a restarted agent starts its ducks
// again at the version it had.

// localState is what this node runs, saved in local.json.
type localState struct {
	Version string `json:"version,omitempty"` // bundle ID loaded here
	// Label is how Version was shown when it was loaded ("v3"), so that ducks restarted before
	// the node has replayed its log still say v3, not a bare bundle ID.
	Label  string       `json:"label,omitempty"`
	Ducks  []duckRecord `json:"ducks"`
	NextID int          `json:"next_id"`
	// Synced is the rollout step (version/state) this node last caught up with; Acted the last
	// grant it took its turn for. Both survive a restart so no step is taken twice.
	Synced string `json:"synced,omitempty"`
	Acted  string `json:"acted,omitempty"`
}

type duckRecord struct {
	ID   string   `json:"id"`
	Addr string   `json:"addr"`
	Env  []string `json:"env,omitempty"`
	// Version is set for a duck spawned at another version than the node's; the next switch of
	// the node's version takes it along too.
	Version string `json:"version,omitempty"`
}

func (a *Agent) localPath() string { return filepath.Join(a.cfg.DataDir, "local.json") }

func (a *Agent) bundlePath(id string) string {
	return filepath.Join(a.cfg.DataDir, "bundles", id+".tgz")
}

func loadLocal(path string) (localState, error) {
	var s localState
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

// snapshotLocal returns a copy of what this node runs; it never waits on an operation.
func (a *Agent) snapshotLocal() localState {
	a.localMu.Lock()
	defer a.localMu.Unlock()
	l := a.local
	l.Ducks = slices.Clone(a.local.Ducks)
	return l
}

// changeLocal changes what this node runs and writes local.json atomically: a crash mid-write
// must not lose the node's ducks.
func (a *Agent) changeLocal(change func(*localState)) error {
	a.localMu.Lock()
	defer a.localMu.Unlock()
	change(&a.local)
	b, _ := json.MarshalIndent(a.local, "", "  ")
	return atomicfile.Write(a.localPath(), append(b, '\n'), 0o600)
}

// startRuntime opens the builder and the supervisor. The supervisor makes this process a child
// subreaper, so it must exist before any duck does.
func (a *Agent) startRuntime() error {
	a.builder = &build.Builder{Dir: filepath.Join(a.cfg.DataDir, "builds"), GoBin: a.cfg.GoBin}
	if cache, err := os.UserCacheDir(); err == nil {
		// Other nodes of this user take binaries from the shared folder and run them: one that
		// someone else made or can write is refused, not used.
		shared := filepath.Join(cache, "duckraft", "builds")
		for _, dir := range []string{filepath.Dir(shared), shared} {
			if err := owned.Dir(dir); err != nil {
				return fmt.Errorf("shared build folder: %w", err)
			}
		}
		a.builder.Shared = shared
	}
	sup, err := supervise.New(supervise.Config{
		Dir:          filepath.Join(a.cfg.DataDir, "ducks"),
		Log:          a.log,
		ReadyTimeout: a.cfg.ReadyTimeout,
		Healthy:      a.cfg.Healthy,
		User:         a.cfg.DuckUser,
	})
	if err != nil {
		return err
	}
	a.sup = sup
	a.local, err = loadLocal(a.localPath())
	return err
}

// restartDucks starts again the ducks this node ran before it stopped, at the version it had;
// each continues from the state its last generation saved.
func (a *Agent) restartDucks(ctx context.Context) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	l := a.snapshotLocal()
	for _, d := range l.Ducks {
		version := cmp.Or(d.Version, l.Version)
		bin, err := a.binary(ctx, version)
		if err != nil {
			a.log.Error("cannot restart duck", "duck", d.ID, "version", api.Label(version), "err", err)
			continue
		}
		err = a.sup.Start(ctx, supervise.Spec{ID: d.ID, Version: a.duckVersion(version), Binary: bin, Addr: d.Addr, Env: d.Env})
		if err != nil {
			a.log.Error("restart duck", "duck", d.ID, "err", err)
			continue
		}
		a.log.Info("restarted duck", "duck", d.ID, "addr", d.Addr, "version", api.Label(version))
	}
}

// binary returns the built binary of version id, building it from the stored bundle if the
// cache lost it.
func (a *Agent) binary(ctx context.Context, id string) (string, error) {
	if bin, ok := a.builder.Binary(id); ok {
		return bin, nil
	}
	data, err := os.ReadFile(a.bundlePath(id))
	if err != nil {
		return "", fmt.Errorf("node %s does not have version %s: load it here first (%w)", a.self.Name, api.Label(id), err)
	}
	t0 := time.Now()
	bin, err := a.builder.Build(ctx, id, data)
	a.metrics.built(time.Since(t0), err)
	return bin, err
}

// handleLoad builds the bundle in the body and swaps every duck on this node to it, streaming
// its progress. A version that does not build, or a duck that does not come up on it, leaves
// every duck on the version it ran.
func (a *Agent) handleLoad(w http.ResponseWriter, r *http.Request) {
	data, ok := readBundle(w, r)
	if !ok {
		return
	}
	// The work goes on if the caller hangs up: stopping half-way would leave ducks on two versions.
	ctx := context.WithoutCancel(r.Context())
	s := httpjson.NewStreamer(w)
	if err := a.load(ctx, data, s); err != nil {
		e := api.Event{Phase: "failed", Error: err.Error()}
		var ce *build.CompileError
		if errors.As(err, &ce) {
			e.Output = ce.Output
			e.Error = fmt.Sprintf("version %s does not compile; every duck here keeps running the version it had", api.Label(ce.ID))
		}
		s.Event(e)
	}
}

func (a *Agent) load(ctx context.Context, data []byte, s *httpjson.Streamer) error {
	id := bundle.Sum(data)
	if err := a.keepBundle(id, data); err != nil {
		return err
	}
	return a.switchTo(ctx, id, 0, s.Event)
}

// keepBundle stores a version's bundle in the data folder, so the node can rebuild it after its
// build cache is gone and go back to it without asking anyone.
func (a *Agent) keepBundle(id string, data []byte) error {
	if _, err := os.Stat(a.bundlePath(id)); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(a.bundlePath(id)), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(a.bundlePath(id), data, 0o600)
}

// switchTo builds version id (its bundle already kept) and swaps every duck on this node to it,
// one at a time. If a duck does not come up on it, the ducks already swapped go back and the
// node stays on the version it ran.
//
// healthy is how long each new duck must stay up after Ready (0: the node's --healthy).
func (a *Agent) switchTo(ctx context.Context, id string, healthy time.Duration, event func(api.Event)) error {
	v := a.duckVersion(id)
	event(api.Event{Phase: "building", Version: v})
	bin, err := a.binary(ctx, id)
	if err != nil {
		return err
	}
	event(api.Event{Phase: "built", Version: v})

	a.opMu.Lock()
	defer a.opMu.Unlock()
	l := a.snapshotLocal()
	old := l.Version
	// Already there (a node that loaded the version it now spreads, a turn taken again after a
	// restart): nothing to swap, unless a duck still shows the version under its old name.
	if old == id && !slices.ContainsFunc(l.Ducks, func(d duckRecord) bool {
		st, _ := a.sup.Get(d.ID)
		return d.Version != "" || st.Version != v
	}) {
		event(api.Event{Phase: "done", Version: v, Message: fmt.Sprintf("%d duck(s) already on %s", len(l.Ducks), v)})
		return nil
	}
	var swapped []string
	for _, d := range l.Ducks {
		event(api.Event{Phase: "swapping", Duck: d.ID, Version: v})
		t0 := time.Now()
		err := a.swapOrStart(ctx, d, v, bin, healthy)
		a.metrics.swapped(time.Since(t0), err)
		if err != nil {
			a.revert(ctx, old, swapped, event)
			return fmt.Errorf("duck %s did not come up on %s, so the ducks stay on %s: %w", d.ID, v, api.Label(old), err)
		}
		swapped = append(swapped, d.ID)
		event(api.Event{Phase: "swapped", Duck: d.ID, Version: v})
	}
	err = a.changeLocal(func(l *localState) {
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
func (a *Agent) swapOrStart(ctx context.Context, d duckRecord, v, bin string, healthy time.Duration) error {
	if st, ok := a.sup.Get(d.ID); ok && st.State != "failed" {
		return a.sup.Swap(ctx, d.ID, v, bin, healthy)
	}
	a.sup.Stop(ctx, d.ID) // forget a given-up duck; nothing to do for an unknown one
	return a.sup.Start(ctx, supervise.Spec{ID: d.ID, Version: v, Binary: bin, Addr: d.Addr, Env: d.Env})
}

// revert swaps the ducks that already took a failed version back to the one they had.
func (a *Agent) revert(ctx context.Context, old string, ids []string, event func(api.Event)) {
	if old == "" || len(ids) == 0 {
		return
	}
	bin, err := a.binary(ctx, old)
	if err != nil {
		a.log.Error("cannot revert", "version", api.Label(old), "err", err)
		return
	}
	v := a.duckVersion(old)
	for _, id := range slices.Backward(ids) {
		event(api.Event{Phase: "reverting", Duck: id, Version: v})
		if err := a.sup.Swap(ctx, id, v, bin, 0); err != nil {
			a.log.Error("revert duck", "duck", id, "err", err)
		}
	}
}

var envVar = regexp.MustCompile(`^DUCK_[A-Z0-9_]+=`)

// reservedEnv are set by the supervisor; a caller overriding them would break the swap.
var reservedEnv = regexp.MustCompile(`^DUCK_(ADDR|VERSION|VERSION_FILE|PIDFILE|LIFELINE_FD|STATE_FILE|READY_TIMEOUT)=`)

func (a *Agent) handleSpawn(w http.ResponseWriter, r *http.Request) {
	var req api.SpawnRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	for _, e := range req.Env {
		if !envVar.MatchString(e) || reservedEnv.MatchString(e) {
			httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("environment %q refused: a duck takes DUCK_* variables other than the ones the supervisor sets (e.g. DUCK_INTERVAL=200ms)", e))
			return
		}
	}
	if req.On != "" && req.On != a.self.Name {
		a.spawnElsewhere(w, r, req)
		return
	}
	d, err := a.spawn(context.WithoutCancel(r.Context()), req)
	if err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	a.mirrorDucks() // so that every node lists it from now on
	httpjson.Write(w, d)
}

// spawnElsewhere is Node.spawn: the duck starts on another node, at the version this node runs.
func (a *Agent) spawnElsewhere(w http.ResponseWriter, r *http.Request, req api.SpawnRequest) {
	m, ok := a.Node().State().Members[req.On]
	if !ok {
		httpjson.Error(w, http.StatusNotFound, fmt.Errorf("no member named %q: `members` lists them", req.On))
		return
	}
	version := a.snapshotLocal().Version
	if version == "" {
		httpjson.Error(w, http.StatusConflict, a.noCode())
		return
	}
	fwd := api.SpawnRequest{Addr: req.Addr, Env: req.Env, Version: version, From: a.self.Name}
	var d api.DuckInfo
	if err := a.client.Do(r.Context(), m.APIAddr, http.MethodPost, "/v1/spawn", fwd, &d); err != nil {
		var ae *api.APIError
		if !errors.As(err, &ae) {
			err = fmt.Errorf("node %s is unreachable: %w", req.On, err)
		}
		httpjson.Error(w, statusOf(err), err)
		return
	}
	httpjson.Write(w, d)
}

// noCode is this node's UndefinedFunctionError.
func (a *Agent) noCode() error {
	return &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("node %s has no duck code loaded (the analogue of UndefinedFunctionError): run `load DIR` against it, or `spread` from a node that has it", a.self.Name)}
}

// has reports whether this node can run version id without asking anyone.
func (a *Agent) has(id string) bool {
	if _, ok := a.builder.Binary(id); ok {
		return true
	}
	_, err := os.Stat(a.bundlePath(id))
	return err == nil
}

func (a *Agent) spawn(ctx context.Context, req api.SpawnRequest) (api.DuckInfo, error) {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	nodeVersion := a.snapshotLocal().Version
	version := cmp.Or(req.Version, nodeVersion)
	if version == "" {
		return api.DuckInfo{}, a.noCode()
	}
	if !bundle.ValidID(version) {
		return api.DuckInfo{}, &api.APIError{Status: http.StatusBadRequest, Message: fmt.Sprintf("%q is not a version ID (64 hex digits)", version)}
	}
	if !a.has(version) {
		// The seed's UndefinedFunctionError: the code was compiled on another node only.
		from := cmp.Or(req.From, "another node")
		return api.DuckInfo{}, &api.APIError{Status: http.StatusConflict, Message: fmt.Sprintf("node %s does not have version %s, which %s runs (the analogue of UndefinedFunctionError): run `spread` against %s to give it to every node (Erlang's nl), or `load DIR` against %s", a.self.Name, a.duckVersion(version), from, from, a.self.Name)}
	}
	addr := req.Addr
	if addr == "" {
		var err error
		if addr, err = freeLoopbackAddr(); err != nil {
			return api.DuckInfo{}, err
		}
	}
	bin, err := a.binary(ctx, version)
	if err != nil {
		return api.DuckInfo{}, err
	}
	var id string
	// The ID is taken, and saved, before the duck starts, so a failed one is never reused.
	if err := a.changeLocal(func(l *localState) { l.NextID++; id = "duck-" + strconv.Itoa(l.NextID) }); err != nil {
		return api.DuckInfo{}, err
	}
	spec := supervise.Spec{ID: id, Version: a.duckVersion(version), Binary: bin, Addr: addr, Env: req.Env}
	err = a.sup.Start(ctx, spec)
	// A port picked here may be taken by another process before the duck binds it (at a hundred
	// nodes on one host, by their own connections): pick another, a few times.
	for attempt := 0; err != nil && req.Addr == "" && strings.Contains(err.Error(), "address already in use") && attempt < 5; attempt++ {
		if spec.Addr, err = freeLoopbackAddr(); err != nil {
			break
		}
		a.log.Info("the duck's port was taken before it bound it; trying another", "duck", id, "addr", spec.Addr)
		err = a.sup.Start(ctx, spec)
	}
	if err != nil {
		return api.DuckInfo{}, &api.APIError{Status: http.StatusUnprocessableEntity, Message: fmt.Sprintf("duck %s did not start on %s: %v", id, a.self.Name, err)}
	}
	addr = spec.Addr
	rec := duckRecord{ID: id, Addr: addr, Env: req.Env}
	if version != nodeVersion {
		rec.Version = version
	}
	if err := a.changeLocal(func(l *localState) { l.Ducks = append(l.Ducks, rec) }); err != nil {
		// Not remembered, so not left running: a restarted node would not know it.
		a.sup.Stop(ctx, id)
		return api.DuckInfo{}, err
	}
	st, _ := a.sup.Get(id)
	return duckInfo(a.self.Name, st), nil
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

func (a *Agent) handleStop(w http.ResponseWriter, r *http.Request) {
	var req api.StopRequest
	if !httpjson.Decode(w, r, &req) {
		return
	}
	if req.On != "" && req.On != a.self.Name {
		m, err := a.member(req.On)
		if err == nil {
			err = a.client.Do(r.Context(), m.APIAddr, http.MethodPost, "/v1/stop", api.StopRequest{Name: req.Name, Restart: req.Restart}, nil)
		}
		if err != nil {
			httpjson.Error(w, statusOf(err), err)
			return
		}
		httpjson.Write(w, map[string]bool{"stopped": true})
		return
	}
	if req.Restart {
		if err := a.restartDuck(context.WithoutCancel(r.Context()), req.Name); err != nil {
			httpjson.Error(w, statusOf(err), err)
			return
		}
		httpjson.Write(w, map[string]bool{"restarted": true})
		return
	}
	// The stop goes on if the caller hangs up: half-stopped, the duck would stay in local.json.
	if err := a.stopDuck(context.WithoutCancel(r.Context()), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	a.mirrorDucks() // so that no node lists it any more
	httpjson.Write(w, map[string]bool{"stopped": true})
}

func (a *Agent) stopDuck(ctx context.Context, id string) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	if !slices.ContainsFunc(a.snapshotLocal().Ducks, func(d duckRecord) bool { return d.ID == id }) {
		return &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("node %s runs no duck %q: `ducks` lists them", a.self.Name, id)}
	}
	// A duck the supervisor does not know (it could not be restarted) is stopped already.
	if err := a.sup.Stop(ctx, id); err != nil && !errors.Is(err, supervise.ErrUnknownDuck) {
		return err
	}
	return a.changeLocal(func(l *localState) {
		l.Ducks = slices.DeleteFunc(l.Ducks, func(d duckRecord) bool { return d.ID == id })
	})
}

// restartDuck stops a duck gracefully (it saves its state) and starts it again at once on the
// same binary, address and environment; it returns once the new process is Ready.
func (a *Agent) restartDuck(ctx context.Context, id string) error {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	l := a.snapshotLocal()
	i := slices.IndexFunc(l.Ducks, func(d duckRecord) bool { return d.ID == id })
	if i < 0 {
		return &api.APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("node %s runs no duck %q: `ducks` lists them", a.self.Name, id)}
	}
	d := l.Ducks[i]
	version := cmp.Or(d.Version, l.Version)
	bin, err := a.binary(ctx, version)
	if err != nil {
		return err
	}
	if err := a.sup.Stop(ctx, id); err != nil && !errors.Is(err, supervise.ErrUnknownDuck) {
		return err
	}
	return a.sup.Start(ctx, supervise.Spec{ID: d.ID, Version: a.duckVersion(version), Binary: bin, Addr: d.Addr, Env: d.Env})
}

func (a *Agent) handleDucks(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("scope") == "cluster" {
		httpjson.Write(w, a.views.Ducks(r.Context()))
		return
	}
	httpjson.Write(w, a.localDucks())
}

func (a *Agent) localDucks() []api.DuckInfo {
	out := []api.DuckInfo{}
	for _, st := range a.sup.List() {
		out = append(out, duckInfo(a.self.Name, st))
	}
	return out
}

// handleLogs streams a duck's (or every duck's) recent output, then, with follow=1, its live
// output until the caller hangs up or the duck is stopped.
func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch on := q.Get("on"); {
	case on == "*":
		a.views.Logs(w, r)
		return
	case on != "" && on != a.self.Name:
		a.views.ProxyLogs(w, r, on)
		return
	}
	duck := q.Get("duck")
	n, err := strconv.Atoi(cmp.Or(q.Get("n"), "100"))
	if err != nil || n < 0 {
		httpjson.Error(w, http.StatusBadRequest, fmt.Errorf("n=%q is not a line count", q.Get("n")))
		return
	}
	if duck != "" {
		if _, ok := a.sup.Get(duck); !ok {
			httpjson.Error(w, http.StatusNotFound, fmt.Errorf("node %s runs no duck %q: `ducks` lists them", a.self.Name, duck))
			return
		}
	}
	follow := q.Get("follow") == "1"
	var live <-chan supervise.Line
	if follow {
		ch, cancel := a.sup.Subscribe()
		defer cancel()
		live = ch
	}
	s := httpjson.NewStreamer(w)
	for _, l := range a.sup.Recent(duck, n) {
		s.Send(logLine(a.self.Name, l))
	}
	if !follow {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.stop:
			return
		case l := <-live:
			if duck == "" || l.Duck == duck {
				s.Send(logLine(a.self.Name, l))
			}
		case <-tick.C:
			if duck != "" {
				if _, ok := a.sup.Get(duck); !ok {
					return // stopped: the stream ends
				}
			}
		}
	}
}

// duckInfo is how the API shows a duck the supervisor runs on node.
func duckInfo(node string, st supervise.Status) api.DuckInfo {
	return api.DuckInfo{
		Node: node, ID: st.ID, Version: st.Version, Addr: st.Addr, PID: st.PID, Gen: st.Gen,
		State: st.State, Restarts: st.Restarts, Started: st.Started, LastError: st.LastError,
	}
}

// logLine is how the API shows a line a duck on node printed.
func logLine(node string, l supervise.Line) api.LogLine {
	return api.LogLine{Node: node, Duck: l.Duck, Version: l.Version, Gen: l.Gen, Stream: l.Stream, Text: l.Text, Time: l.Time}
}
