// Package owned refuses the files and folders a node trusts (its data folder, the cookie file,
// the shared build folder) when someone else could have planted them or can change them: a
// folder another user made first, a symbolic link whose maker chooses its target, a mode that
// lets the group or others write. A node executes what these folders hold.
package owned

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Check refuses path unless it is this user's own, reached without a symbolic link at its last
// step, and writable by nobody else.
func Check(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(path)
		return fmt.Errorf("%s is a symbolic link (to %s): refused, since whoever made the link chooses what it points to; use a real path you made", path, target)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to this user (uid %d): someone else made it and may have put files in it; remove it, or choose a path under your home folder", path, st.Uid, os.Geteuid())
	}
	if m := fi.Mode().Perm(); m&0o022 != 0 {
		return fmt.Errorf("%s is writable by its group or others (mode %04o): anyone who can write it can plant files a node trusts; check its contents, then chmod go-w %s", path, m, path)
	}
	return nil
}

// Dir makes the folder path (mode 0700) if it does not exist, then checks it and makes it
// private to this user. Folders it makes above path may be passed through, not listed (0711):
// a root node's ducks run as a user of their own that must reach their binary below path, and a
// parent made 0700 here was then reported as one that does not let them through.
func Dir(path string) error {
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(path)), 0o711); err != nil {
		return err
	}
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := Check(path); err != nil {
		return err
	}
	return os.Chmod(path, 0o700)
}
