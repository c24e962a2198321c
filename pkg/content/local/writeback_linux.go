package local

import (
	"os"
	"syscall"
)

// syncFileRangeWrite is SYNC_FILE_RANGE_WRITE: start writing the dirty
// pages of the range, without waiting for them.
const syncFileRangeWrite = 0x2

// startWriteback asks the kernel to start writing f's dirty pages to disk
// and returns without waiting for the disk.
func startWriteback(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SyncFileRange(int(fd), 0, 0, syncFileRangeWrite)
	}); err != nil {
		return err
	}
	return serr
}
