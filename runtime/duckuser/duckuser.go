// Package duckuser owns the user a root node runs its ducks as: finding it, making it the way
// daemons make theirs, and checking that it can reach what a duck needs and nothing else.
//
// A duck is code its deployer wrote. Run as the node's user it could read the cookie file, the
// data folder and the build folders, and write binaries a node later executes; run as root it
// could do anything. So a node that runs as root starts its ducks as another user, by default
// Dedicated's, and a node that does not run as root cannot (setuid needs root) and says so.
//
// Why a dedicated user rather than nobody: nobody is shared by other daemons (NFS squashes to it,
// some services drop to it), so ducks running as nobody could signal or trace those processes and
// they could trace the ducks. A user only ducks use shares nothing. Where useradd is missing
// (busybox systems, some containers), Dedicated falls back to nobody and says so in the log:
// still far less than root.
package duckuser

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DataRoot holds a root node's default data folder when root's home is closed to the duck user,
// who must traverse to its binary in the data folder. Made 0711: traversed, not listed.
const DataRoot = "/var/lib/duckraft"

// DefaultName is the user a root node makes for its ducks when --duck-user is not given.
const DefaultName = "duckraft-duck"

// User is who ducks run as.
type User struct {
	Name     string
	UID, GID uint32
}

func (u *User) String() string { return fmt.Sprintf("%s (uid %d)", u.Name, u.UID) }

// Credential is what a process started as u gets: its user, its primary group and no
// supplementary groups (the node's, root's, are dropped).
func (u *User) Credential() *syscall.Credential {
	return &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: []uint32{}}
}

// ErrNotRoot is returned (wrapped) when a node that does not run as root is given a duck user:
// starting a process as another user needs root.
var ErrNotRoot = errors.New("--duck-user needs the node to run as root")

// Lookup returns the existing user name, refusing root: ducks as root would hold every authority.
func Lookup(name string) (*User, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("duck user %q: %w; create it first (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin %s) or leave --duck-user out and the node makes %s", name, err, name, DefaultName)
	}
	return parse(u)
}

func parse(u *user.User) (*User, error) {
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("duck user %q has a uid or gid that is not a number (%s, %s)", u.Username, u.Uid, u.Gid)
	}
	if uid == 0 || gid == 0 {
		return nil, fmt.Errorf("duck user %q has uid %d and gid %d: a duck as root (or in root's group) holds the node's authority; choose an unprivileged user", u.Username, uid, gid)
	}
	return &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid)}, nil
}

// Dedicated returns DefaultName, creating it if it does not exist as a system user with its own
// group, no home and no login shell. Nodes on one machine may start at once: useradd locks
// /etc/passwd and fails for all but one of them, so it is retried, looking the user up again
// each time. Without useradd it returns nobody, logging why.
func Dedicated(log *slog.Logger) (*User, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if u, err := user.Lookup(DefaultName); err == nil {
		return parse(u)
	}
	useradd, err := exec.LookPath("useradd")
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if p := filepath.Join(dir, "useradd"); isExec(p) {
				useradd, err = p, nil
				break
			}
		}
	}
	if err != nil {
		nobody, lerr := user.Lookup("nobody")
		if lerr != nil {
			return nil, fmt.Errorf("cannot make the duck user %s (no useradd on this machine) and there is no user nobody to fall back on: create an unprivileged user and pass it with --duck-user", DefaultName)
		}
		log.Warn("no useradd on this machine: ducks run as nobody, which other daemons may share; create a user for them and pass --duck-user NAME", "user", "nobody")
		return parse(nobody)
	}
	var out []byte
	for try := 0; try < 20; try++ {
		cmd := exec.Command(useradd, "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", nologin(), "--comment", "duckraft ducks", DefaultName)
		out, err = cmd.CombinedOutput()
		if u, lerr := user.Lookup(DefaultName); lerr == nil {
			if err == nil {
				log.Info("made a user for the ducks", "user", DefaultName, "uid", u.Uid)
			}
			return parse(u)
		}
		time.Sleep(time.Duration(50+try*25) * time.Millisecond)
	}
	return nil, fmt.Errorf("making the duck user %s with useradd: %v: %s; create an unprivileged user and pass it with --duck-user", DefaultName, err, strings.TrimSpace(string(out)))
}

func nologin() string {
	for _, p := range []string{"/usr/sbin/nologin", "/sbin/nologin"} {
		if isExec(p) {
			return p
		}
	}
	return "/bin/false"
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// CheckReach says why u cannot reach path (a folder of the node's, root's), or nil if it can
// traverse every folder on the way: root's folders are traversed by their "others" bits, or by
// their group's when the group is u's.
func (u *User) CheckReach(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	// Every folder in the way, named at once: one at a time took a round of fixing each (found
	// by following the README as root: ~/duckraft, then ~).
	var blocked, how []string
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			break
		}
		m := fi.Mode().Perm()
		can := m&0o001 != 0 || (st.Gid == u.GID && m&0o010 != 0) || (st.Uid == u.UID && m&0o100 != 0)
		if !can {
			blocked = append([]string{dir}, blocked...)
			how = append([]string{fmt.Sprintf("%s (mode %04o, uid %d, gid %d)", dir, m, st.Uid, st.Gid)}, how...)
		}
		if dir == "/" || dir == filepath.Dir(dir) {
			break
		}
	}
	if len(blocked) == 0 {
		return nil
	}
	return fmt.Errorf("the duck user %s cannot reach %s: %s %s not let it through; give traversal only (chmod o+x %s), or choose a --data-dir it can reach, such as /var/lib/duckraft/NAME",
		u, path, strings.Join(how, ", "), map[bool]string{true: "does", false: "do"}[len(blocked) == 1], strings.Join(blocked, " "))
}

// Choose returns who a node's ducks run as: the user name (which must exist) when given, else
// the dedicated user, when the node runs as root; nil (the node's own user) when it does not,
// where a name is an error: setuid needs root.
func Choose(name string, log *slog.Logger) (*User, error) {
	if os.Geteuid() != 0 {
		if name != "" {
			return nil, fmt.Errorf("--duck-user %s: %w (it starts ducks with that user's credentials, which only root may do); leave it out, and ducks run as the node's own user (`status` says what that means)", name, ErrNotRoot)
		}
		return nil, nil
	}
	if name != "" {
		return Lookup(name)
	}
	return Dedicated(log)
}

// DefaultDataDir is a root node's default data folder: ~/.duckraft/NAME, as for anyone, when u
// can pass through home (~/.duckraft is then made 0711, traversed, not listed); else, as root's
// home usually is closed (0700), DataRoot/NAME, where daemons keep theirs.
func DefaultDataDir(home, name string, u *User) (string, error) {
	base := filepath.Join(home, ".duckraft")
	if _, err := os.Stat(filepath.Join(base, name)); err == nil {
		return filepath.Join(base, name), nil // keep where its data is; Start says if u cannot reach it
	}
	if u.CheckReach(base) != nil {
		base = DataRoot
	}
	if err := os.Mkdir(base, 0o711); err != nil && !os.IsExist(err) {
		return "", err
	}
	return filepath.Join(base, name), nil
}
