package main

import (
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/duckraft/duckraft/agent"
	"github.com/duckraft/duckraft/runtime/duckuser"
	"github.com/duckraft/duckraft/wire"
)

// cookieFlags adds the ways of giving a cookie to fs.
func cookieFlags(fs *flag.FlagSet) *wire.CookieSource {
	var s wire.CookieSource
	fs.StringVar(&s.Flag, "cookie", "", "the cluster cookie (visible in ps: prefer --cookie-file or $DUCKRAFT_COOKIE)")
	fs.StringVar(&s.File, "cookie-file", "", "file holding the cluster cookie (mode 0600); default $DUCKRAFT_COOKIE, then ~/.duckraft.cookie")
	return &s
}

// runCookie prints a new cookie for the user to put in a file every node and client reads: the
// way to a cookie strong enough for nodes on several machines.
func runCookie(args []string) error {
	fs := flag.NewFlagSet("cookie", flag.ContinueOnError)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := wire.NewCookie()
	if err != nil {
		return err
	}
	fmt.Println(c)
	return nil
}

func runStart(args []string) error {
	closeInherited()
	fs := flag.NewFlagSet("start", flag.ContinueOnError)
	name := fs.String("name", "", "the node's name, unique in its cluster (required)")
	dataDir := fs.String("data-dir", "", "the node's data folder (default ~/.duckraft/NAME; as root, "+duckuser.DataRoot+"/NAME if the duck user cannot pass through ~)")
	apiAddr := fs.String("api-addr", "", "address the API listens on (default "+agent.DefaultAPIAddr+", or the one this data folder's node had)")
	raftAddr := fs.String("raft-addr", "", "address Raft listens on (default "+agent.DefaultRaftAddr+", or the one this data folder's node had)")
	adv := fs.String("advertise", "", "host peers and clients dial, needed when binding 0.0.0.0")
	readyTimeout := fs.Duration("ready-timeout", 0, "how long a new duck generation may take to become Ready (default 10s)")
	healthy := fs.Duration("healthy", 0, "how long a swapped duck must stay up before the swap counts (default 500ms)")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus /metrics on this address, in plain HTTP and without the cookie (off unless set)")
	goBin := fs.String("go", "", "the go command to build ducks with (default: go on PATH)")
	voters := fs.Int("voters", agent.DefaultVoters, "how many members vote while this node leads; every other member follows the log as a non-voter")
	replaceAfter := fs.Duration("replace-voter-after", 10*time.Second, "a voter unreachable this long is replaced by a reachable non-voter while this node leads")
	duckUserName := fs.String("duck-user", "", "run ducks as this existing user; needs root (default as root: the user "+duckuser.DefaultName+", made if missing; without root: the node's own user)")
	labels := labelFlag{}
	fs.Var(labels, "label", "a label `KEY=VALUE` describing the node, such as zone=eu-1 (repeatable): 'deploy --wave-by KEY' rolls out in waves by it")
	cookie := cookieFlags(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *name == "" {
		return usageError{"a node needs a name: --name NAME"}
	}
	if cookie.Flag != "" {
		return startAgainWithoutCookieArg(args, cookie.Flag)
	}
	switch {
	case *voters < 1:
		return usageError{fmt.Sprintf("--voters %d: at least one member must vote; 3 or 5 is usual (an odd number: 4 voters take no more failures than 3)", *voters)}
	case *replaceAfter <= 0:
		return usageError{fmt.Sprintf("--replace-voter-after %s: give a positive duration such as 10s", *replaceAfter)}
	case *healthy < 0 || *readyTimeout < 0:
		return usageError{"--healthy and --ready-timeout take a positive duration (or 0 for the default)"}
	}

	// Names appear in NODE/DUCK arguments, folder names and every listing: a slash, a space or a
	// terminal escape in one broke each of those (found by trying it). A node that already has
	// its data keeps the name it was made with (its node.json fixes it). Checked before the duck
	// user is settled, which may make that user.
	if !validName.MatchString(*name) && !hasIdentity(*dataDir, *name) {
		return usageError{fmt.Sprintf("--name %q: a node name is 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, such as n1 or eu-west.a", *name)}
	}
	// Who the ducks run as, settled before anything else: a wrong --duck-user is the user's to fix.
	duckUser, err := duckuser.Choose(*duckUserName, slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", *name))
	if err != nil {
		return err
	}
	if *dataDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("no home folder for the default data folder: %w; pass --data-dir", err)
		}
		*dataDir = filepath.Join(home, ".duckraft", *name)
		if duckUser != nil {
			if *dataDir, err = duckuser.DefaultDataDir(home, *name, duckUser); err != nil {
				return fmt.Errorf("default data folder: %w; pass --data-dir", err)
			}
		}
	}
	// Catch the stop signals before anything starts: a supervisor (or a test) may send SIGTERM
	// the moment the ready line appears, and the default action would skip the graceful stop.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	// Before the cookie is in memory: ducks may run as this user (without root), and a process of
	// the same user can read another's /proc/PID/environ and mem (where DUCKRAFT_COOKIE stays after Unsetenv, and
	// the cookie after that) unless it is not dumpable. Its children are dumpable again after
	// exec, so this costs the ducks nothing.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("make the node unreadable to its ducks (prctl PR_SET_DUMPABLE): %w", err)
	}
	cookie.Create = true
	c, err := cookie.Load()
	if err != nil {
		return err
	}
	// Nothing this node starts (ducks, go build) needs the cookie; none of them gets it.
	os.Unsetenv(wire.CookieEnv)
	id, err := wire.FromCookie(c)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", *name)
	// A start that fails (a weak cookie, a port in use) leaves no data folder it made behind: a
	// later start with other flags would find an empty node there.
	_, statErr := os.Lstat(*dataDir)
	madeDir := os.IsNotExist(statErr)
	a, err := agent.Start(agent.Config{
		Name: *name, DataDir: *dataDir, APIAddr: *apiAddr, RaftAddr: *raftAddr,
		Advertise: *adv, Identity: id, Log: log, ReadyTimeout: *readyTimeout, Healthy: *healthy, MetricsAddr: *metricsAddr, Labels: labels, GoBin: *goBin,
		Voters: *voters, ReplaceVoterAfter: *replaceAfter, DuckUser: duckUser,
	})
	if err != nil {
		if madeDir {
			removeIfHollow(*dataDir)
		}
		return err
	}
	self := a.Self()
	// Scripts and the end-to-end tests wait for this line; keep its shape.
	metrics := ""
	if m := a.MetricsAddr(); m != "" {
		metrics = ", metrics http://" + m + "/metrics"
	}
	fmt.Printf("node %s ready: api %s, raft %s, data %s%s\n", self.Name, self.APIAddr, self.RaftAddr, *dataDir, metrics)

	s := <-sig
	log.Info("stopping", "signal", s.String())
	if err := a.Close(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	log.Info("stopped")
	return nil
}

