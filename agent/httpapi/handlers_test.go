package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/duckraft/duckraft/agent/membership"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/rollout"
	"github.com/duckraft/duckraft/runtime/bundle"
	"github.com/duckraft/duckraft/runtime/supervise"
)

// fake is every part the API asks, in one: each call is recorded, and err (when set) is what
// every change returns.
type fake struct {
	err      error
	calls    []string
	commits  []api.CommitRequest
	members  []api.MemberStatus
	version  bundle.ID
	spawned  []api.SpawnRequest
	recorded int
}

func (f *fake) call(s string) error { f.calls = append(f.calls, s); return f.err }

// Cluster
func (f *fake) Connect(_ context.Context, addr string) error { return f.call("connect " + addr) }
func (f *fake) Join(_ context.Context, m api.Member) error   { return f.call("join " + m.Name) }
func (f *fake) Register(context.Context, api.Member) error   { return f.call("register") }
func (f *fake) Promote(_ context.Context, name string) error { return f.call("promote " + name) }
func (f *fake) SyncLog() error                               { return f.call("sync-log") }
func (f *fake) Remove(_ context.Context, name string) error  { return f.call("remove " + name) }
func (f *fake) Leave(_ context.Context, forget func()) error { return f.call("leave") }
func (f *fake) Place(_ context.Context, c api.Entry) error {
	return f.call("apply /v1/place " + c.Op())
}
func (f *fake) APIAddr(name string) (string, bool) { return name + ":api", name == "b" }
func (f *fake) Ping() api.Ping                     { return api.Ping{Name: "a", State: "leader"} }

// Rollouts
func (f *fake) Commit(_ context.Context, req api.CommitRequest) (api.CommitResult, error) {
	f.commits = append(f.commits, req)
	return api.CommitResult{N: 1, ID: bundle.Sum(req.Bundle)}, f.call("commit")
}
func (f *fake) Act(_ context.Context, req api.RolloutAction) (api.CommitResult, error) {
	return api.CommitResult{}, f.call("act " + req.Action)
}
func (f *fake) Report(_ context.Context, c api.Entry) error { return f.call("report") }
func (f *fake) View(context.Context) api.RolloutView        { return api.RolloutView{Leader: "a"} }
func (f *fake) Canaries(*rollout.Rollout) []api.CanaryCheck { return nil }
func (f *fake) Granted(g api.Grant)                         { f.call(fmt.Sprint("granted ", g.Index)) }
func (f *fake) BenchCommit(context.Context, api.CommitBench) (api.CommitLatency, error) {
	return api.CommitLatency{}, f.call("bench")
}

// Ducks
func (f *fake) Load(_ context.Context, _ []byte, event func(api.Event)) error {
	event(api.Event{Phase: "done"})
	return f.call("load")
}
func (f *fake) Spawn(_ context.Context, req api.SpawnRequest) (api.DuckInfo, error) {
	f.spawned = append(f.spawned, req)
	return api.DuckInfo{Node: "a", ID: "duck-1"}, f.call("spawn")
}
func (f *fake) Stop(_ context.Context, id string) error    { return f.call("stop " + id) }
func (f *fake) Restart(_ context.Context, id string) error { return f.call("restart " + id) }
func (f *fake) List() []api.DuckInfo                       { return nil }
func (f *fake) Version() bundle.ID                         { return f.version }
func (f *fake) Bundle(bundle.ID) ([]byte, error)           { return nil, os.ErrNotExist }
func (f *fake) NoCode() error {
	return &api.APIError{Status: http.StatusConflict, Message: "node a has no duck code loaded"}
}
func (f *fake) ForgetRollouts() error { return nil }
func (f *fake) Record()               { f.recorded++ }
func (f *fake) Local() api.Local      { return api.Local{Name: "a"} }

