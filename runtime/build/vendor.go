package build

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/duckraft/duckraft"
)

// duckModule is the module path every duck is built as; its go line is the language version ducks
// are compiled with.
const (
	duckModule = "duck"
	duckGo     = "1.26"
)

// module is one module whose source travels inside the node binary and is written to a duck's
// vendor/ folder, so that building a duck needs no network and no module cache.
type module struct {
	path    string // module path, e.g. github.com/cloudflare/tableflip
	version string
	goLine  string // the go version from the module's own go.mod
	files   fs.FS  // the module's root
}

// vendored lists what a duck may import besides the standard library.
func vendored() ([]module, error) {
	tf, err := fs.Sub(duckraft.Tableflip, duckraft.TableflipDir)
	if err != nil {
		return nil, err
	}
	return []module{
		{path: "github.com/cloudflare/tableflip", version: duckraft.TableflipVersion, goLine: duckraft.TableflipGo, files: tf},
		{path: duckraft.ModulePath, version: duckraft.SDKVersion, goLine: duckraft.SDKGo, files: duckraft.SDK},
	}, nil
}

// writeVendor lays dir out as the module "duck" with every vendored module under vendor/, in the
// form `go build -mod=vendor` checks: go.mod requires each module, and vendor/modules.txt names
// each one with its version, "## explicit; go X" and the packages it provides.
func writeVendor(dir string) error {
	mods, err := vendored()
	if err != nil {
		return err
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].path < mods[j].path })

	var gomod, modtxt strings.Builder
	fmt.Fprintf(&gomod, "module %s\n\ngo %s\n\nrequire (\n", duckModule, duckGo)
	for _, m := range mods {
		fmt.Fprintf(&gomod, "\t%s %s\n", m.path, m.version)
		pkgs, err := copyModule(m, filepath.Join(dir, "vendor", filepath.FromSlash(m.path)))
		if err != nil {
			return fmt.Errorf("vendor %s: %w", m.path, err)
		}
		fmt.Fprintf(&modtxt, "# %s %s\n## explicit; go %s\n", m.path, m.version, m.goLine)
		for _, p := range pkgs {
			fmt.Fprintf(&modtxt, "%s\n", p)
		}
	}
	gomod.WriteString(")\n")
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "vendor", "modules.txt"), []byte(modtxt.String()), 0o644)
}

// copyModule writes m's files, without tests, under dest and returns the import paths of the
// packages it holds, sorted.
func copyModule(m module, dest string) ([]string, error) {
	pkgs := make(map[string]bool)
	err := fs.WalkDir(m.files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, "_test.go") {
			return err
		}
		data, err := fs.ReadFile(m.files, p)
		if err != nil {
			return err
		}
		out := filepath.Join(dest, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(out, data, 0o644); err != nil {
			return err
		}
		if strings.HasSuffix(p, ".go") {
			pkgs[path.Join(m.path, path.Dir(p))] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	list := make([]string, 0, len(pkgs))
	for p := range pkgs {
		list = append(list, p)
	}
	sort.Strings(list)
	return list, nil
}

// sdkPrint is a short hash of every vendored file: a binary built by a node carrying another SDK
// is another program, so the host's shared build folder keys its binaries by it too.
var sdkPrint = sync.OnceValue(func() string {
	h := sha256.New()
	mods, err := vendored()
	if err != nil {
		return "unknown"
	}
	for _, m := range mods {
		fs.WalkDir(m.files, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := fs.ReadFile(m.files, p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%s/%s %d\n", m.path, p, len(b))
			h.Write(b)
			return nil
		})
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
})
