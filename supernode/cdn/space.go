package cdn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/diskspace"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// The disk never fills. Committed content is evicted, least recently used
// first (the store marks a blob accessed whenever it is opened), when the
// store passes Config.Quota (down to quotaLowWater of it) or the data
// directory's filesystem passes Config.DiskHighWater (down to
// DiskLowWater) or would keep less than Config.MinFreeSpace. Content in use
// is never evicted: a task of it being fetched, a task of it with members
// in the scheduler, or an upload of it in flight. An evicted blob's tasks
// are dropped from the scheduler, so their peers register again and the
// next registration fetches the content again. Quota and watermarks are
// soft (content in use may keep the store above them); MinFreeSpace is
// hard: a fetch that would pass it once nothing more can be evicted fails.

// noRoomBackoff is how long checkSpace does not try to evict again after
// an eviction found nothing to evict.
const noRoomBackoff = time.Second

// MemberCounter is the optional part of a Scheduler that tells how many
// members a task has. Without it, the CDN counts only its own fetches and
// uploads as use of content.
type MemberCounter interface {
	Members(ctx context.Context, taskID taskid.ID) (int, error)
}

// checkSpace makes room for n more bytes in the store and returns an error
// when writing them would still leave less than Config.MinFreeSpace free.
// Where the free space cannot be read, only Config.MaxSourceSize and
// Config.Quota bound a fetch.
func (c *CDN) checkSpace(ctx context.Context, n int64) error {
	ds, err := diskspace.Of(c.cfg.Dir)
	if c.overLimits(ds, err == nil, n) && time.Now().UnixNano() >= c.noRoomUntil.Load() {
		if c.makeRoom(ctx, n) == 0 {
			// Everything left is in use: do not list the store again
			// for every piece.
			c.noRoomUntil.Store(time.Now().Add(noRoomBackoff).UnixNano())
		}
		ds, err = diskspace.Of(c.cfg.Dir)
	}
	c.metrics.diskFree.Set(float64(ds.Free))
	if err != nil {
		return nil //nolint:nilerr // unknown free space bounds nothing
	}
	if ds.Free-n < int64(c.cfg.MinFreeSpace) {
		return fmt.Errorf("cdn data directory has %d bytes free: %d more would leave less than cdn.minFreeSpace (%s), and no content not in use is left to evict", ds.Free, n, c.cfg.MinFreeSpace)
	}
	return nil
}

// overLimits reports whether n more bytes pass the quota, the high
// watermark or the minimum free space.
func (c *CDN) overLimits(ds diskspace.Space, known bool, n int64) bool {
	if q := int64(c.cfg.Quota); q > 0 && c.usage.Load()+c.fetching()+n > q {
		return true
	}
	if !known || ds.Total <= 0 {
		return false
	}
	return ds.Free-n < int64(c.cfg.MinFreeSpace) || float64(ds.Total-ds.Free+n) > c.cfg.DiskHighWater*float64(ds.Total)
}

// makeRoom evicts committed content not in use, least recently used first,
// until n more bytes fit under the quota's low water, the disk's low
// watermark and the minimum free space, or nothing evictable is left. One
// eviction runs at a time. It returns the number of blobs evicted.
func (c *CDN) makeRoom(ctx context.Context, n int64) (evicted int) {
	c.evictMu.Lock()
	defer c.evictMu.Unlock()
	var blobs []content.Info
	err := c.store.Walk(ctx, func(i content.Info) error {
		blobs = append(blobs, i)
		return nil
	})
	if err != nil {
		c.log.Warn("list content to evict", zap.Error(err))
		return 0
	}
	var usage int64
	for _, b := range blobs {
		usage += b.Size
	}
	c.setUsage(usage)
	slices.SortFunc(blobs, func(a, b content.Info) int { return a.AccessedAt.Compare(b.AccessedAt) })
	byDigest := c.cache.urlTasks()
	done := func() bool {
		if q := int64(c.cfg.Quota); q > 0 && float64(c.usage.Load()+c.fetching()+n) > quotaLowWater*float64(q) {
			return false
		}
		ds, err := diskspace.Of(c.cfg.Dir)
		if err != nil || ds.Total <= 0 {
			return true
		}
		return ds.Free-n >= int64(c.cfg.MinFreeSpace) && float64(ds.Total-ds.Free+n) <= c.cfg.DiskLowWater*float64(ds.Total)
	}
	for _, b := range blobs {
		if done() || ctx.Err() != nil {
			return evicted
		}
		tasks := tasksOf(b.Digest, byDigest[b.Digest])
		if c.inUse(ctx, b.Digest, tasks) {
			continue
		}
		if err := c.evict(ctx, b, tasks); err != nil {
			c.log.Warn("evict content", zap.Stringer("digest", b.Digest), zap.Error(err))
			continue
		}
		evicted++
	}
	if !done() {
		c.log.Warn("cdn store over its limits and everything left is in use",
			zap.Int64("usage", c.usage.Load()), zap.Stringer("quota", c.cfg.Quota))
	}
	return evicted
}

