package blobcache

import (
	"context"
	"errors"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/content"
)

// verifier is the part of the content store the scrub needs
// (*local.Store): hash one blob again, removing it when it does not match.
type verifier interface {
	Verify(ctx context.Context, dgst digest.Digest, pace func(ctx context.Context, n int) error) error
}

// scrubLoop hashes every committed blob again every ScrubInterval, paced at
// ScrubRate, until ctx ends.
func (c *Cache) scrubLoop(ctx context.Context, v verifier) {
	t := time.NewTimer(c.cfg.ScrubInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.scrub(ctx, v)
		t.Reset(c.cfg.ScrubInterval)
	}
}

// Scrub hashes every committed blob of the store again, at most ScrubRate
// bytes per second, and drops the tasks of those that fail (the store
// removes them). It returns how many failed; a store that cannot verify
// (not *local.Store) fails none. Run scrubs every ScrubInterval.
func (c *Cache) Scrub(ctx context.Context) int {
	v, ok := c.store.(verifier)
	if !ok {
		return 0
	}
	return c.scrub(ctx, v)
}

func (c *Cache) scrub(ctx context.Context, v verifier) int {
	var blobs []digest.Digest
	if err := c.store.Walk(ctx, func(i content.Info) error {
		blobs = append(blobs, i.Digest)
		return nil
	}); err != nil {
		if ctx.Err() == nil {
			c.logger.Warn("scrub: walk store", zap.Error(err))
		}
		return 0
	}
	burst := 4 << 20
	lim := rate.NewLimiter(rate.Limit(c.cfg.ScrubRate), burst)
	pace := func(ctx context.Context, n int) error {
		c.metrics.scrubbed.Add(float64(n))
		return lim.WaitN(ctx, min(n, burst))
	}
	failed := 0
	for _, d := range blobs {
		err := v.Verify(ctx, d, pace)
		switch {
		case err == nil, ctx.Err() != nil:
		case errors.Is(err, content.ErrCorrupt):
			failed++
			c.metrics.corrupt.Inc()
			c.dropDigest(d, err)
		case errors.Is(err, content.ErrNotFound):
			// Deleted since the walk (evicted): nothing to do.
		default:
			c.logger.Warn("scrub", zap.Stringer("digest", d), zap.Error(err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	return failed
}

// dropDigest drops every task that offers blob d.
func (c *Cache) dropDigest(d digest.Digest, cause error) {
	c.mu.Lock()
	var drop []*entry
	for e := range c.byDigest[d] {
		drop = append(drop, e)
	}
	c.mu.Unlock()
	for _, e := range drop {
		c.lost(e, cause)
	}
}
