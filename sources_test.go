package duckraft

import (
	"bytes"
	"go/format"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestTableflipCopyMatchesModuleCache proves third_party/_tableflip is tableflip as released, not
// an edited copy: every non-test, non-Windows .go file and the LICENSE, byte for byte after gofmt.
func TestTableflipCopyMatchesModuleCache(t *testing.T) {
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Skipf("cannot ask the go command for GOMODCACHE: %v", err)
	}
	orig := filepath.Join(strings.TrimSpace(string(out)), "github.com", "cloudflare", "tableflip@"+TableflipVersion)
	if _, err := os.Stat(orig); err != nil {
		t.Skipf("tableflip %s is not in the module cache (%v); run go mod download github.com/cloudflare/tableflip to check the copy", TableflipVersion, err)
	}

	var want []string
	entries, err := os.ReadDir(orig)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		n := e.Name()
		if n == "LICENSE" || strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") && !strings.HasSuffix(n, "_windows.go") {
			want = append(want, n)
		}
	}
	var got []string
	copies, err := fs.ReadDir(Tableflip, TableflipDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range copies {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Errorf("embedded files %v, want %v", got, want)
	}
	for _, n := range want {
		a, err := fs.ReadFile(Tableflip, TableflipDir+"/"+n)
		if err != nil {
			t.Error(err)
			continue
		}
		b, err := os.ReadFile(filepath.Join(orig, n))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(n, ".go") {
			// The copy is gofmt'd (upstream's doc.go is not) so the repository stays gofmt-clean;
			// otherwise it is byte for byte.
			if b, err = format.Source(b); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s/%s differs from %s", TableflipDir, n, filepath.Join(orig, n))
		}
	}

	gomod, err := os.ReadFile(filepath.Join(orig, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^go ` + regexp.QuoteMeta(TableflipGo) + `$`).Match(gomod) {
		t.Errorf("tableflip's go.mod has no line \"go %s\":\n%s", TableflipGo, gomod)
	}
}

// TestVersionsMatchGoMod keeps the constants ducks are built with in step with this module's go.mod.
func TestVersionsMatchGoMod(t *testing.T) {
	gomod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"module " + ModulePath + "\n", "\ngo " + SDKGo + "\n", "github.com/cloudflare/tableflip " + TableflipVersion} {
		if !bytes.Contains(gomod, []byte(want)) {
			t.Errorf("go.mod does not contain %q", want)
		}
	}
}
