package blobcache

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// enforceQuota deletes least recently used blobs nothing holds until the
// usage is at most LowWater of the quota and the filesystem is at most
// DiskLowWater full, once either is over its mark.
func (c *Cache) enforceQuota(ctx context.Context) error { return c.makeRoom(ctx, 0) }

// makeRoom is enforceQuota with room for incoming more bytes: it also
// evicts when the filesystem would pass DiskHighWater with them.
func (c *Cache) makeRoom(ctx context.Context, incoming int64) error {
	var infos []content.Info
	var usage int64
	err := c.store.Walk(ctx, func(i content.Info) error {
		infos = append(infos, i)
		usage += i.Size
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk store: %w", err)
	}
	c.metrics.usage.Set(float64(usage))
	quota := int64(c.cfg.Quota)
	var need int64 // bytes to free
	if usage+incoming > quota {
		need = usage + incoming - int64(float64(quota)*c.cfg.LowWater)
	}
	disk, diskErr := c.disk()
	if diskErr == nil && disk.Total > 0 {
		c.metrics.diskFree.Set(float64(disk.Free))
		used := disk.Total - disk.Free
		if float64(used+incoming) > c.cfg.DiskHighWater*float64(disk.Total) {
			need = max(need, used+incoming-int64(c.cfg.DiskLowWater*float64(disk.Total)))
		}
	}
	if need <= 0 {
		return nil
	}

	c.mu.Lock()
	used := make(map[digest.Digest]time.Time, len(infos))
	for _, i := range infos {
		t := i.AccessedAt
		for e := range c.byDigest[i.Digest] {
			if e.lastUse.After(t) {
				t = e.lastUse
			}
		}
		used[i.Digest] = t
	}
	c.mu.Unlock()
	sort.SliceStable(infos, func(a, b int) bool { return used[infos[a].Digest].Before(used[infos[b].Digest]) })

	var errs []error
	var freed int64
	for _, i := range infos {
		if freed >= need || ctx.Err() != nil {
			break
		}
		ok, err := c.evict(ctx, i.Digest)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			freed += i.Size
			usage -= i.Size
			c.metrics.evictions.Inc()
			c.metrics.evictedBytes.Add(float64(i.Size))
			c.logger.Info("evicted", zap.Stringer("digest", i.Digest), zap.Int64("size", i.Size))
		}
	}
	c.metrics.usage.Set(float64(usage))
	if freed < need {
		c.logger.Warn("cache cannot free enough: the rest is in use",
			zap.Int64("usage", usage), zap.Int64("quota", quota), zap.Int64("short", need-freed),
			zap.Int64("diskFree", disk.Free), zap.Int64("diskTotal", disk.Total))
	}
	return errors.Join(errs...)
}

// evict deletes blob d unless something holds it: its tasks are left on
// the supernode first. Acquires of d wait until it is gone.
func (c *Cache) evict(ctx context.Context, d digest.Digest) (bool, error) {
	id, err := taskid.ForDigest(d)
	if err != nil {
		return false, nil // not a digest a task can name; not ours to judge
	}
	c.mu.Lock()
	if e := c.tasks[id]; e != nil && !e.committed {
		c.mu.Unlock()
		return false, nil // being downloaded or opened right now
	}
	holders := c.byDigest[d]
	for e := range holders {
		if e.leases > 0 {
			c.mu.Unlock()
			return false, nil
		}
	}
	var drop []*entry
	for e := range holders {
		drop = append(drop, e)
	}
	for _, e := range drop {
		c.dropLocked(e)
	}
	done := make(chan struct{})
	c.evicting[d] = done
	c.mu.Unlock()

	for _, e := range drop {
		_ = e.dl.Close() // leaves the task on the supernode
	}
	err = c.store.Delete(ctx, d)

	c.mu.Lock()
	delete(c.evicting, d)
	close(done)
	c.mu.Unlock()
	if err != nil && !errors.Is(err, content.ErrNotFound) {
		return false, fmt.Errorf("delete %s: %w", d, err)
	}
	return err == nil, nil
}