// Output
func (f *fake) Get(id string) (supervise.Status, bool) { return supervise.Status{}, id == "duck-1" }
func (f *fake) Recent(string, int) []supervise.Line {
	return []supervise.Line{{Duck: "duck-1", Text: "quack"}}
}
func (f *fake) Subscribe() (<-chan supervise.Line, func()) {
	return make(chan supervise.Line), func() {}
}
func (f *fake) Members(context.Context) ([]api.MemberStatus, error)  { return f.members, nil }
func (f *fake) Ducks(context.Context) []api.DuckInfo                 { return nil }
func (f *fake) Logs(http.ResponseWriter, *http.Request)              {}
func (f *fake) ProxyLogs(http.ResponseWriter, *http.Request, string) {}
func (f *fake) Status(context.Context) (api.Status, error)           { return api.Status{}, f.err }

// Peers
func (f *fake) Do(_ context.Context, addr, _, path string, _, _ any) error {
	return f.call("peer " + addr + " " + path)
}

func serve(f *fake) *httptest.Server {
	s := &Service{Self: "a", Cluster: f, Rollouts: f, Ducks: f, Output: f, Views: f, Peers: f, Stop: make(chan struct{})}
	srv := httptest.NewServer(s.Handler())
	return srv
}

// do sends body to path and returns the status and the error the answer carries, if any.
func do(t testing.TB, srv *httptest.Server, method, path string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var eb api.ErrorBody
	json.NewDecoder(res.Body).Decode(&eb)
	return res.StatusCode, eb.Error
}

func jsonBody(v any) []byte { b, _ := json.Marshal(v); return b }

func TestErrorsMapToStatusCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{&api.APIError{Status: http.StatusNotFound, Message: "gone"}, http.StatusNotFound},
		{fmt.Errorf("%w elected", membership.ErrNoLeader), http.StatusServiceUnavailable},
		{raft.ErrLeadershipLost, http.StatusServiceUnavailable},
		{raft.ErrNotLeader, http.StatusServiceUnavailable},
		{&api.APIError{Status: http.StatusConflict, Message: "refused: v2 is rolling out"}, http.StatusConflict},
		{errors.New("disk full"), http.StatusInternalServerError},
	} {
		f := &fake{err: tc.err}
		srv := serve(f)
		status, msg := do(t, srv, http.MethodPost, "/v1/promote", jsonBody(api.NameRequest{Name: "b"}))
		srv.Close()
		if status != tc.want || msg != tc.err.Error() {
			t.Errorf("%v: %d %q, want %d with the error's words", tc.err, status, msg, tc.want)
		}
	}
}

func TestMalformedAndOversizedBodiesAreRefused(t *testing.T) {
	f := &fake{}
	srv := serve(f)
	defer srv.Close()
	for name, tc := range map[string]struct {
		path string
		body []byte
		want int
	}{
		"not json":           {"/v1/connect", []byte(`{"addr":`), http.StatusBadRequest},
		"unknown field":      {"/v1/spawn", []byte(`{"adr":"x"}`), http.StatusBadRequest},
		"too big":            {"/v1/register", []byte(`{"name":"` + strings.Repeat("a", 2<<20) + `"}`), http.StatusBadRequest},
		"no body":            {"/v1/deploy", nil, http.StatusBadRequest},
		"empty bundle":       {"/v1/deploy", jsonBody(api.CommitRequest{}), http.StatusBadRequest},
		"not a bundle":       {"/v1/load", []byte("not a gzip"), http.StatusBadRequest},
		"bundle over limit":  {"/v1/deploy", jsonBody(api.CommitRequest{Bundle: make([]byte, bundle.MaxSize+1)}), http.StatusRequestEntityTooLarge},
		"raw over limit":     {"/v1/load", make([]byte, bundle.MaxSize+1), http.StatusRequestEntityTooLarge},
		"connect to nothing": {"/v1/connect", []byte(`{}`), http.StatusBadRequest},
	} {
		status, msg := do(t, srv, http.MethodPost, tc.path, tc.body)
		if status != tc.want || msg == "" {
			t.Errorf("%s: %d %q, want %d saying why", name, status, msg, tc.want)
		}
	}
	if len(f.calls) != 0 {
		t.Fatalf("refused requests reached the node: %v", f.calls)
	}
}

