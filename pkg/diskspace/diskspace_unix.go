//go:build unix

package diskspace

import "syscall"

// Of measures the filesystem holding path.
func Of(path string) (Space, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return Space{}, err
	}
	bs := int64(st.Bsize) //nolint:unconvert // Bsize's type differs by OS
	return Space{Total: int64(st.Blocks) * bs, Free: int64(st.Bavail) * bs}, nil
}
