package manifestcache

// Manifests by digest: pinned content, and per-partition read permission.

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// getDigest serves a manifest by digest: the body from the cache when this
// client's partition may read it, else from the upstream.
func (c *Cache) getDigest(ctx context.Context, req Request, k keys, d digest.Digest) (*Manifest, error) {
	ak := k.access(d)
	now := c.now()
	c.mu.Lock()
	e, _ := c.entries.get(ak)
	b, _ := c.bodies.get(d)
	c.mu.Unlock()
	switch {
	case e != nil && e.notFound && now.Before(e.until):
		c.m.negativeDigest.Inc()
		return nil, fmt.Errorf("%s@%s: %w", req.Repo, d, ErrNotFound)
	case e != nil && !e.notFound && b != nil && now.Before(e.until):
		c.m.hitDigest.Inc()
		return b.manifest(d, e.typed, false), nil
	}
	c.m.missDigest.Inc()
	var (
		m   *Manifest
		err error
	)
	if b != nil {
		// The body is here; only this partition's permission is not.
		m, err = c.do(ctx, "h"+ak, func(ctx context.Context) (*Manifest, error) { return c.confirm(ctx, req, ak, d, b) })
	} else {
		m, err = c.do(ctx, "g"+ak, func(ctx context.Context) (*Manifest, error) { return c.fillDigest(ctx, req, ak, d) })
	}
	if err == nil {
		return m, nil
	}
	if e != nil && !e.notFound && b != nil && errors.Is(err, ErrUnavailable) && c.now().Before(e.until.Add(c.cfg.staleWindow())) {
		c.m.staleDigest.Inc()
		c.log.Debug("serving manifest on a stale permission, upstream failed", zap.String("repo", req.Repo),
			zap.Stringer("digest", d), zap.String("upstream", req.Upstream.Host), zap.Error(err))
		return b.manifest(d, e.typed, true), nil
	}
	return nil, err
}

// confirm asks the upstream, with the client's credentials, whether the
// client may read a manifest whose body is cached.
func (c *Cache) confirm(ctx context.Context, req Request, ak string, d digest.Digest, b *body) (*Manifest, error) {
	c.mu.Lock()
	e, ok := c.entries.get(ak)
	c.mu.Unlock()
	if ok && !e.notFound && c.now().Before(e.until) {
		return b.manifest(d, e.typed, false), nil
	}
	desc, err := c.f.HeadManifest(ctx, req.Upstream, req.Repo, d.String(), digestAccept(req.Accept, b.mediaType), req.header())
	if err == nil && desc.Digest != "" && desc.Digest != d {
		err = fmt.Errorf("head %s@%s: upstream answered for digest %s: %w", req.Repo, d, desc.Digest, registrysource.ErrDigestMismatch)
	}
	if err != nil {
		return nil, c.upstreamError(http.MethodHead, req, ak, err)
	}
	c.m.upstream.WithLabelValues(http.MethodHead, resultOK).Inc()
	ty := typeOf(b, d, desc.MediaType)
	now := c.now()
	c.mu.Lock()
	c.entries.add(ak, &entry{until: now.Add(c.cfg.AccessTTL), typed: ty})
	c.syncGauges()
	c.mu.Unlock()
	return b.manifest(d, ty, false), nil
}

// fillDigest fetches a manifest by digest and caches it.
func (c *Cache) fillDigest(ctx context.Context, req Request, ak string, d digest.Digest) (*Manifest, error) {
	c.mu.Lock()
	if e, ok := c.entries.get(ak); ok && !e.notFound && c.now().Before(e.until) {
		if b, ok := c.bodies.get(d); ok {
			c.mu.Unlock()
			return b.manifest(d, e.typed, false), nil
		}
	}
	c.mu.Unlock()
	m, err := c.f.GetManifest(ctx, req.Upstream, req.Repo, d.String(), digestAccept(req.Accept, ""), req.header())
	if err == nil {
		err = verify(m, d)
	}
	if err != nil {
		return nil, c.upstreamError(http.MethodGet, req, ak, err)
	}
	c.m.upstream.WithLabelValues(http.MethodGet, resultOK).Inc()
	now := c.now()
	c.mu.Lock()
	c.storeBody(m)
	c.entries.add(ak, &entry{until: now.Add(c.cfg.AccessTTL), typed: c.typeFor(d, m.MediaType)})
	c.syncGauges()
	c.mu.Unlock()
	c.log.Debug("manifest fetched", zap.String("repo", req.Repo), zap.Stringer("digest", d),
		zap.String("upstream", req.Upstream.Host))
	return fetched(m), nil
}
