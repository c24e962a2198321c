//go:build !unix

package cdn

import "io/fs"

// fileID returns the device and inode numbers of a file; ok is false when
// the platform does not say.
func fileID(fs.FileInfo) (dev, ino uint64, ok bool) { return 0, 0, false }
