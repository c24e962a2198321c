//go:build unix

package cdn

import (
	"io/fs"
	"syscall"
)

// fileID returns the device and inode numbers of a file; ok is false when
// the platform does not say.
func fileID(fi fs.FileInfo) (dev, ino uint64, ok bool) {
	if st, isStat := fi.Sys().(*syscall.Stat_t); isStat {
		return uint64(st.Dev), uint64(st.Ino), true //nolint:unconvert // Dev is not uint64 everywhere
	}
	return 0, 0, false
}
