package cdn

import (
	"context"
	"errors"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/diskspace"
)

// spaceCheckInterval is how often the store's usage and the disk's free
// space are measured besides at each fetch, and content evicted when they
// are over their limits.
const spaceCheckInterval = time.Minute

// maintain keeps the store within its limits and scrubs it until ctx is
// done. It evicts at once what a lowered quota or a fuller disk requires.
func (c *CDN) maintain(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c.refreshUsage(ctx)
		t := time.NewTicker(spaceCheckInterval)
		defer t.Stop()
		for {
			if ds, err := diskspace.Of(c.cfg.Dir); c.overLimits(ds, err == nil, 0) {
				c.makeRoom(ctx, 0)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c.refreshUsage(ctx)
			}
		}
	})
	wg.Go(func() {
		t := time.NewTicker(c.cfg.ScrubInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c.scrub(ctx)
			}
		}
	})
}

// scrub hashes every committed blob and its pieces again, at most
// Config.ScrubRate bytes per second; content that fails is removed and its
// tasks dropped (checkContent).
func (c *CDN) scrub(ctx context.Context) {
	var blobs []digest.Digest
	if err := c.store.Walk(ctx, func(i content.Info) error {
		blobs = append(blobs, i.Digest)
		return nil
	}); err != nil {
		c.log.Warn("scrub: list content", zap.Error(err))
		return
	}
	burst := int(min(int64(c.cfg.ScrubRate), 1<<20))
	lim := rate.NewLimiter(rate.Limit(c.cfg.ScrubRate), burst)
	pace := func(ctx context.Context, n int) error {
		c.metrics.scrubbed.Add(float64(n))
		for n > 0 {
			k := min(n, burst)
			if err := lim.WaitN(ctx, k); err != nil {
				return err
			}
			n -= k
		}
		return nil
	}
	failed := 0
	start := time.Now()
	for _, d := range blobs {
		if ctx.Err() != nil {
			return
		}
		_, err := c.checkContent(ctx, d, pace)
		switch {
		case errors.Is(err, content.ErrCorrupt):
			failed++
		case err != nil && !errors.Is(err, content.ErrNotFound) && ctx.Err() == nil:
			c.log.Warn("scrub: check content", zap.Stringer("digest", d), zap.Error(err))
		}
	}
	c.log.Info("scrub done", zap.Int("blobs", len(blobs)), zap.Int("failed", failed), zap.Duration("took", time.Since(start)))
}
