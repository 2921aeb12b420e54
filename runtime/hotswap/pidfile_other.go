//go:build !linux

package hotswap

import "os"

// allocateAhead does nothing where there is no fallocate(2): the block is allocated when the
// file system chooses.
func allocateAhead(*os.File) {}
