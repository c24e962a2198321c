package cdn

import (
	"io/fs"

	"github.com/damselfly/damselfly/pkg/content/local"
)

// fileStamp identifies the state of a committed blob's file, as the content
// store's own check does (local.Stamp: device, inode, size, modification
// time). A write, a truncation or a replaced file changes it; a write that
// restores the modification time does not, which the scrub and peers'
// corrupt reports are for.
type fileStamp = local.Stamp

// statter is what a committed blob's reader offers when it reads a file (a
// local store's reader is an *os.File).
type statter interface {
	Stat() (fs.FileInfo, error)
}

// stampOf returns the stamp of the file r reads; ok is false when r does not
// read a regular file.
func stampOf(r any) (fileStamp, bool) {
	s, ok := r.(statter)
	if !ok {
		return fileStamp{}, false
	}
	fi, err := s.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return fileStamp{}, false
	}
	return local.StampOf(fi), true
}
