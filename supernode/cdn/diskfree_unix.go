//go:build unix

package cdn

import "syscall"

// statfs measures the filesystem holding dir: its size, and the bytes an
// unprivileged writer may still use.
func statfs(dir string) (diskSpace, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return diskSpace{}, err
	}
	bs := int64(st.Bsize) //nolint:unconvert // Bsize's type differs by OS
	return diskSpace{total: int64(st.Blocks) * bs, free: int64(st.Bavail) * bs}, nil
}
