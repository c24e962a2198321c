//go:build linux

package blobcache_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/peer"
)

// smallDisk mounts a tmpfs of size bytes for the test, or skips it where
// mounting is not allowed (not root).
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// On a disk much smaller than the quota, pull after pull succeeds: the
// cache evicts by the filesystem's free space (before each download of
// known size makes room for itself), never lets the disk fill, and every
// blob read back is verified.
func TestSmallDiskNeverFills(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	root := smallDisk(t, 48*mib)
	store, err := local.New(filepath.Join(root, "content"))
	require.NoError(t, err)
	n := startNodeOn(t, sn, store, blobcache.Config{CheckInterval: time.Hour, DiskHighWater: 0.8, DiskLowWater: 0.6})

	for i := range 8 {
		d, u, want := o.add(t, 8*mib)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		r, err := n.cache.Open(ctx, peer.Request{URL: u, Digest: d, Size: int64(len(want)), BackToSource: true}, 0, -1)
		require.NoError(t, err, "pull %d", i)
		got, err := io.ReadAll(r)
		require.NoError(t, r.Close())
		cancel()
		require.NoError(t, err, "pull %d", i)
		require.Equal(t, want, got, "pull %d", i)

		var st unix.Statfs_t
		require.NoError(t, unix.Statfs(root, &st))
		used := float64(st.Blocks-st.Bavail) / float64(st.Blocks)
		require.LessOrEqual(t, used, 0.8+0.01, "pull %d: the disk stays under the high water mark", i)
	}
}
