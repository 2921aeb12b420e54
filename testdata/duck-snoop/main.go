// Command duck-snoop is a hostile duck for tests: it tries to reach what belongs to its node
// (the node's memory and environment through /proc, the cookie file, the data folder, the build
// folders and the Go build cache) and to write what a node later executes (its own binary, its
// folder, the build folders), and reports each outcome on GET /. It also does what every duck
// needs (its state folder, its version file), so a test can tell refusal from a broken duck.
//
// It prints a line full of terminal control sequences at start, for the test that `logs` shows
// them escaped.
//
// Paths come from the environment: DUCK_SNOOP_COOKIE (the cookie file), DUCK_SNOOP_DATA (the
// node's data folder), DUCK_SNOOP_SHARED (the shared build folder), DUCK_SNOOP_GOCACHE.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/duckraft/duckraft/runtime/hotswap"
)

// Attempt is one thing the duck tried.
type Attempt struct {
	What string `json:"what"`
	Path string `json:"path"`
	// Must says whether a duck needs this to work (the control) or must be refused.
	Must string `json:"must"` // "work" or "fail"
	Err  string `json:"err,omitempty"`
}

type state struct{}

// Escapes is what the duck prints at start: colour, a window title (OSC), a screen clear, a
// bidi override, a C1 control.
const Escapes = "snoop: \x1b[31mred\x1b[0m \x1b]0;owned\x07 \x1b[2J \u202e \u009b"

func main() {
	fmt.Println(Escapes)
	err := hotswap.Run(hotswap.Config[state]{Schema: 1}, func(d *hotswap.Duck[state]) error {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(snoop())
		})
		return d.Serve(mux)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "duck-snoop:", err)
		os.Exit(1)
	}
}

func snoop() []Attempt {
	var out []Attempt
	try := func(what, path, must string, f func(string) error) {
		a := Attempt{What: what, Path: path, Must: must}
		if err := f(path); err != nil {
			a.Err = err.Error()
		}
		out = append(out, a)
	}
	read := func(p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.Read(make([]byte, 1))
		return err
	}
	list := func(p string) error { _, err := os.ReadDir(p); return err }
	create := func(p string) error {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
		if err != nil {
			return err
		}
		f.Close()
		return os.Remove(p)
	}
	write := func(p string) error {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		return f.Close()
	}

	node := strconv.Itoa(os.Getppid()) // the node started the first generation
	self, _ := os.Executable()         // the stable path, data/ducks/<id>/duck
	duckDir := filepath.Dir(self)
	wd, _ := os.Getwd()

	try("read the node's environment", "/proc/"+node+"/environ", "fail", read)
	try("open the node's memory", "/proc/"+node+"/mem", "fail", read)
	try("list the node's descriptors", "/proc/"+node+"/fd", "fail", list)
	try("read the cookie file", os.Getenv("DUCK_SNOOP_COOKIE"), "fail", read)
	data := os.Getenv("DUCK_SNOOP_DATA")
	try("list the data folder", data, "fail", list)
	try("read the node's record", filepath.Join(data, "node.json"), "fail", read)
	try("read the node's ducks record", filepath.Join(data, "local.json"), "fail", read)
	try("list the Raft folder", filepath.Join(data, "raft"), "fail", list)
	try("list the bundles", filepath.Join(data, "bundles"), "fail", list)
	try("list the node's build folder", filepath.Join(data, "builds"), "fail", list)
	try("write in the node's build folder", filepath.Join(data, "builds", "planted"), "fail", create)
	try("list the ducks folder", filepath.Join(data, "ducks"), "fail", list)
	try("write its own binary", self, "fail", write)
	try("plant a binary beside its own (rename over it)", filepath.Join(duckDir, "duck.planted"), "fail", create)
	try("write its version file", filepath.Join(duckDir, "version"), "fail", write)
	try("list the shared build folder", os.Getenv("DUCK_SNOOP_SHARED"), "fail", list)
	try("write in the shared build folder", filepath.Join(os.Getenv("DUCK_SNOOP_SHARED"), "planted"), "fail", create)
	try("list the Go build cache", os.Getenv("DUCK_SNOOP_GOCACHE"), "fail", list)
	try("write in the Go build cache", filepath.Join(os.Getenv("DUCK_SNOOP_GOCACHE"), "planted"), "fail", create)

	try("read its version file", filepath.Join(duckDir, "version"), "work", read)
	try("write in its own folder", filepath.Join(wd, "scratch"), "work", create)
	try("read its state folder", wd, "work", list)
	try("read its own environment", "/proc/self/environ", "work", read)
	return out
}
