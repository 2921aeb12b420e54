package ducks

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
	"github.com/duckraft/duckraft/runtime/supervise"
)

var (
	oldID = bundle.ID(strings.Repeat("a", 64))
	newID = bundle.ID(strings.Repeat("b", 64))
)

// fakeBuilder has a binary for every id in bins and builds any other from its bundle.
type fakeBuilder struct {
	mu     sync.Mutex
	bins   map[bundle.ID]bool
	builds []bundle.ID
}

func (b *fakeBuilder) Binary(id bundle.ID) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return "/bin/" + string(id), b.bins[id]
}

func (b *fakeBuilder) Build(_ context.Context, id bundle.ID, _ []byte) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.builds = append(b.builds, id)
	b.bins[id] = true
	return "/bin/" + string(id), nil
}

// fakeSupervisor runs ducks in a map; failSwap makes swaps to that version fail, failStart
// makes the next start fail.
type fakeSupervisor struct {
	mu        sync.Mutex
	ducks     map[string]supervise.Status
	bins      map[string]string
	failSwap  map[string]bool // duck IDs whose swap fails
	failStart error
	swaps     []string // "duck-1 v2" in order
}

func newSupervisor() *fakeSupervisor {
	return &fakeSupervisor{ducks: map[string]supervise.Status{}, bins: map[string]string{}, failSwap: map[string]bool{}}
}

func (s *fakeSupervisor) Start(_ context.Context, spec supervise.Spec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.failStart; err != nil {
		s.failStart = nil
		return err
	}
	s.ducks[spec.ID] = supervise.Status{ID: spec.ID, Version: spec.Version, Addr: spec.Addr, State: "running"}
	s.bins[spec.ID] = spec.Binary
	return nil
}

func (s *fakeSupervisor) Swap(_ context.Context, id, version, binary string, _ time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.swaps = append(s.swaps, id+" "+version)
	if s.failSwap[id] {
		return errors.New("new generation exited before Ready")
	}
	st := s.ducks[id]
	st.Version = version
	s.ducks[id] = st
	s.bins[id] = binary
	return nil
}

func (s *fakeSupervisor) Stop(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ducks[id]; !ok {
		return supervise.ErrUnknownDuck
	}
	delete(s.ducks, id)
	return nil
}

func (s *fakeSupervisor) Get(id string) (supervise.Status, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.ducks[id]
	return st, ok
}

func (s *fakeSupervisor) List() []supervise.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []supervise.Status
	for _, st := range s.ducks {
		out = append(out, st)
	}
	return out
}

// fakeLog has committed old as v1 and new as v2, and keeps their bundles.
type fakeLog map[bundle.ID]rollout.Number

func (l fakeLog) Number(id bundle.ID) (rollout.Number, bool) { n, ok := l[id]; return n, ok }
func (l fakeLog) Bundle(id bundle.ID) ([]byte, bool) {
	_, ok := l[id]
	return []byte("bundle " + id), ok
}

type rig struct {
	dir string
	b   *fakeBuilder
	sup *fakeSupervisor
	log fakeLog
}

func newRig(t testing.TB) *rig {
	return &rig{dir: t.TempDir(), b: &fakeBuilder{bins: map[bundle.ID]bool{oldID: true, newID: true}}, sup: newSupervisor(), log: fakeLog{oldID: 1, newID: 2}}
}

