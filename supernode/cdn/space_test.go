package cdn

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// seedTask fetches body as a digest task and waits until it succeeded.
func seedTask(t *testing.T, f *fixture, o *origin, body []byte) (taskid.ID, digest.Digest) {
	t.Helper()
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	o.mu.Lock()
	o.body = body
	o.mu.Unlock()
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/" + d.Encoded())})
	require.NoError(t, err)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	return id, d
}

// Past cdn.quota, the least recently used content not in use is evicted
// and its task dropped; content with an upload in flight or a member in
// its task is kept whatever its age.
func TestQuotaEvictsLeastRecentlyUsedNotInUse(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	o := newOrigin(t, &origin{})
	root := t.TempDir()
	f := newFixtureConfig(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"),
		Config{Quota: 9 * mib / 2})
	var ids []taskid.ID
	var ds []digest.Digest
	for i := range 4 {
		id, d := seedTask(t, f, o, blob(uint64(100+i), mib))
		ids, ds = append(ids, id), append(ds, d)
		time.Sleep(20 * time.Millisecond) // distinct access times
	}
	// The oldest is being uploaded, the second has a member.
	h, err := f.cdn.Open(t.Context(), ids[0])
	require.NoError(t, err)
	f.sched.setMembers(ids[1], 1)

	id5, d5 := seedTask(t, f, o, blob(200, mib))
	require.InDelta(t, 1, metricValue(t, f.reg, "damselfly_cdn_evictions_total"), 0)
	for i, d := range ds {
		_, inStore := f.store.Info(t.Context(), d)
		_, known := f.sched.snapshot(ids[i])
		if i == 2 {
			require.Error(t, inStore, "the least recently used content not in use is evicted")
			require.False(t, known, "its task is dropped")
			continue
		}
		require.NoError(t, inStore, "blob %d", i)
		require.True(t, known, "task %d", i)
	}
	_, err = f.store.Info(t.Context(), d5)
	require.NoError(t, err)
	require.NoError(t, h.Close())
	_, ok := f.sched.snapshot(id5)
	require.True(t, ok)
	require.LessOrEqual(t, f.cdn.usage.Load(), int64(9*mib/2))
}

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

// On a disk much smaller than what goes through it, with no quota, every
// fetch succeeds: the CDN evicts by the free-space watermarks, never lets
// the disk pass its high watermark, and never evicts content in use.
func TestSmallDiskWatermarks(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	root := smallDisk(t, 24*mib)
	o := newOrigin(t, &origin{})
	f := newFixtureConfig(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"),
		Config{MinFreeSpace: mib, DiskHighWater: 0.8, DiskLowWater: 0.5})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.cdn.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	// One task in use throughout: an upload is open on it.
	keptID, keptD := seedTask(t, f, o, blob(300, 3*mib))
	h, err := f.cdn.Open(t.Context(), keptID)
	require.NoError(t, err)
	defer h.Close()
	var maxUsed int64
	for i := range 12 {
		id, d := seedTask(t, f, o, blob(uint64(301+i), 3*mib))
		got := readBlob(t, f.store, d)
		require.Equal(t, digest.FromBytes(got), d, "task %d", i)
		var st unix.Statfs_t
		require.NoError(t, unix.Statfs(root, &st))
		used := int64(st.Blocks-st.Bavail) * int64(st.Bsize)
		maxUsed = max(maxUsed, used)
		_, ok := f.sched.snapshot(id)
		require.True(t, ok, fmt.Sprintf("task %d", i))
	}
	require.Positive(t, metricValue(t, f.reg, "damselfly_cdn_evictions_total"))
	require.LessOrEqual(t, maxUsed, int64(24*mib*4/5), "the disk stays under its high watermark")
	_, err = f.store.Info(t.Context(), keptD)
	require.NoError(t, err, "content in use is never evicted")
	_, ok := f.sched.snapshot(keptID)
	require.True(t, ok)
}

// fullOnceStore is a store whose first ingest write finds the disk full.
type fullOnceStore struct {
	content.Store
	failed atomic.Bool
}

func (s *fullOnceStore) Writer(ctx context.Context, ref string) (content.Writer, error) {
	w, err := s.Store.Writer(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &fullOnceWriter{Writer: w, s: s}, nil
}

type fullOnceWriter struct {
	content.Writer
	s *fullOnceStore
}

func (w *fullOnceWriter) WriteAt(p []byte, off int64) (int, error) {
	if w.s.failed.CompareAndSwap(false, true) {
		return 0, &os.PathError{Op: "write", Path: "ingest", Err: syscall.ENOSPC}
	}
	return w.Writer.WriteAt(p, off)
}

// A write that finds the disk full makes room and is retried: the fetch
// succeeds instead of failing its task.
func TestDiskFullDuringFetchRetried(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	o := newOrigin(t, &origin{})
	store := &fullOnceStore{Store: newLocal(t, filepath.Join(root, "content"))}
	f := newFixture(t, o, store, filepath.Join(root, "cdn"))
	body := blob(400, 5<<20)
	_, d := seedTask(t, f, o, body)
	require.True(t, store.failed.Load(), "the disk was full once")
	require.Equal(t, body, readBlob(t, store, d))
}
