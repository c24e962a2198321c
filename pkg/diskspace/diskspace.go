// Package diskspace measures the filesystem that holds a path: its size
// and the bytes still free for an unprivileged writer. The content caches
// of dfdaemon and the supernode's CDN evict by it.
package diskspace

// Space is a filesystem's size and its free bytes.
type Space struct {
	Total, Free int64
}

// Used is the bytes in use, by anything, on the filesystem.
func (s Space) Used() int64 { return s.Total - s.Free }
