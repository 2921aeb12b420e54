package systemtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/duckraft/duckraft/api"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/duckraft/duckraft/localcluster"
)

// attempt is what testdata/duck-snoop reports for each thing it tried.
type attempt struct {
	What, Path, Must, Err string
}

// A duck on a root node runs as a user of its own and reaches none of its node's authority: not
// the node's environment or memory through /proc, not the cookie file, the data folder, the
// node's build folder, the shared build folder or the Go build cache, and it cannot write its own
// binary or anything beside it. It still runs: it reads its version file and writes its own
// folder. `status` names the user.
func TestDuckCannotReachItsNodesSecrets(t *testing.T) {
	needRoot(t, "a node runs its ducks as another user only as root")
	root := reachableTempDir(t)
	home := filepath.Join(root, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(root, "a")
	// No cookie given: the node makes ~/.duckraft.cookie, as a user's first start does.
	n := startRaw(t, cleanEnv(home), "start", "--name", "a", "--data-dir", data, "--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	apiAddr, _, exited := n.ready(t)
	if exited {
		t.Fatalf("node exited before it was ready (%v):\n%s", n.err, n.out.String())
	}
	cookieFile := filepath.Join(home, ".duckraft.cookie")
	cookie, err := os.ReadFile(cookieFile)
	if err != nil {
		t.Fatal(err)
	}
	c := &localcluster.Cluster{Bin: bin, Cookie: strings.TrimSpace(string(cookie))}
	out := cli(t, c, apiAddr, "deploy", "-m", "snoop", "../testdata/duck-snoop")
	if !strings.Contains(out, "version 1 runs on every node") {
		t.Fatalf("deploy printed:\n%s", out)
	}
	cacheHome := cmpOr(os.Getenv("XDG_CACHE_HOME"), filepath.Join(home, ".cache"))
	shared := filepath.Join(cacheHome, "duckraft", "builds")
	gocache := os.Getenv("GOCACHE") // TestMain set it; cleanEnv passes it on
	out = cli(t, c, apiAddr, "spawn", "--detach",
		"--env", "DUCK_SNOOP_COOKIE="+cookieFile, "--env", "DUCK_SNOOP_DATA="+data,
		"--env", "DUCK_SNOOP_SHARED="+shared, "--env", "DUCK_SNOOP_GOCACHE="+gocache)
	var id, addr string
	if _, err := fmt.Sscanf(out, "%s on a serving http://%s", &id, &addr); err != nil {
		t.Fatalf("spawn printed %q", out)
	}

	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []attempt
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if len(got) < 20 {
		t.Fatalf("the duck reported %d attempts: %+v", len(got), got)
	}
	for _, a := range got {
		// What it tried must exist, or a refusal proves nothing ("planted" files are new, in a
		// folder that exists).
		target := a.Path
		if strings.HasSuffix(target, "planted") || strings.HasSuffix(target, "scratch") {
			target = filepath.Dir(target)
		}
		if _, err := os.Stat(target); err != nil {
			t.Errorf("%s: %s does not exist, so its refusal proves nothing: %v", a.What, target, err)
			continue
		}
		switch {
		case a.Must == "work" && a.Err != "":
			t.Errorf("%s (%s): a duck needs this, and it failed: %s", a.What, a.Path, a.Err)
		case a.Must == "fail" && a.Err == "":
			t.Errorf("%s (%s): allowed to a duck", a.What, a.Path)
		case a.Must == "fail" && !strings.Contains(a.Err, "permission denied"):
			t.Errorf("%s (%s): failed, but not for want of permission: %s", a.What, a.Path, a.Err)
		default:
			t.Logf("%-50s %s: %s", a.What, a.Path, cmpOr(a.Err, "ok"))
		}
	}

	var st api.Status
	if err := json.Unmarshal([]byte(cli(t, c, apiAddr, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, node := range st.Nodes {
		if node.Local == nil || !strings.HasPrefix(node.Local.DuckUser, "duckraft-duck (uid ") {
			t.Errorf("status of %s does not say ducks run as duckraft-duck: %+v", node.Member.Name, node.Local)
		}
	}
	if out := cli(t, c, apiAddr, "status"); strings.Contains(out, "ducks run as their node's user") {
		t.Errorf("status says ducks share the node's user on a root node:\n%s", out)
	}
	// The duck's processes are the duck user's, not root's.
	for _, d := range ducksOn(c, apiAddr) {
		fi, err := os.Stat(fmt.Sprintf("/proc/%d", d.PID))
		if err != nil {
			t.Fatal(err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid == 0 {
			t.Errorf("duck %s (PID %d) runs as root", d.ID, d.PID)
		}
	}
}

// --duck-user needs root: a node that is not root and is given one refuses to start and says why,
// before it touches anything.
func TestDuckUserWithoutRootIsAnError(t *testing.T) {
	var cred *syscall.Credential
	dir, nodeBin := t.TempDir(), bin
	if os.Geteuid() == 0 {
		// A node that is not root, as the tests run as root: nobody, with a binary and a home
		// it can reach.
		cred = nobody
		root := reachableTempDir(t)
		b, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		nodeBin = filepath.Join(root, "duckraft")
		if err := os.WriteFile(nodeBin, b, 0o755); err != nil {
			t.Fatal(err)
		}
		dir = privateTo(t, cred, filepath.Join(root, "home"))
	}
	cmd := exec.Command(nodeBin, "start", "--name", "a", "--duck-user", "nobody", "--data-dir", filepath.Join(dir, "a"),
		"--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	cmd.Env = cleanEnv(dir, "DUCKRAFT_COOKIE="+randomCookie())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("start --duck-user without root: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--duck-user needs the node to run as root") {
		t.Fatalf("the refusal does not say why:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused node made its data folder (%v)", err)
	}
}

// A duck printing terminal control sequences (colours, a window title, a screen clear, a bidi
// override) shows them escaped in `logs`: what reaches the operator's terminal is text.
func TestDuckEscapesAreShownEscapedInLogs(t *testing.T) {
	c, nodes := newCluster(t, "a")
	a := nodes[0]
	cli(t, c, a.API, "deploy", "-m", "escapes", "../testdata/duck-snoop")
	cli(t, c, a.API, "spawn", "--detach")
	var out string
	waitFor(t, "the duck's first line in logs", localcluster.ReadyTimeout, func() bool {
		out = cli(t, c, a.API, "logs")
		return strings.Contains(out, "snoop: ")
	})
	for _, raw := range []string{"\x1b", "\x07", "\u202e", "\u009b"} {
		if strings.Contains(out, raw) {
			t.Errorf("logs printed %q raw:\n%q", raw, out)
		}
	}
	if !strings.Contains(out, `\x1b[31mred`) {
		t.Errorf("logs does not show the escape sequence escaped:\n%q", out)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