// testBundle packs a one-file duck.
func testBundle(t testing.TB) []byte {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644)
	b, err := bundle.Pack(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b.Data
}

func TestDeployCommitsTheBodysVersionAndPolicy(t *testing.T) {
	f := &fake{}
	srv := serve(f)
	defer srv.Close()
	want := api.CommitRequest{Bundle: testBundle(t), Message: "louder", Author: "me", Policy: rollout.Policy{MaxParallel: 2, Healthy: 3 * time.Second, WaveBy: "zone", Canaries: 1}}
	if status, msg := do(t, srv, http.MethodPost, "/v1/deploy", jsonBody(want)); status != http.StatusOK {
		t.Fatalf("%d %s", status, msg)
	}
	got := f.commits[0]
	if got.Message != want.Message || got.Author != want.Author || got.Policy != want.Policy || !bytes.Equal(got.Bundle, want.Bundle) {
		t.Fatalf("committed %+v, want %+v", got, want)
	}
	for name, p := range map[string]rollout.Policy{
		"negative healthy":   {Healthy: -time.Second},
		"negative parallel":  {MaxParallel: -1},
		"share over a whole": {MaxParallelPercent: 120},
	} {
		bad := want
		bad.Policy = p
		if status, msg := do(t, srv, http.MethodPost, "/v1/deploy", jsonBody(bad)); status != http.StatusBadRequest || !strings.Contains(msg, "rollout policy") {
			t.Errorf("%s: %d %q, want a 400 saying what is wrong", name, status, msg)
		}
	}
	if len(f.commits) != 1 {
		t.Fatalf("%d commits; bad policies must not reach the log", len(f.commits))
	}
}

func TestSpawnRefusesTheSupervisorsVariables(t *testing.T) {
	f := &fake{}
	srv := serve(f)
	defer srv.Close()
	for _, env := range []string{"DUCK_ADDR=1.2.3.4:5", "PATH=/tmp", "DUCK_STATE_FILE=/etc/passwd"} {
		status, msg := do(t, srv, http.MethodPost, "/v1/spawn", jsonBody(api.SpawnRequest{Env: []string{env}}))
		if status != http.StatusBadRequest || !strings.Contains(msg, "refused") {
			t.Errorf("%s: %d %q, want a 400", env, status, msg)
		}
	}
	if status, _ := do(t, srv, http.MethodPost, "/v1/spawn", jsonBody(api.SpawnRequest{Env: []string{"DUCK_INTERVAL=200ms"}})); status != http.StatusOK {
		t.Fatalf("a duck's own variable: %d", status)
	}
	if f.recorded != 1 {
		t.Fatalf("the spawned duck was recorded %d times, want once so every node lists it", f.recorded)
	}
}

// An address whose port is out of range reached the duck, which failed to bind it and was
// reported as a duck that crashed on start.
func TestSpawnRefusesAnAddressWithoutAUsablePort(t *testing.T) {
	f := &fake{}
	srv := serve(f)
	defer srv.Close()
	for _, addr := range []string{"127.0.0.1:70000", "127.0.0.1:0", "127.0.0.1:-1", "127.0.0.1", "127.0.0.1:http"} {
		status, msg := do(t, srv, http.MethodPost, "/v1/spawn", jsonBody(api.SpawnRequest{Addr: addr}))
		if status != http.StatusBadRequest || !strings.Contains(msg, "a port from 1 to 65535") {
			t.Errorf("%s: %d %q, want a 400 saying which ports", addr, status, msg)
		}
	}
	if f.recorded != 0 {
		t.Fatalf("a refused spawn was recorded %d times", f.recorded)
	}
	if status, msg := do(t, srv, http.MethodPost, "/v1/spawn", jsonBody(api.SpawnRequest{Addr: "127.0.0.1:8080"})); status != http.StatusOK {
		t.Fatalf("a good address: %d %q", status, msg)
	}
}

