package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/duckraft/duckraft/runtime/duckuser"
)

// openToDucks lets the duck user u traverse the data folder to ducks/ and nothing else: the folder
// becomes 0710 with u's group (traverse, not list), and every other entry in it loses its group
// and others bits, so that knowing a name (raft/, builds/, node.json) gets the duck nowhere.
// builds/ is made now, private, rather than by the first build with a looser mode.
func openToDucks(dataDir string, u *duckuser.User) error {
	if err := os.Mkdir(filepath.Join(dataDir, "builds"), 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	ents, err := os.ReadDir(dataDir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() == "ducks" || e.Type()&os.ModeSymlink != 0 {
			continue
		}
		p := filepath.Join(dataDir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if m := fi.Mode().Perm(); m&0o077 != 0 {
			if err := os.Chmod(p, m&0o700); err != nil {
				return err
			}
		}
	}
	if err := os.Lchown(dataDir, os.Geteuid(), int(u.GID)); err != nil {
		return fmt.Errorf("data folder: giving it the duck user's group: %w", err)
	}
	return os.Chmod(dataDir, 0o710)
}

// closeGoCache makes the Go build cache private (0700), which go itself leaves at 0755: a duck
// that could read it learns every build's inputs, and one that could write it poisons the
// builds that trust it. Only a cache this user owns is changed.
func closeGoCache() error {
	dir := os.Getenv("GOCACHE")
	if dir == "off" {
		return nil
	}
	if dir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return nil // the builder puts it under builds/, which is private
		}
		dir = filepath.Join(cache, "go-build")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("Go build cache %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("Go build cache %s belongs to uid %d, not to this node's user: builds would trust files another user can change; set GOCACHE to a folder of this user's", dir, st.Uid)
	}
	return os.Chmod(dir, 0o700)
}

// duckUser describes who ducks run as, for `status`.
func (a *Agent) duckUser() string {
	if u := a.cfg.DuckUser; u != nil {
		return u.String()
	}
	return fmt.Sprintf("shared with the node (uid %d)", os.Getuid())
}
