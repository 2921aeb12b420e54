package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recorder is a program that notes each run in a file and fails, standing in for a C compiler
// or a -toolexec wrapper a build must never run.
func recorder(t *testing.T, dir, name string) (path string, ran func() bool) {
	t.Helper()
	path = filepath.Join(dir, name)
	marker := filepath.Join(dir, name+".ran")
	script := fmt.Sprintf("#!/bin/sh\necho \"$@\" >> %q\nexit 1\n", marker)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, func() bool {
		_, err := os.Stat(marker)
		return err == nil
	}
}

// A duck that uses cgo does not build, and no C compiler runs, even when the node's own
// environment turns cgo on, names a C compiler and asks for a -toolexec wrapper: the builder sets
// CGO_ENABLED=0 and its own GOFLAGS whatever the node inherited.
func TestCgoDuckIsRefusedAndRunsNoCCompiler(t *testing.T) {
	goBin := realGo(t)
	tools := t.TempDir()
	cc, ccRan := recorder(t, tools, "gcc")
	recorder(t, tools, "cc")
	recorder(t, tools, "clang")
	wrap, wrapRan := recorder(t, tools, "toolexec")
	t.Setenv("PATH", tools+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("CGO_ENABLED", "1")
	t.Setenv("CC", cc)
	t.Setenv("GOFLAGS", "-toolexec="+wrap)

	for name, files := range map[string]map[string]string{
		"only cgo": {"main.go": `package main

// #include <stdio.h>
// static void quack(void) { puts("quack from C"); }
import "C"

func main() { C.quack() }
`},
		"cgo beside Go": {
			"main.go": "package main\n\nfunc main() { quack() }\n",
			"quack.go": `package main

// static void quack_c(void) {}
import "C"

func quack() { C.quack_c() }
`},
	} {
		t.Run(name, func(t *testing.T) {
			b := pack(t, files)
			builder := &Builder{Dir: t.TempDir(), GoBin: goBin}
			_, err := builder.Build(context.Background(), b.ID, b.Data)
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("Build = %v, want a *CompileError", err)
			}
			// The go command says why in its own words: with cgo off, a file importing "C" is not
			// part of the build, so either nothing is left or what it defined is missing.
			if !strings.Contains(ce.Output, "build constraints exclude all Go files") && !strings.Contains(ce.Output, "undefined: quack") {
				t.Errorf("the error does not say the cgo file is left out:\n%s", ce.Output)
			}
			if ccRan() {
				t.Error("the build ran a C compiler")
			}
			if _, ok := builder.Binary(b.ID); ok {
				t.Error("a cgo duck left a binary in the cache")
			}
		})
	}

	// The same environment does not stop a pure Go duck building, and the wrapper never runs.
	b := pack(t, map[string]string{"main.go": tableflipDuck})
	builder := &Builder{Dir: t.TempDir(), GoBin: goBin}
	if _, err := builder.Build(context.Background(), b.ID, b.Data); err != nil {
		t.Fatalf("a pure Go duck did not build in that environment: %v", err)
	}
	if wrapRan() {
		t.Error("the build ran the node environment's -toolexec wrapper")
	}
	if ccRan() {
		t.Error("the build ran a C compiler")
	}
}
