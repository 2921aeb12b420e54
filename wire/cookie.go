package wire

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/duckraft/duckraft/owned"
)

// CookieEnv names the environment variable a cookie may come from; unlike --cookie it does not
// show in ps.
const CookieEnv = "DUCKRAFT_COOKIE"

// DefaultCookieFile is where a cookie lives when none is given, as Erlang's ~/.erlang.cookie.
func DefaultCookieFile() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no home folder for the default cookie file: %w; pass --cookie-file", err)
	}
	return filepath.Join(home, ".duckraft.cookie"), nil
}

// CookieSource says where a cookie comes from, in the order they win.
type CookieSource struct {
	Flag   string // --cookie, shows in ps
	File   string // --cookie-file
	Create bool   // make the default file at random if it does not exist (node start does)
}

// Load returns the cookie: --cookie, else --cookie-file, else $DUCKRAFT_COOKIE, else the
// default file (made at random, mode 0600, when Create is set).
func (s CookieSource) Load() (string, error) {
	// Spaces around a cookie are a slip of the paste, as in a file, where they were already
	// dropped: the same cookie given with them was refused as another.
	if f := strings.TrimSpace(s.Flag); f != "" {
		return f, nil
	}
	if s.File != "" {
		return ReadCookieFile(s.File)
	}
	if env := strings.TrimSpace(os.Getenv(CookieEnv)); env != "" {
		return env, nil
	}
	path, err := DefaultCookieFile()
	if err != nil {
		return "", err
	}
	c, err := ReadCookieFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !s.Create {
			return "", fmt.Errorf("no cookie: %s does not exist; pass --cookie-file or set %s, or start a node on this machine first (it makes that file)", path, CookieEnv)
		}
		return createCookieFile(path)
	}
	return c, err
}

// ReadCookieFile reads a cookie file, refusing one that others may read, as Erlang does: a
// cookie anyone on the machine can read lets anyone on the machine run code on the cluster.
func ReadCookieFile(path string) (string, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return "", fmt.Errorf("cookie file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 && fi.Mode()&fs.ModeSymlink == 0 {
		return "", fmt.Errorf("cookie file %s is readable by others (mode %04o): run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	// A cookie file someone else made, or a link whose maker chooses what it reads, would make
	// this node prove their cookie: join their cluster, run their code.
	if err := owned.Check(path); err != nil {
		return "", fmt.Errorf("cookie file: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cookie file: %w", err)
	}
	c := strings.TrimSpace(string(b))
	if c == "" {
		return "", fmt.Errorf("cookie file %s is empty: write a secret into it (`node cookie` prints a fresh one), or delete it and start a node to have one made", path)
	}
	return c, nil
}

// NewCookie makes a random cookie: 160 bits, in base32 so that it can be typed and pasted.
func NewCookie() (string, error) {
	raw := make([]byte, 20)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	return base32.StdEncoding.EncodeToString(raw), nil
}

func createCookieFile(path string) (string, error) {
	c, err := NewCookie()
	if err != nil {
		return "", err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another node made it first; use theirs so both agree.
		return ReadCookieFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("create cookie file: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(c + "\n"); err != nil {
		return "", fmt.Errorf("write cookie file: %w", err)
	}
	return c, f.Close()
}
