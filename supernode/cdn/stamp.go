package cdn

import "io/fs"

// fileStamp identifies the state of a committed blob's file, as the content
// store's own check does (pkg/content/local/verify.go): which file (device
// and inode), its size and its modification time. A write, a truncation or
// a replaced file changes it; a write that restores the modification time
// does not, which the scrub and peers' corrupt reports are for.
type fileStamp struct {
	dev, ino uint64
	size     int64
	mtime    int64 // Unix nanoseconds
}

// statter is what a committed blob's reader offers when it reads a file (a
// local store's reader is an *os.File).
type statter interface {
	Stat() (fs.FileInfo, error)
}

// stampOf returns the stamp of the file r reads; ok is false when r does not
// read a file or the platform does not identify files.
func stampOf(r any) (fileStamp, bool) {
	s, ok := r.(statter)
	if !ok {
		return fileStamp{}, false
	}
	fi, err := s.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return fileStamp{}, false
	}
	dev, ino, ok := fileID(fi)
	if !ok {
		return fileStamp{}, false
	}
	return fileStamp{dev: dev, ino: ino, size: fi.Size(), mtime: fi.ModTime().UnixNano()}, true
}
