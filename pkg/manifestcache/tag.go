package manifestcache

// Manifests by tag: the TTL'd resolution, revalidated by HEAD.

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"
)

// getTag serves a manifest by tag.
func (c *Cache) getTag(ctx context.Context, req Request, k keys) (*Manifest, error) {
	now := c.now()
	c.mu.Lock()
	e, _ := c.entries.get(k.tag)
	var b *body
	if e != nil && !e.notFound {
		b, _ = c.bodies.get(e.digest)
	}
	c.mu.Unlock()
	switch {
	case e != nil && e.notFound && now.Before(e.until):
		c.m.negativeTag.Inc()
		return nil, fmt.Errorf("%s:%s: %w", req.Repo, req.Ref, ErrNotFound)
	case e != nil && !e.notFound && b != nil && now.Before(e.until):
		c.m.hitTag.Inc()
		return b.manifest(e.digest, e.typed, false), nil
	}
	c.m.missTag.Inc()
	v, err := c.do(ctx, k.tag, func(ctx context.Context) (*Manifest, error) { return c.fillTag(ctx, req, k) })
	if err == nil {
		return v, nil
	}
	if e != nil && !e.notFound && b != nil && errors.Is(err, ErrUnavailable) && c.now().Before(e.until.Add(c.cfg.staleWindow())) {
		c.m.staleTag.Inc()
		c.log.Debug("serving stale manifest, upstream failed", zap.String("repo", req.Repo), zap.String("ref", req.Ref),
			zap.Stringer("digest", e.digest), zap.String("upstream", req.Upstream.Host), zap.Error(err))
		return b.manifest(e.digest, e.typed, true), nil
	}
	return nil, err
}

// fillTag resolves a tag against the upstream and caches the answer.
func (c *Cache) fillTag(ctx context.Context, req Request, k keys) (*Manifest, error) {
	// A flight that ended between our lookup and this one may have filled
	// the entry already.
	c.mu.Lock()
	if e, ok := c.entries.get(k.tag); ok && !e.notFound && c.now().Before(e.until) {
		if b, ok := c.bodies.get(e.digest); ok {
			c.mu.Unlock()
			return b.manifest(e.digest, e.typed, false), nil
		}
	}
	_, hinted := c.entries.get(k.hint())
	c.mu.Unlock()

	if hinted {
		// Another partition resolved this tag: its manifest is likely
		// cached. A HEAD with this client's credentials confirms both the
		// digest and the client's access, and spares a GET when the body is
		// here (registries such as Docker Hub do not count HEADs against
		// pull limits).
		if m, done, err := c.resolveByHead(ctx, req, k); done {
			return m, err
		}
	}

	m, err := c.f.GetManifest(ctx, req.Upstream, req.Repo, req.Ref, req.Accept, req.header())
	if err == nil {
		err = verify(m, "")
	}
	if err != nil {
		return nil, c.upstreamError(http.MethodGet, req, k.tag, err)
	}
	c.m.upstream.WithLabelValues(http.MethodGet, resultOK).Inc()
	c.mu.Lock()
	c.storeBody(m)
	c.resolved(k, m.Digest, c.typeFor(m.Digest, m.MediaType))
	c.mu.Unlock()
	c.log.Debug("manifest fetched", zap.String("repo", req.Repo), zap.String("ref", req.Ref),
		zap.Stringer("digest", m.Digest), zap.String("upstream", req.Upstream.Host))
	return fetched(m), nil
}

// resolveByHead resolves a tag with a HEAD. done is false when the digest
// the upstream names is not cached (or the HEAD named none): then a GET is
// needed.
func (c *Cache) resolveByHead(ctx context.Context, req Request, k keys) (m *Manifest, done bool, err error) {
	desc, err := c.f.HeadManifest(ctx, req.Upstream, req.Repo, req.Ref, req.Accept, req.header())
	if err != nil {
		return nil, true, c.upstreamError(http.MethodHead, req, k.tag, err)
	}
	c.m.upstream.WithLabelValues(http.MethodHead, resultOK).Inc()
	if desc.Digest.Validate() != nil {
		return nil, false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.bodies.get(desc.Digest)
	if !ok {
		return nil, false, nil
	}
	ty := typeOf(b, desc.Digest, desc.MediaType)
	c.resolved(k, desc.Digest, ty)
	c.log.Debug("tag resolved by HEAD", zap.String("repo", req.Repo), zap.String("ref", req.Ref),
		zap.Stringer("digest", desc.Digest), zap.String("upstream", req.Upstream.Host))
	return b.manifest(desc.Digest, ty, false), true, nil
}

// resolved records that k's tag resolves to d, of the media type ty (nil:
// the body's), for k's partition, which may read d. c.mu is held.
func (c *Cache) resolved(k keys, d digest.Digest, ty *typed) {
	now := c.now()
	c.entries.add(k.tag, &entry{digest: d, until: now.Add(c.cfg.TagTTL), typed: ty})
	c.entries.add(k.hint(), &entry{digest: d, until: now.Add(c.cfg.TagTTL)})
	c.entries.add(k.access(d), &entry{until: now.Add(c.cfg.AccessTTL), typed: ty})
	c.syncGauges()
}
