// Package duckraft carries, inside every node binary, the Go source a duck build needs besides the
// duck's own bundle: the duck SDK and the third-party module it imports. A node builds ducks with
// nothing but a Go toolchain (no network, no module cache, no checkout of this repository), so
// runtime/build writes these files out as the duck module's vendor/ folder.
package duckraft

import "embed"

// ModulePath is this module's path, under which ducks import the SDK.
const ModulePath = "github.com/duckraft/duckraft"

// SDK is the duck SDK's source, embedded straight from runtime/hotswap so the repository holds one
// copy of it and every node builds ducks against the SDK it was itself built with. Paths are
// relative to the module root; runtime/build leaves the _test.go files out.
//
//go:embed runtime/hotswap/*.go
var SDK embed.FS

// SDKVersion is the version ducks require the SDK at. The vendored copy is the only one a duck
// build ever sees, so the number only has to be the same in go.mod and vendor/modules.txt.
const SDKVersion = "v0.0.0"

// SDKGo is the go line of this module's go.mod.
const SDKGo = "1.26"

// Tableflip is a byte-for-byte (after gofmt) copy of the non-test, non-Windows .go files and the LICENSE of
// github.com/cloudflare/tableflip at TableflipVersion, under TableflipDir. go:embed cannot reach
// the module cache, hence the copy. The leading underscore keeps the go tool from treating the
// copy as a package of this module, so ./... neither builds nor vets it; go:embed still accepts
// the directory because the pattern names it explicitly. sources_test.go checks the copy against
// the module cache.
//
//go:embed third_party/_tableflip/*.go third_party/_tableflip/LICENSE
var Tableflip embed.FS

// TableflipDir is the directory inside Tableflip that holds the copy.
const TableflipDir = "third_party/_tableflip"

// TableflipVersion is the tableflip version copied into Tableflip; it matches go.mod.
const TableflipVersion = "v1.2.3"

// TableflipGo is the go line of tableflip's own go.mod at TableflipVersion.
const TableflipGo = "1.14"

// Demo holds the two duck versions the demo deploys (the quacking duck and its louder v2), so
// `node demo` works from any folder, even from an installed binary.
//
//go:embed duck/main.go testdata/duck-v2/main.go
var Demo embed.FS