// startAgainWithoutCookieArg executes this program again as the same process, with the cookie
// given by --cookie in its environment instead of its arguments. /proc/PID/cmdline is readable
// by every process on the host, whatever their user and however the node guards itself: a duck
// running as a user of its own read the cookie there (found by trying it from outside), and
// with it could act as the node. The environment a node keeps to itself (it is not dumpable).
// --cookie-file goes too, since --cookie came before it.
func startAgainWithoutCookieArg(args []string, cookie string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this program to start it again without the cookie in its arguments: %w; pass the cookie with --cookie-file or $%s instead", err, wire.CookieEnv)
	}
	kept := []string{os.Args[0], "start"}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			kept = append(kept, args[i:]...)
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && (name == "cookie" || name == "cookie-file") {
			if !hasValue {
				i++ // the value is the next argument
			}
			continue
		}
		kept = append(kept, a)
	}
	env := []string{wire.CookieEnv + "=" + cookie} // the only one: --cookie came before it
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, wire.CookieEnv+"=") {
			env = append(env, kv)
		}
	}
	if err := syscall.Exec(self, kept, env); err != nil {
		return fmt.Errorf("start again without the cookie in the arguments: %w; pass the cookie with --cookie-file or $%s instead", err, wire.CookieEnv)
	}
	return nil // not reached
}

// closeInherited marks every descriptor above stderr close-on-exec: one the node inherited from
// whoever started it (a shell's pipe, say) would otherwise pass to every duck and build, whatever
// user they run as (found by trying it: ducks held a root pipe of the launching shell).
func closeInherited() {
	const closeRangeCloexec = 1 << 2 // CLOSE_RANGE_CLOEXEC, Linux 5.11
	if unix.CloseRange(3, ^uint(0), closeRangeCloexec) == nil {
		return
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
		}
	}
}

// removeIfHollow removes dir if it holds nothing but empty folders (what a start that failed
// early makes): a file in it means a node, perhaps another start's, uses it, and it stays.
func removeIfHollow(dir string) {
	hollow := true
	filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		// The lock file the failed start took says nothing about a node.
		if err == nil && path == filepath.Join(dir, agent.LockFile) && e.Type().IsRegular() {
			return nil
		}
		if err != nil || !e.IsDir() {
			hollow = false
			return filepath.SkipAll
		}
		return nil
	})
	if hollow {
		os.RemoveAll(dir)
	}
}

// hasIdentity says whether a node's data already exists where this start would look for it:
// the --data-dir given, or either default folder.
func hasIdentity(dataDir, name string) bool {
	dirs := []string{dataDir, filepath.Join(duckuser.DataRoot, name)}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, ".duckraft", name))
	}
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "node.json")); d != "" && err == nil {
			return true
		}
	}
	return false
}

// validName is what a node may be called.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// labelFlag is a repeatable --label KEY=VALUE.
type labelFlag map[string]string

func (l labelFlag) String() string {
	var out []string
	for k, v := range l {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func (l labelFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" || strings.ContainsAny(k, " ,") {
		return fmt.Errorf("--label %q: give KEY=VALUE, such as zone=eu-1", s)
	}
	l[k] = v
	return nil
}