// inUse reports whether content d, served by tasks, is being fetched,
// uploaded or downloaded by a member of one of its tasks.
func (c *CDN) inUse(ctx context.Context, d digest.Digest, tasks []taskid.ID) bool {
	c.mu.Lock()
	uploads := c.uploads[d]
	running := false
	for _, id := range tasks {
		if _, ok := c.fetches[id]; ok {
			running = true
		}
	}
	c.mu.Unlock()
	if uploads > 0 || running {
		return true
	}
	mc, ok := c.sched.(MemberCounter)
	if !ok {
		return false
	}
	for _, id := range tasks {
		if n, err := mc.Members(ctx, id); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// evict removes committed content b and drops its tasks from the scheduler
// and the cache's records.
func (c *CDN) evict(ctx context.Context, b content.Info, tasks []taskid.ID) error {
	for _, id := range tasks {
		if err := c.sched.RemoveTask(ctx, id); err == nil {
			c.log.Debug("task of evicted content removed", zap.Stringer("task", id))
		}
		if _, byDigest := id.Digest(); !byDigest {
			if err := c.cache.removeTask(id); err != nil {
				return err
			}
		}
	}
	if err := c.store.Delete(ctx, b.Digest); err != nil && !errors.Is(err, content.ErrNotFound) {
		return err
	}
	c.forgetChecked(b.Digest)
	if err := c.cache.removeMeta(b.Digest); err != nil {
		return err
	}
	c.setUsage(c.usage.Load() - b.Size)
	c.metrics.evictions.Inc()
	c.log.Info("content evicted", zap.Stringer("digest", b.Digest), zap.Int64("size", b.Size),
		zap.Time("lastUsed", b.AccessedAt), zap.Int("tasks", len(tasks)))
	return nil
}

// fetching returns the bytes the running fetches have read so far: they
// count towards the quota before they are committed.
func (c *CDN) fetching() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, f := range c.fetches {
		n += f.read.Load()
	}
	return n
}

// setUsage records the bytes of committed content.
func (c *CDN) setUsage(n int64) {
	c.usage.Store(max(n, 0))
	c.metrics.usage.Set(float64(max(n, 0)))
}

// refreshUsage measures the committed content again.
func (c *CDN) refreshUsage(ctx context.Context) {
	var usage int64
	err := c.store.Walk(ctx, func(i content.Info) error {
		usage += i.Size
		return nil
	})
	if err == nil {
		c.setUsage(usage)
	}
	if ds, err := diskspace.Of(c.cfg.Dir); err == nil {
		c.metrics.diskFree.Set(float64(ds.Free))
	}
}

// isNoSpace reports whether err says the filesystem is full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// urlTasks returns the URL tasks recorded, by content digest.
func (c *cache) urlTasks() map[digest.Digest][]taskid.ID {
	out := make(map[digest.Digest][]taskid.ID)
	entries, err := os.ReadDir(c.taskDir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(c.taskDir, e.Name()))
		if err != nil {
			continue
		}
		var r taskRecord
		if json.Unmarshal(b, &r) == nil { // a bad task ID does not decode
			out[r.Digest] = append(out[r.Digest], r.TaskID)
		}
	}
	return out
}

// tasksOf lists the tasks serving content d: its digest task, then the URL
// tasks recorded with it.
func tasksOf(d digest.Digest, urlTasks []taskid.ID) []taskid.ID {
	var ids []taskid.ID
	if id, err := taskid.ForDigest(d); err == nil {
		ids = append(ids, id)
	}
	return append(ids, urlTasks...)
}
