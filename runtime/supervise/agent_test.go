package supervise

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agentEnv makes the test binary a fake agent (see fakeAgent), so a test can
// kill an agent with kill -9 and watch its ducks.
const agentEnv = "SUPERVISE_TEST_AGENT"

// fakeAgent supervises one duck (binary and version from the environment),
// swaps it once to prove the lifeline survives a swap, prints "pid <PID>"
// of the current generation and waits to be killed.
func fakeAgent() {
	s, err := New(Config{Dir: os.Getenv("AGENT_DIR"), Healthy: 100 * time.Millisecond})
	if err == nil {
		env := []string{"DUCK_INTERVAL=1h"}
		if e := os.Getenv("AGENT_DUCK_ENV"); e != "" {
			env = append(env, e)
		}
		err = s.Start(context.Background(), Spec{ID: "duck-1", Version: "v1", Binary: os.Getenv("AGENT_DUCK"), Addr: os.Getenv("AGENT_ADDR"), Env: env})
	}
	if err == nil {
		err = s.Swap(context.Background(), "duck-1", "v2", os.Getenv("AGENT_DUCK_V2"), 0)
	}
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	st, _ := s.Get("duck-1")
	fmt.Println("pid", st.PID)
	select {}
}

// startFakeAgent runs a fake agent whose duck serves addr, and returns it and its duck's PID.
func startFakeAgent(t *testing.T, addr, dir string) (*exec.Cmd, int) {
	t.Helper()
	agent, pid := startFakeAgentWith(t, addr, dir, bins["duck"], bins["duck-v2"], "")
	if r := call(t, "GET", addr, "/"); r.Version != "v2" {
		t.Fatalf("GET / = %+v", r)
	}
	return agent, pid
}

// startFakeAgentWith is startFakeAgent for the duck bin, swapped to v2, with one more setting
// in its environment (env, "" for none).
func startFakeAgentWith(t *testing.T, addr, dir, bin, v2, env string) (*exec.Cmd, int) {
	t.Helper()
	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), agentEnv+"=1", "AGENT_DIR="+dir, "AGENT_DUCK="+bin, "AGENT_DUCK_V2="+v2, "AGENT_ADDR="+addr, "AGENT_DUCK_ENV="+env)
	agent.Stderr = os.Stderr
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Process.Kill()
		agent.Wait()
	})
	line, _ := bufio.NewReader(out).ReadString('\n')
	pid, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "pid "))
	if err != nil {
		t.Fatalf("fake agent said %q", line)
	}
	return agent, pid
}

// A node killed with its duck's helpers running (init takes them over, out of any supervisor's
// reach) ends them when it starts the duck again: they ran on for good (found by trying it).
func TestHelpersOfAKilledAgentsDuckEndAtTheNextStart(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	tag := strconv.Itoa(100000 + rand.IntN(800000))
	agent, _ := startFakeAgentWith(t, addr, dir, bins["duck-forker"], bins["duck-forker"], "DUCK_FORKER_TAG="+tag)
	helpers := func() []int { return forkerHelpers(tag) }
	waitFor(t, "the current generation's two helpers", func() bool { return len(helpers()) == 2 })
	agent.Process.Kill()
	agent.Wait()
	t.Cleanup(func() {
		for _, pid := range helpers() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	s := newSupervisor(t, Config{Dir: dir, StopTimeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Start(ctx, Spec{ID: "duck-1", Version: "v3", Binary: bins["duck-forker"], Addr: addr, Env: []string{"DUCK_FORKER_TAG=" + tag + "9"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed agent's run's helpers to end, the new run's two to stay", func() bool {
		for _, pid := range helpers() {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			if !strings.Contains(string(b), "1000."+tag+"9") {
				return false
			}
		}
		return len(helpers()) == 2
	})
}

func TestDuckDiesWithItsAgent(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	agent, pid := startFakeAgent(t, addr, dir)
	agent.Process.Kill()
	agent.Wait()
	// The duck, interval 1h, prints nothing until its lifeline closes.
	waitFor(t, "the duck of a dead agent to exit", func() bool { return dead(pid) })
	// The duck stopped gracefully (its stdout and stderr readers are gone, so it must not die of
	// SIGPIPE on the way) and saved its state for the agent's return.
	if _, err := os.Stat(dir + "/duck-1/" + stateName); err != nil {
		t.Errorf("no state file after the agent died: %v", err)
	}
}

// dead says whether pid has exited. An orphan whose parent died may become
// this test process's child (an earlier test made it a subreaper); it is
// reaped here, by PID.
func dead(pid int) bool {
	st, err := readStat(pid)
	if err != nil {
		return true
	}
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if i := strings.LastIndexByte(string(b), ')'); i < 0 || !strings.HasPrefix(string(b[i+1:]), " Z") {
		return false
	}
	if st.ppid == os.Getpid() {
		if p, err := os.FindProcess(pid); err == nil {
			p.Wait()
		}
	}
	return true
}

// A node restarted at once after a kill -9 starts its duck again while the duck of its killed
// agent may still be stopping: holding its port, its state not saved yet. The start stops it
// first and waits, then reads the state it saved: nothing answered is lost. Here the old duck
// takes its time: a client has sent a POST's headers and half its body, and a stop waits up to
// 5 s for a request under way; without the wait, the start fails on the port in use.
func TestDuckOfAKilledAgentIsStoppedBeforeItsNextStart(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	agent, pid := startFakeAgent(t, addr, dir)
	quack(t, addr, 20)
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "POST /quack HTTP/1.1\r\nHost: duck\r\nContent-Length: 100\r\n\r\n0123456789"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the request is under way
	agent.Process.Kill()
	agent.Wait()

	s := newSupervisor(t, Config{Dir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Start(ctx, Spec{ID: "duck-1", Version: "v2", Binary: bins["duck-v2"], Addr: addr, Env: []string{"DUCK_INTERVAL=1h"}}); err != nil {
		t.Fatalf("starting the duck again after its agent was killed: %v", err)
	}
	if !dead(pid) {
		t.Fatalf("the killed agent's duck (PID %d) still runs beside the new one", pid)
	}
	// The half-sent POST was counted when its handler ran (it reads no body), and never answered.
	if r := call(t, "GET", addr, "/"); r.Count < 20 {
		t.Fatalf("the duck counts %d after its agent was killed and it started again, want at least the 20 it answered", r.Count)
	}
}
