package local

import (
	"os"
	"syscall"
)

// openDirect opens path a second time for I/O that bypasses the page cache
// (O_DIRECT). A filesystem that does not support it returns an error, and
// the writer keeps to buffered I/O.
func openDirect(path string, flag int) (*os.File, error) {
	return os.OpenFile(path, flag|syscall.O_DIRECT, 0)
}
