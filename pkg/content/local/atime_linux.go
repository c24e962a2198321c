package local

import (
	"io/fs"
	"syscall"
	"time"
)

// accessTime returns the file's access time, or its modification time when
// the platform does not say.
func accessTime(fi fs.FileInfo) time.Time {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return fi.ModTime()
}

// fileID returns the file's device and inode numbers, zeros when the platform does not say.
func fileID(fi fs.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), uint64(st.Ino) // not uint64 on every Linux architecture
	}
	return 0, 0
}
