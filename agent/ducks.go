package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/agent/ducks"
	"github.com/duckraft/duckraft/agent/httpjson"
	"github.com/duckraft/duckraft/api"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/duckraft/duckraft/owned"
	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/supervise"
)

// This file serves the node's own ducks (package ducks does the work): load a version, spawn a
// duck here or on another node, stop or restart it, list ducks, read their output.

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
	a.host, err = ducks.Open(ducks.Config{Name: a.cfg.Name, Dir: a.cfg.DataDir, Builder: a.builder, Supervisor: sup, Log: versionLog{a}, Metrics: metricsOf{a}, Logger: a.log})
	return err
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
	if err := a.host.Load(ctx, data, s.Event); err != nil {
		e := api.Event{Phase: "failed", Error: err.Error()}
		var ce *build.CompileError
		if errors.As(err, &ce) {
			e.Output = ce.Output
			e.Error = fmt.Sprintf("version %s does not compile; every duck here keeps running the version it had", api.Label(ce.ID))
		}
		s.Event(e)
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
	d, err := a.host.Spawn(context.WithoutCancel(r.Context()), req)
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
	version := a.host.Local().Version
	if version == "" {
		httpjson.Error(w, http.StatusConflict, a.host.NoCode())
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
		if err := a.host.Restart(context.WithoutCancel(r.Context()), req.Name); err != nil {
			httpjson.Error(w, statusOf(err), err)
			return
		}
		httpjson.Write(w, map[string]bool{"restarted": true})
		return
	}
	// The stop goes on if the caller hangs up: half-stopped, the duck would stay in local.json.
	if err := a.host.Stop(context.WithoutCancel(r.Context()), req.Name); err != nil {
		httpjson.Error(w, statusOf(err), err)
		return
	}
	a.mirrorDucks() // so that no node lists it any more
	httpjson.Write(w, map[string]bool{"stopped": true})
}

func (a *Agent) handleDucks(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("scope") == "cluster" {
		httpjson.Write(w, a.views.Ducks(r.Context()))
		return
	}
	httpjson.Write(w, a.host.List())
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

// logLine is how the API shows a line a duck on node printed.
func logLine(node string, l supervise.Line) api.LogLine {
	return api.LogLine{Node: node, Duck: l.Duck, Version: l.Version, Gen: l.Gen, Stream: l.Stream, Text: l.Text, Time: l.Time}
}

// versionLog is what the log says of versions, as the node's ducks ask it.
type versionLog struct{ a *Agent }

func (l versionLog) Number(id string) (int, bool) {
	vs := l.a.Node().State().Versions
	for _, v := range slices.Backward(vs) {
		if v.ID == id {
			return v.N, true
		}
	}
	return 0, false
}

func (l versionLog) Bundle(id string) ([]byte, bool) {
	for _, v := range l.a.Node().State().Versions {
		if v.ID == id && len(v.Bundle) > 0 {
			return v.Bundle, true
		}
	}
	return nil, false
}

// metricsOf counts the node's builds and swaps once its metrics exist.
type metricsOf struct{ a *Agent }

func (m metricsOf) Built(took time.Duration, err error) {
	if m.a.metrics != nil {
		m.a.metrics.built(took, err)
	}
}

func (m metricsOf) Swapped(took time.Duration, err error) {
	if m.a.metrics != nil {
		m.a.metrics.swapped(took, err)
	}
}
