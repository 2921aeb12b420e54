package systemtest

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/duckraft/duckraft/agent"
	"github.com/duckraft/duckraft/api"
	"github.com/duckraft/duckraft/localcluster"
	"github.com/duckraft/duckraft/runtime/bundle"
)

// rawNode is a node process started with exactly the arguments and environment a test gives,
// for what localcluster decides for its callers: the cookie in the environment, the addresses.
type rawNode struct {
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// cleanEnv is this process's environment with HOME set to home and no cookie or address.
func cleanEnv(home string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "DUCKRAFT_") {
			env = append(env, kv)
		}
	}
	return append(append(env, "HOME="+home), extra...)
}

// startRaw starts the node binary with args and env; it stops the node (its whole process group)
// when the test ends.
func startRaw(t *testing.T, env []string, args ...string) *rawNode {
	t.Helper()
	return startCommand(t, env, bin, args...)
}

// startCommand is startRaw for a command that ends by exec'ing the node binary (a shell that
// sets a limit first, say).
func startCommand(t *testing.T, env []string, name string, args ...string) *rawNode {
	t.Helper()
	return startCommandAs(t, nil, env, name, args...)
}

// startCommandAs is startCommand as another user (nil: this process's).
func startCommandAs(t *testing.T, cred *syscall.Credential, env []string, name string, args ...string) *rawNode {
	t.Helper()
	n := &rawNode{cmd: exec.Command(name, args...), done: make(chan struct{})}
	n.cmd.Env = env
	n.cmd.Stdout, n.cmd.Stderr = &n.out, &n.out
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.err = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("--- output of %s:\n%s", strings.Join(args, " "), n.out.String())
		}
	})
	return n
}

var rawReady = regexp.MustCompile(`ready: api ([^\s,]+), raft ([^\s,]+)`)

