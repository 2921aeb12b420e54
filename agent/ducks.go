package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/duckraft/duckraft/agent/ducks"
	"github.com/duckraft/duckraft/owned"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/build"
	"github.com/duckraft/duckraft/runtime/bundle"
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

// versionLog is what the log says of versions, as the node's ducks ask it.
type versionLog struct{ a *Agent }

func (l versionLog) Number(id bundle.ID) (rollout.Number, bool) {
	vs := l.a.Node().Versions()
	for _, v := range slices.Backward(vs) {
		if v.ID == id {
			return v.N, true
		}
	}
	return 0, false
}

func (l versionLog) Bundle(id bundle.ID) ([]byte, bool) {
	for _, v := range l.a.Node().Versions() {
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
