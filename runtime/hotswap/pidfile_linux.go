package hotswap

import (
	"os"
	"syscall"
)

// fallocKeepSize is FALLOC_FL_KEEP_SIZE: the block is allocated, the file stays as long as
// what is written.
const fallocKeepSize = 1

// allocateAhead allocates the first block of f, a file about to get a few bytes; an error
// (a file system without fallocate) leaves it to be allocated later.
func allocateAhead(f *os.File) {
	syscall.Fallocate(int(f.Fd()), fallocKeepSize, 0, 4096)
}