// ready waits for the ready line and returns the API and Raft addresses. If the node exits
// first, exited reports its output instead.
func (n *rawNode) ready(t *testing.T) (api, raft string, exited bool) {
	t.Helper()
	deadline := time.After(localcluster.ReadyTimeout)
	for {
		if m := rawReady.FindStringSubmatch(n.out.String()); m != nil {
			return m[1], m[2], false
		}
		select {
		case <-n.done:
			return "", "", true
		case <-deadline:
			t.Fatalf("no ready line within %s:\n%s", localcluster.ReadyTimeout, n.out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (n *rawNode) stop() {
	select {
	case <-n.done:
		return
	default:
	}
	syscall.Kill(-n.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
}

func portFree(addr string) bool {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// A node started without --api-addr and --raft-addr listens on loopback only: other machines
// cannot even reach the handshake.
func TestNodeListensOnLoopbackByDefault(t *testing.T) {
	for _, a := range []string{agent.DefaultAPIAddr, agent.DefaultRaftAddr} {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Fatalf("default address %s is not on loopback", a)
		}
	}
	help, _ := exec.Command(bin, "start", "-h").CombinedOutput()
	for _, want := range []string{"(default " + agent.DefaultAPIAddr, "(default " + agent.DefaultRaftAddr} {
		if !strings.Contains(string(help), want) {
			t.Errorf("start -h does not say %q:\n%s", want, help)
		}
	}

	// The same through a real start, when nothing else holds the default ports.
	if !portFree(agent.DefaultAPIAddr) || !portFree(agent.DefaultRaftAddr) {
		t.Skipf("%s or %s is taken on this machine: checked the defaults only", agent.DefaultAPIAddr, agent.DefaultRaftAddr)
	}
	n := startRaw(t, cleanEnv(t.TempDir(), "DUCKRAFT_COOKIE="+randomCookie()), "start", "--name", "a", "--data-dir", filepath.Join(t.TempDir(), "a"))
	api, raft, exited := n.ready(t)
	if exited {
		if strings.Contains(n.out.String(), "address already in use") {
			t.Skipf("a default port was taken meanwhile:\n%s", n.out.String())
		}
		t.Fatalf("node exited before it was ready (%v):\n%s", n.err, n.out.String())
	}
	if api != agent.DefaultAPIAddr || raft != agent.DefaultRaftAddr {
		t.Fatalf("started on api %s, raft %s; want the defaults %s, %s", api, raft, agent.DefaultAPIAddr, agent.DefaultRaftAddr)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		for _, port := range []string{"4370", "4371"} {
			target := net.JoinHostPort(ipn.IP.String(), port)
			if c, err := net.DialTimeout("tcp", target, 2*time.Second); err == nil {
				c.Close()
				t.Errorf("the node answers on %s, not only on loopback", target)
			}
		}
	}
}

// The data folder is the node's alone: mode 0700, its records and bundles 0600, and nothing in
// it writable by anyone else, both while the node runs a duck and after it stopped.
func TestDataFolderIsPrivate(t *testing.T) {
	c, nodes := newCluster(t, "a")
	a := nodes[0]
	out := cli(t, c, a.API, "deploy", "-m", "private", "../duck")
	if !strings.Contains(out, "version 1 runs on every node") {
		t.Fatalf("deploy printed:\n%s", out)
	}
	cli(t, c, a.API, "spawn", "--detach")

	check := func(when string) {
		t.Helper()
		mode := func(p string) fs.FileMode {
			t.Helper()
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			return fi.Mode().Perm()
		}
		// As root, ducks run as a user of their own, who may traverse the folder to ducks/
		// (0710, the duck user's group) and nothing else.
		want := fs.FileMode(0o700)
		if os.Geteuid() == 0 {
			want = 0o710
		}
		if m := mode(a.Dir); m != want {
			t.Errorf("%s: data folder %s has mode %04o, want %04o", when, a.Dir, m, want)
		}
		if ents, err := os.ReadDir(a.Dir); err == nil {
			for _, e := range ents {
				if e.Name() != "ducks" && mode(filepath.Join(a.Dir, e.Name()))&0o077 != 0 {
					t.Errorf("%s: %s in the data folder is open to its group or others", when, e.Name())
				}
			}
		}
		for _, name := range []string{"node.json", "local.json"} {
			if m := mode(filepath.Join(a.Dir, name)); m != 0o600 {
				t.Errorf("%s: %s has mode %04o, want 0600", when, name, m)
			}
		}
		bundles, err := os.ReadDir(filepath.Join(a.Dir, "bundles"))
		if err != nil || len(bundles) == 0 {
			t.Fatalf("%s: no bundles kept (%v)", when, err)
		}
		for _, b := range bundles {
			if m := mode(filepath.Join(a.Dir, "bundles", b.Name())); m != 0o600 {
				t.Errorf("%s: bundle %s has mode %04o, want 0600", when, b.Name(), m)
			}
		}
		filepath.WalkDir(a.Dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // a duck's or a build's file that went away meanwhile
			}
			fi, err := d.Info()
			if err == nil && fi.Mode().Type()&fs.ModeSymlink == 0 && fi.Mode().Perm()&0o022 != 0 {
				t.Errorf("%s: %s has mode %04o: others may write it", when, p, fi.Mode().Perm())
			}
			return nil
		})
	}
	check("while running")
	if err := a.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	check("after stopping")
}

// A node started with no cookie makes ~/.duckraft.cookie at random with mode 0600, a client on
// the same account then uses it, and a cookie file that others may read is refused.
func TestDefaultCookieFileIsPrivate(t *testing.T) {
	// A home the duck user can pass through (as most are), so that a root node keeps its
	// default data folder there rather than in /var/lib/duckraft.
	home := reachableTempDir(t)
	env := cleanEnv(home)
	n := startRaw(t, env, "start", "--name", "a", "--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	api, _, exited := n.ready(t)
	if exited {
		t.Fatalf("node without a cookie exited (%v):\n%s", n.err, n.out.String())
	}
	cookieFile := filepath.Join(home, ".duckraft.cookie")
	fi, err := os.Stat(cookieFile)
	if err != nil {
		t.Fatalf("no cookie file made: %v", err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("cookie file has mode %04o, want 0600", m)
	}
	cookie, err := os.ReadFile(cookieFile)
	if err != nil || len(bytes.TrimSpace(cookie)) < 16 {
		t.Fatalf("cookie file holds %q (%v), want a long random secret", cookie, err)
	}
	want := fs.FileMode(0o700)
	if os.Geteuid() == 0 {
		want = 0o710 // traversed by the duck user's group
	}
	if fi, err := os.Stat(filepath.Join(home, ".duckraft", "a")); err != nil {
		t.Fatalf("default data folder: %v", err)
	} else if fi.Mode().Perm() != want {
		t.Errorf("default data folder has mode %04o, want %04o", fi.Mode().Perm(), want)
	}
	if strings.Contains(n.out.String(), strings.TrimSpace(string(cookie))) {
		t.Errorf("the node printed the cookie it made:\n%s", n.out.String())
	}
	client := exec.Command(bin, "members", "--addr", api)
	client.Env = env
	if out, err := client.CombinedOutput(); err != nil || !strings.Contains(string(out), "leader") {
		t.Fatalf("client with the default cookie file: %v\n%s", err, out)
	}
	n.stop()

	if err := os.Chmod(cookieFile, 0o644); err != nil {
		t.Fatal(err)
	}
	again := startRaw(t, env, "start", "--name", "a", "--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	if _, _, exited := again.ready(t); !exited {
		t.Fatalf("a node started with a cookie file others may read:\n%s", again.out.String())
	}
	if out := again.out.String(); !strings.Contains(out, "readable by others") || !strings.Contains(out, "chmod 600") {
		t.Fatalf("refusal does not say the file is readable by others and how to fix it:\n%s", out)
	}
}

// grepTree returns the files under root that hold s, reading every file as bytes.
func grepTree(t *testing.T, root, s string) []string {
	t.Helper()
	var hits []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil // sockets, fifos, and files a duck or build removed meanwhile
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(s)) {
			hits = append(hits, p)
		}
		return nil
	})
	return hits
}

// After a cluster has connected, deployed, spawned ducks and refused a client with another
// cookie, the cookie is nowhere: not in any node's output, not in any file of any data folder.
// Nor is the other cookie: a refused peer's cookie never crossed the wire.
func TestCookieNeverLeaks(t *testing.T) {
	dc := newDuckCluster(t)
	c, nodes := dc.c, dc.nodes

	other := &localcluster.Cluster{Bin: bin, Root: reachableTempDir(t), Cookie: randomCookie()}
	if _, errOut, err := tryCLI(other, nodes[0].API, "members"); err == nil || !strings.Contains(errOut, "cookies differ") {
		t.Fatalf("members with another cookie: err=%v, stderr=%q", err, errOut)
	}
	waitFor(t, "a to log that the cookies differ", 10*time.Second, func() bool {
		return strings.Contains(nodes[0].Log(), "cookies differ")
	})
	if _, errOut, err := tryCLI(other, nodes[1].API, "deploy", "../duck"); err == nil {
		t.Fatalf("deploy with another cookie worked: %s", errOut)
	}
	cli(t, c, nodes[0].API, "logs", "-n", "1")

	check := func(when string) {
		t.Helper()
		for _, secret := range []struct{ what, s string }{{"the cluster's cookie", c.Cookie}, {"the refused cookie", other.Cookie}} {
			for _, n := range nodes {
				if strings.Contains(n.Log(), secret.s) {
					t.Errorf("%s: node %s printed %s", when, n.Name, secret.what)
				}
			}
			for _, p := range grepTree(t, c.Root, secret.s) {
				t.Errorf("%s: %s holds %s", when, p, secret.what)
			}
		}
	}
	check("while running")
	if err := c.StopAll(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	check("after stopping")
}

// A client that proves no cookie is refused before any handler runs: posting a valid bundle to
// /v1/load and /v1/deploy gets a 401, builds nothing and commits nothing.
func TestRequestWithoutCookieNeverReachesBuilder(t *testing.T) {
	c, nodes := newCluster(t, "a")
	a := nodes[0]
	b, err := bundle.Pack("../duck")
	if err != nil {
		t.Fatal(err)
	}
	builds := filepath.Join(a.Dir, "builds")
	listing := func() []string {
		es, err := os.ReadDir(builds)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		return names
	}
	before := listing()

	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, path := range []string{"/v1/load", "/v1/deploy", "/v1/deploy?m=sneaky"} {
		resp, err := hc.Post("https://"+a.API+path, "application/octet-stream", bytes.NewReader(b.Data))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "cookie") {
			t.Fatalf("POST %s without the cookie: %s %s", path, resp.Status, body)
		}
	}
	if after := listing(); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("builds/ went from %v to %v after requests without the cookie", before, after)
	}
	for _, p := range grepTree(t, a.Dir, "sneaky") {
		t.Errorf("%s holds the refused request's message", p)
	}
	if _, err := os.Stat(filepath.Join(a.Dir, "bundles", string(b.ID))); err == nil {
		t.Error("the refused bundle was kept")
	}
	var v api.RolloutView
	if err := json.Unmarshal([]byte(cli(t, c, a.API, "rollout", "status", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Versions) != 0 || v.Rollout != nil {
		t.Fatalf("requests without the cookie committed: versions %+v, rollout %+v", v.Versions, v.Rollout)
	}

	// The check above would have seen a build: a cookie holder's load makes builds/<id>.
	cli(t, c, a.API, "load", "../duck")
	if _, err := os.Stat(filepath.Join(builds, string(b.ID))); err != nil {
		t.Fatalf("a load with the cookie left no builds/%s: %v (builds/ holds %v)", b.ID, err, listing())
	}
}

// --cookie works but shows in ps; its help says so and names the ways that do not.
func TestCookieFlagHelpWarnsItShowsInPs(t *testing.T) {
	for _, cmd := range [][]string{{"start", "-h"}, {"members", "-h"}} {
		out, _ := exec.Command(bin, cmd...).CombinedOutput()
		lines := strings.Split(string(out), "\n")
		help := ""
		for i, l := range lines {
			if strings.TrimSpace(l) == "-cookie string" && i+1 < len(lines) {
				help = lines[i+1]
			}
		}
		if help == "" {
			t.Fatalf("%s lists no --cookie flag:\n%s", strings.Join(cmd, " "), out)
		}
		for _, want := range []string{"ps", "--cookie-file", "DUCKRAFT_COOKIE"} {
			if !strings.Contains(help, want) {
				t.Errorf("%s: --cookie help %q does not mention %s", strings.Join(cmd, " "), strings.TrimSpace(help), want)
			}
		}
	}
}

// A duck's environment does not hold the cookie: a duck is the cluster's workload, not a member,
// and nothing it runs or prints may hand out the key to every node.
func TestDuckEnvironmentHoldsNoCookie(t *testing.T) {
	dc := newDuckCluster(t)
	ds := ducksOn(dc.c, dc.nodes[0].API) // every node's ducks
	if len(ds) != len(dc.nodes) {
		t.Fatalf("ducks: %+v, want one on each node", ds)
	}
	for _, d := range ds {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", d.PID))
		if err != nil {
			t.Fatalf("duck %s on %s: %v", d.ID, d.Node, err)
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.Contains(kv, []byte(dc.c.Cookie)) {
				t.Errorf("duck %s on %s (pid %d) has the cookie in its environment: %s=...", d.ID, d.Node, d.PID, bytes.SplitN(kv, []byte("="), 2)[0])
			}
		}
	}
}

// A guessable cookie is for one machine: `--cookie duck` starts a node on loopback, and is
// refused, with the way to a strong one, for a node that listens where other machines reach it.
// A cookie from `duckraft cookie` starts there.
func TestWeakCookieOnlyOnLoopback(t *testing.T) {
	home := t.TempDir()
	loop := startRaw(t, cleanEnv(home), "start", "--name", "a", "--cookie", "duck", "--data-dir", filepath.Join(home, "a"),
		"--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0")
	if _, _, exited := loop.ready(t); exited {
		t.Fatalf("--cookie duck on loopback was refused:\n%s", loop.out.String())
	}
	wide := startRaw(t, cleanEnv(home, "DUCKRAFT_COOKIE=duck"), "start", "--name", "b", "--data-dir", filepath.Join(home, "b"),
		"--api-addr", "0.0.0.0:0", "--raft-addr", "127.0.0.1:0", "--advertise", "127.0.0.1")
	if _, _, exited := wide.ready(t); !exited {
		t.Fatalf("a node reachable from other machines started with the cookie duck:\n%s", wide.out.String())
	}
	if out := wide.out.String(); !strings.Contains(out, "too weak") || !strings.Contains(out, "duckraft cookie") {
		t.Fatalf("the refusal does not say the cookie is weak and how to make one:\n%s", out)
	}
	if _, err := os.Lstat(filepath.Join(home, "b")); !os.IsNotExist(err) {
		t.Errorf("the refused start left its data folder behind (%v): a later start would find an empty node there", err)
	}

	out, err := exec.Command(bin, "cookie").Output()
	if err != nil {
		t.Fatal(err)
	}
	strong := strings.TrimSpace(string(out))
	cookieFile := filepath.Join(home, "strong.cookie")
	if err := os.WriteFile(cookieFile, out, 0o600); err != nil {
		t.Fatal(err)
	}
	n := startRaw(t, cleanEnv(home), "start", "--name", "c", "--cookie-file", cookieFile, "--data-dir", filepath.Join(home, "c"),
		"--api-addr", "0.0.0.0:0", "--raft-addr", "127.0.0.1:0", "--advertise", "127.0.0.1")
	if _, _, exited := n.ready(t); exited {
		t.Fatalf("a node with the cookie %s printed was refused:\n%s", bin+" cookie", n.out.String())
	}
	if again, _ := exec.Command(bin, "cookie").Output(); strings.TrimSpace(string(again)) == strong {
		t.Fatal("duckraft cookie printed the same cookie twice")
	}
}

// A descriptor the node inherited from whoever started it (a shell's pipe, an open file) reaches
// no duck: ducks run as their own user, and held a root pipe of the launching shell (found by
// trying it).
func TestDucksInheritNoDescriptorOfTheNodesLauncher(t *testing.T) {
	home := reachableTempDir(t)
	marker := filepath.Join(home, "launcher-secret")
	if err := os.WriteFile(marker, []byte("not for ducks"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := cleanEnv(home, "DUCKRAFT_COOKIE="+randomCookie())
	// The shell opens fd 7 without close-on-exec and execs the node, as a launcher would.
	n := startCommand(t, env, "sh", "-c", `exec 7<"$0"; exec "$1" start --name a --api-addr 127.0.0.1:0 --raft-addr 127.0.0.1:0`, marker, bin)
	addr, _, exited := n.ready(t)
	if exited {
		t.Fatalf("node exited (%v):\n%s", n.err, n.out.String())
	}
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"--addr", addr}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("load", "../duck")
	run("spawn", "--detach")
	var ds []api.DuckInfo
	if err := json.Unmarshal([]byte(run("ducks", "--json")), &ds); err != nil || len(ds) != 1 || ds[0].PID == 0 {
		t.Fatalf("ducks: %v %+v", err, ds)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", ds[0].PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", ds[0].PID, fd.Name())); target == marker {
			t.Fatalf("the duck (pid %d) holds the node's launcher's file as fd %s", ds[0].PID, fd.Name())
		}
	}
}
