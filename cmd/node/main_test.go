package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/duckraft/duckraft/localcluster"
)

// TestMain makes the test binary the duckraft command as well: a script's `exec duckraft` runs
// main in a process of its own, exactly as a user's shell would.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"duckraft": main})
}

// TestCLI runs the scripts in testdata/script: what a user types, what they see, and the exit
// status a shell script would branch on.
func TestCLI(t *testing.T) {
	// A script's HOME is /no-home, so the nodes the demo starts would build ducks with a cold
	// build cache (the standard library from scratch: most of a minute). Share the user's.
	gocache, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOCACHE: %v", err)
	}
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("testdata", "script"),
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Setenv("GOCACHE", strings.TrimSpace(string(gocache)))
			// A root node runs its ducks as a user of their own, who must pass through the
			// script's folders (never list them) to reach its own.
			for _, dir := range []string{env.WorkDir, filepath.Dir(env.WorkDir)} {
				if err := os.Chmod(dir, 0o711); err != nil {
					return err
				}
			}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exits":       cmdExits,
			"json":        cmdJSON,
			"startnode":   cmdStartNode,
			"ducksources": cmdDuckSources,
			"once":        cmdOnce,
		},
	})
}

// exits N PROG ARGS... runs PROG and checks that it exits with status N: the scripts tell a
// usage error (2) from a failure (1), which `! exec` cannot.
func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits N PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		got = ee.ExitCode()
	case err != nil:
		ts.Fatalf("%s: %v", args[1], err)
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
}

// json FILE PATH [VALUE] checks that FILE (stdout, say) holds JSON with a value at PATH, such as
// nodes.0.member.name, and that it prints as VALUE when given. With !, PATH must be absent, or
// present with a value other than VALUE.
func cmdJSON(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 && len(args) != 3 {
		ts.Fatalf("usage: json FILE PATH [VALUE]")
	}
	var doc any
	if err := json.Unmarshal([]byte(ts.ReadFile(args[0])), &doc); err != nil {
		ts.Fatalf("%s is not JSON: %v", args[0], err)
	}
	v, err := jsonAt(doc, args[1])
	if len(args) == 2 {
		switch {
		case neg && err == nil:
			ts.Fatalf("%s has %s = %s; want none", args[0], args[1], jsonText(v))
		case !neg && err != nil:
			ts.Fatalf("%s: %v", args[0], err)
		}
		return
	}
	if err != nil {
		ts.Fatalf("%s: %v", args[0], err)
	}
	if got := jsonText(v); (got == args[2]) == neg {
		ts.Fatalf("%s has %s = %s; want %s%s", args[0], args[1], got, map[bool]string{true: "anything but ", false: ""}[neg], args[2])
	}
}

// jsonAt follows a dotted path of object keys and array indexes.
func jsonAt(doc any, path string) (any, error) {
	v := doc
	for _, key := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = x[key]; !ok {
				return nil, fmt.Errorf("no %q in %s", key, path)
			}
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(x) {
				return nil, fmt.Errorf("no element %q in %s: the array has %d", key, path, len(x))
			}
			v = x[i]
		default:
			return nil, fmt.Errorf("%s: %q is inside a %T, not an object or array", path, key, v)
		}
	}
	return v, nil
}

// jsonText prints strings bare, everything else as JSON, so that a number is 1, not 1e+00.
func jsonText(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// startnode NAME [FLAGS...] starts a node with the cookie in $WORK/cookie, waits for its ready
// line and sets $API_NAME to its API address. The node stops (SIGTERM, then its ducks) when the
// script ends.
func cmdStartNode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 {
		ts.Fatalf("usage: startnode NAME [FLAGS...]")
	}
	bin, err := exec.LookPath("duckraft")
	ts.Check(err)
	cookie := strings.TrimSpace(ts.ReadFile("cookie"))
	c := &localcluster.Cluster{Bin: bin, Root: ts.MkAbs("nodes"), Cookie: cookie}
	ts.Check(os.MkdirAll(c.Root, 0o711))
	n, err := c.Start(args[0], args[1:]...)
	ts.Check(err)
	ts.Defer(func() {
		if err := c.StopAll(20 * time.Second); err != nil {
			ts.Logf("stopping node %s: %v\n%s", n.Name, err, n.Log())
		}
	})
	ts.Setenv("API_"+strings.ToUpper(n.Name), n.API)
}

// ducksources DIR writes the demo's two duck versions to DIR/src/duck and DIR/src/duck-v2.
func cmdDuckSources(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: ducksources DIR")
	}
	dir := ts.MkAbs(args[0])
	v1, v2, err := demoSources(dir)
	ts.Check(err)
	ts.Logf("ducks in %s and %s", v1, v2)
}

// once FILE REGEXP checks that the lines of FILE that match REGEXP are each there once, and
// that there is at least one.
func cmdOnce(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: once FILE REGEXP")
	}
	re, err := regexp.Compile(args[1])
	ts.Check(err)
	seen := map[string]int{}
	for _, line := range strings.Split(ts.ReadFile(args[0]), "\n") {
		if re.MatchString(line) {
			seen[line]++
		}
	}
	if len(seen) == 0 {
		ts.Fatalf("no line of %s matches %s", args[0], args[1])
	}
	for line, n := range seen {
		if n > 1 {
			ts.Fatalf("%s prints %q %d times", args[0], line, n)
		}
	}
}
