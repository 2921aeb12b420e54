package localcluster

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The test binary plays two parts when asked through the environment: a node that prints its
// ready line and waits for ever, and a process that starts one such node with a Cluster and
// prints the node's PID.
func TestMain(m *testing.M) {
	switch {
	case os.Getenv("LOCALCLUSTER_FAKE_NODE") == "1":
		fmt.Println("ready: api 127.0.0.1:1, raft 127.0.0.1:2")
		select {}
	case os.Getenv("LOCALCLUSTER_FAKE_STARTER") != "":
		os.Setenv("LOCALCLUSTER_FAKE_NODE", "1")
		c := &Cluster{Bin: os.Args[0], Root: os.Getenv("LOCALCLUSTER_FAKE_STARTER"), Cookie: "c"}
		n, err := c.Start("a")
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(n.PID())
		select {}
	}
	os.Exit(m.Run())
}

// A node dies with the process that started it: a test binary that timed out left its nodes
// running before.
func TestNodesDieWithTheProcessThatStartedThem(t *testing.T) {
	starter := exec.Command(os.Args[0])
	starter.Env = append(os.Environ(), "LOCALCLUSTER_FAKE_STARTER="+t.TempDir())
	out, err := starter.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := starter.Start(); err != nil {
		t.Fatal(err)
	}
	defer starter.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the starter printed no node PID: %v", err)
	}
	pid, err := strconv.Atoi(line[:len(line)-1])
	if err != nil {
		t.Fatalf("the starter said %q, not a node's PID", line)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("node %d is not running before its starter dies: %v", pid, err)
	}
	starter.Process.Kill()
	starter.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		// A dead node stays a zombie until someone reaps it: the starter is gone, so init
		// (or a subreaper) does; a zombie counts as gone here.
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && zombie(stat) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d still runs 10 s after the process that started it died", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// zombie reads the state field of /proc/PID/stat, after the command name in parentheses.
func zombie(stat []byte) bool {
	for i := len(stat) - 1; i >= 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == 'Z'
		}
	}
	return false
}
