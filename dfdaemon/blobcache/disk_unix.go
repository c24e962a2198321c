//go:build unix

package blobcache

import "golang.org/x/sys/unix"

// statfs measures the filesystem holding path: its size, and the space an
// unprivileged writer may still use.
func statfs(path string) (diskSpace, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return diskSpace{}, err
	}
	bs := int64(st.Bsize)
	return diskSpace{total: int64(st.Blocks) * bs, free: int64(st.Bavail) * bs}, nil
}