func TestSpawnElsewhereNeedsCodeHereAndAKnownMember(t *testing.T) {
	f := &fake{}
	srv := serve(f)
	defer srv.Close()
	if status, _ := do(t, srv, http.MethodPost, "/v1/spawn", jsonBody(api.SpawnRequest{On: "z"})); status != http.StatusNotFound {
		t.Errorf("unknown member: %d, want 404", status)
	}
	if status, _ := do(t, srv, http.MethodPost, "/v1/spawn", jsonBody(api.SpawnRequest{On: "b"})); status != http.StatusConflict {
		t.Errorf("no code here: %d, want 409", status)
	}
	f.version = bundle.ID(strings.Repeat("a", 64))
	do(t, srv, http.MethodPost, "/v1/spawn", jsonBody(api.SpawnRequest{On: "b"}))
	if last := f.calls[len(f.calls)-1]; last != "peer b:api /v1/spawn" {
		t.Fatalf("last call %q, want the spawn forwarded to b", last)
	}
}

func TestForgetRefusesALiveMember(t *testing.T) {
	f := &fake{members: []api.MemberStatus{{Name: "b", Reachable: true, APIAddr: "b:api"}, {Name: "c"}}}
	srv := serve(f)
	defer srv.Close()
	if status, msg := do(t, srv, http.MethodPost, "/v1/forget", jsonBody(api.NameRequest{Name: "b"})); status != http.StatusConflict || !strings.Contains(msg, "run `leave` against it") {
		t.Errorf("live member: %d %q, want a 409 that says to leave instead", status, msg)
	}
	if status, _ := do(t, srv, http.MethodPost, "/v1/forget", jsonBody(api.NameRequest{Name: "z"})); status != http.StatusNotFound {
		t.Errorf("unknown member: %d, want 404", status)
	}
	if status, _ := do(t, srv, http.MethodPost, "/v1/forget", jsonBody(api.NameRequest{Name: "c"})); status != http.StatusOK {
		t.Errorf("dead member: %d, want it forgotten", status)
	}
	if strings.Join(f.calls, ",") != "remove c" {
		t.Fatalf("calls %v, want only c removed", f.calls)
	}
}

func TestPeerRoutesTakeOnlyTheirOwnCommands(t *testing.T) {
	f := &fake{}
	srv := serve(f)
	defer srv.Close()
	for path, op := range map[string]string{"/v1/report": "place", "/v1/place": "report"} {
		if status, _ := do(t, srv, http.MethodPost, path, jsonBody(map[string]string{"op": op})); status != http.StatusBadRequest {
			t.Errorf("%s with %s: %d, want 400", path, op, status)
		}
	}
	if len(f.calls) != 0 {
		t.Fatalf("refused commands reached the log: %v", f.calls)
	}
}

func TestLogsOfAnUnknownDuckIs404(t *testing.T) {
	srv := serve(&fake{})
	defer srv.Close()
	if status, _ := do(t, srv, http.MethodGet, "/v1/logs?duck=duck-9", nil); status != http.StatusNotFound {
		t.Errorf("%d, want 404", status)
	}
	if status, _ := do(t, srv, http.MethodGet, "/v1/logs?n=-1", nil); status != http.StatusBadRequest {
		t.Errorf("n=-1: %d, want 400", status)
	}
}

// A node syncs its log only when asked by its own name: an address the registry holds for
// another member, now this node's, must not answer for that member's promotion.
func TestSyncLogIsAskedByName(t *testing.T) {
	f := &fake{}
	srv := serve(f)
	defer srv.Close()
	status, msg := do(t, srv, http.MethodPost, "/v1/sync-log", jsonBody(api.NameRequest{Name: "b"}))
	if status != http.StatusConflict || !strings.Contains(msg, "this node is a, not b") || len(f.calls) != 0 {
		t.Fatalf("asked as b: %d %q, calls %v; want 409 naming a, nothing synced", status, msg, f.calls)
	}
	if status, msg := do(t, srv, http.MethodPost, "/v1/sync-log", jsonBody(api.NameRequest{Name: "a"})); status != http.StatusOK || len(f.calls) != 1 {
		t.Fatalf("asked as a: %d %q, calls %v", status, msg, f.calls)
	}
}