func (g *rig) open(t testing.TB) *Host {
	t.Helper()
	h, err := Open(Config{Name: "a", Dir: g.dir, Builder: g.b, Supervisor: g.sup, Log: g.log})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// running is a node on old with two ducks.
func running(t testing.TB) (*rig, *Host) {
	g := newRig(t)
	h := g.open(t)
	if err := h.SwitchTo(context.Background(), oldID, 0, func(api.Event) {}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := h.Spawn(context.Background(), api.SpawnRequest{Addr: "127.0.0.1:1"}); err != nil {
			t.Fatal(err)
		}
	}
	g.sup.swaps = nil
	return g, h
}

func TestSwitchToSwapsEveryDuckAndARestartRemembersIt(t *testing.T) {
	g, h := running(t)
	var phases []string
	if err := h.SwitchTo(context.Background(), newID, 0, func(e api.Event) { phases = append(phases, e.Phase) }); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(g.sup.swaps, ","); got != "duck-1 v2,duck-2 v2" {
		t.Fatalf("swaps %s, want each duck to v2 in turn", got)
	}
	if got := strings.Join(phases, ","); got != "building,built,swapping,swapped,swapping,swapped,done" {
		t.Fatalf("events %s", got)
	}
	again := g.open(t)
	if l := again.Local(); l.Version != newID || l.Label != "v2" || len(l.Ducks) != 2 {
		t.Fatalf("after a restart the node remembers %+v, want both ducks on v2", l)
	}
}

func TestDuckThatDoesNotComeUpTakesTheSwappedOnesBack(t *testing.T) {
	g, h := running(t)
	g.sup.failSwap["duck-2"] = true
	err := h.SwitchTo(context.Background(), newID, 0, func(api.Event) {})
	if err == nil || !strings.Contains(err.Error(), "duck duck-2 did not come up on v2, so the ducks stay on v1") {
		t.Fatalf("error %v, want it to name the duck and the version kept", err)
	}
	if got := strings.Join(g.sup.swaps, ","); got != "duck-1 v2,duck-2 v2,duck-1 v1" {
		t.Fatalf("swaps %s, want duck-1 back on v1 after duck-2 failed", got)
	}
	if v := g.open(t).Local().Version; v != oldID {
		t.Fatalf("node remembers %s, want the version it ran", v)
	}
}

func TestSwitchToTheVersionRunSwapsNothing(t *testing.T) {
	g, h := running(t)
	if err := h.SwitchTo(context.Background(), oldID, 0, func(api.Event) {}); err != nil {
		t.Fatal(err)
	}
	if len(g.sup.swaps) != 0 {
		t.Fatalf("swapped %v to the version they run", g.sup.swaps)
	}
}

func TestFailedSpawnNeverReusesItsID(t *testing.T) {
	g, h := running(t)
	g.sup.failStart = errors.New("exec format error")
	_, err := h.Spawn(context.Background(), api.SpawnRequest{Addr: "127.0.0.1:1"})
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity {
		t.Fatalf("failed start: %v, want a 422", err)
	}
	d, err := h.Spawn(context.Background(), api.SpawnRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != "duck-4" {
		t.Fatalf("next duck is %s, want duck-4: duck-3's ID went to the one that failed", d.ID)
	}
	if ds := h.Local().Ducks; len(ds) != 3 {
		t.Fatalf("remembers %d ducks, want 3: a duck that did not start is not kept", len(ds))
	}
}

func TestSpawnWithoutCodeOrAnUnknownVersionIsRefused(t *testing.T) {
	g := newRig(t)
	h := g.open(t)
	for _, tc := range []struct {
		req    api.SpawnRequest
		status int
		says   string
	}{
		{api.SpawnRequest{}, http.StatusConflict, "has no duck code loaded"},
		{api.SpawnRequest{Version: "v2"}, http.StatusBadRequest, "not a version ID"},
		{api.SpawnRequest{Version: bundle.ID(strings.Repeat("c", 64)), From: "b"}, http.StatusConflict, "which b runs"},
	} {
		_, err := h.Spawn(context.Background(), tc.req)
		var ae *api.APIError
		if !errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Message, tc.says) {
			t.Errorf("spawn %+v: %v, want %d saying %q", tc.req, err, tc.status, tc.says)
		}
	}
}

func TestStopAndRestartOfAnUnknownDuckAre404(t *testing.T) {
	_, h := running(t)
	for name, err := range map[string]error{
		"stop":    h.Stop(context.Background(), "duck-9"),
		"restart": h.Restart(context.Background(), "duck-9"),
	} {
		var ae *api.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
			t.Errorf("%s: %v, want a 404", name, err)
		}
	}
}

func TestStoppedDuckIsForgotten(t *testing.T) {
	g, h := running(t)
	if err := h.Stop(context.Background(), "duck-1"); err != nil {
		t.Fatal(err)
	}
	if ds := g.open(t).Local().Ducks; len(ds) != 1 || ds[0].ID != "duck-2" {
		t.Fatalf("after a restart the node remembers %+v, want duck-2 only", ds)
	}
}

func TestLabelIsTheLogsNumberElseTheRememberedOneElseTheShortID(t *testing.T) {
	g, h := running(t)
	if l := h.Label(newID); l != "v2" {
		t.Errorf("committed: %q, want v2", l)
	}
	// Before the log is replayed, a restarted node still calls its version what it did.
	delete(g.log, oldID)
	if l := h.Label(oldID); l != "v1" {
		t.Errorf("remembered: %q, want v1", l)
	}
	if l := h.VersionLabel(bundle.ID(strings.Repeat("c", 64))); l != api.LabelOf(bundle.ID(strings.Repeat("c", 64)))+" (local)" {
		t.Errorf("loaded here only: %q", l)
	}
}

func TestLostBinaryIsRebuiltFromTheKeptBundle(t *testing.T) {
	g := newRig(t)
	h := g.open(t)
	g.b.bins = map[bundle.ID]bool{}
	if _, err := h.Binary(context.Background(), newID); err == nil || !strings.Contains(err.Error(), "load it here first") {
		t.Fatalf("no bundle, no binary: %v", err)
	}
	if err := h.KeepCommitted(newID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(g.dir, "bundles", string(newID)+".tgz")); err != nil {
		t.Fatalf("bundle not kept: %v", err)
	}
	if _, err := h.Binary(context.Background(), newID); err != nil {
		t.Fatal(err)
	}
	if len(g.b.builds) != 1 || g.b.builds[0] != newID {
		t.Fatalf("builds %v, want one of the kept bundle", g.b.builds)
	}
}

func TestCorruptLocalStateSaysWhatToDo(t *testing.T) {
	g := newRig(t)
	os.WriteFile(filepath.Join(g.dir, "local.json"), []byte("{"), 0o600)
	_, err := Open(Config{Name: "a", Dir: g.dir, Builder: g.b, Supervisor: g.sup, Log: g.log})
	if err == nil || !strings.Contains(err.Error(), "fix or delete it") {
		t.Fatalf("%v, want a refusal that says what to do", err)
	}
}

func TestFreeLoopbackAddrCanBeBound(t *testing.T) {
	addr, err := freeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s: %v", addr, err)
	}
	l.Close()
	if host, _, _ := net.SplitHostPort(addr); host != "127.0.0.1" {
		t.Fatalf("%s is not on loopback", addr)
	}
}

// A duck that cannot start again when its node restarts (its port taken meanwhile) is listed
// as failed with why, and tried again until it runs: it vanished from `ducks --local` and
// `status`, its error in the node's log alone, and was never tried again (found by an outside
// probe).
func TestADuckThatCannotStartAgainIsListedAndTriedAgain(t *testing.T) {
	g, _ := running(t)
	g.sup = newSupervisor() // the node restarted: its supervisor runs nothing
	g.sup.failStart = errors.New("address 127.0.0.1:1 already in use")
	h := g.open(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.RestartAll(ctx)
	var failed *api.DuckInfo
	for _, d := range h.List() {
		if d.State == "failed" {
			failed = &d
		}
	}
	if len(h.List()) != 2 || failed == nil || !strings.Contains(failed.LastError, "already in use") || failed.Version != "v1" {
		t.Fatalf("after a restart with one duck's start failing, List = %+v; want both, one failed saying why", h.List())
	}
	deadline := time.Now().Add(3 * retryFirst)
	for {
		if _, ok := g.sup.Get(failed.ID); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not started again within %s", failed.ID, 3*retryFirst)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, d := range h.List() {
		if d.State != "running" {
			t.Fatalf("once started again List = %+v", h.List())
		}
	}
}
