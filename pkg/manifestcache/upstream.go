package manifestcache

// Asking the upstream: singleflight, classification of its answers, and
// storing what it sent.

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// upstreamError counts a failed upstream request, updates the entry at key
// (a 404 is remembered, a 401 or 403 drops it) and returns the error the
// caller gets.
func (c *Cache) upstreamError(method string, req Request, key string, err error) error {
	switch classify(err) {
	case outcomeNotFound:
		c.m.upstream.WithLabelValues(method, resultNotFound).Inc()
		c.mu.Lock()
		if c.cfg.NegativeTTL > 0 {
			c.entries.add(key, &entry{notFound: true, until: c.now().Add(c.cfg.NegativeTTL)})
		} else {
			c.entries.remove(key)
		}
		c.syncGauges()
		c.mu.Unlock()
		return fmt.Errorf("%s %s: %w: %w", req.Repo, req.Ref, ErrNotFound, err)
	case outcomeDenied:
		c.m.upstream.WithLabelValues(method, resultDenied).Inc()
		c.mu.Lock()
		c.entries.remove(key)
		c.syncGauges()
		c.mu.Unlock()
		return err
	case outcomeRejected:
		c.m.upstream.WithLabelValues(method, resultError).Inc()
		return err
	default:
		c.m.upstream.WithLabelValues(method, resultError).Inc()
		c.log.Debug("upstream failed", zap.String("method", method), zap.String("repo", req.Repo),
			zap.String("ref", req.Ref), zap.String("upstream", req.Upstream.Host), zap.Error(err))
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
}

type outcome int

const (
	outcomeFailure  outcome = iota // may be served stale
	outcomeNotFound                // cached briefly
	outcomeDenied                  // 401, 403: passed through, drops the entry
	outcomeRejected                // another 4xx, or a bad request: passed through
)

func classify(err error) outcome {
	var re *registrysource.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == http.StatusNotFound || re.StatusCode == http.StatusGone:
			return outcomeNotFound
		case re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden:
			return outcomeDenied
		case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
			return outcomeFailure
		default:
			return outcomeRejected
		}
	}
	switch {
	case errors.Is(err, source.ErrNotFound):
		return outcomeNotFound
	case errors.Is(err, registrysource.ErrInvalid):
		return outcomeRejected
	}
	return outcomeFailure
}

// verify checks that m hashes to its digest, and is want when want is set.
func verify(m *registrysource.Manifest, want digest.Digest) error {
	if m == nil {
		return fmt.Errorf("no manifest: %w", registrysource.ErrDigestMismatch)
	}
	if err := m.Digest.Validate(); err != nil {
		return fmt.Errorf("manifest digest %q: %w: %w", m.Digest, registrysource.ErrDigestMismatch, err)
	}
	if want != "" && m.Digest != want {
		return fmt.Errorf("manifest %s: got %s: %w", want, m.Digest, registrysource.ErrDigestMismatch)
	}
	if got := m.Digest.Algorithm().FromBytes(m.Body); got != m.Digest {
		return fmt.Errorf("manifest %s: body hashes to %s: %w", m.Digest, got, registrysource.ErrDigestMismatch)
	}
	return nil
}

// fetched is the answer of a fill with m, just fetched and verified.
func fetched(m *registrysource.Manifest) *Manifest {
	return &Manifest{Digest: m.Digest, MediaType: m.MediaType, Body: m.Body,
		Headers: NewHeaders(m.Digest, m.MediaType, len(m.Body))}
}

// typeFor is typeOf for the cached body of d (nil when it is not cached:
// a manifest larger than MaxBytes). c.mu is held.
func (c *Cache) typeFor(d digest.Digest, mt string) *typed {
	b, _ := c.bodies.get(d)
	return typeOf(b, d, mt)
}

// storeBody keeps a verified body, with its response headers prepared.
// c.mu is held.
func (c *Cache) storeBody(m *registrysource.Manifest) {
	if _, ok := c.bodies.get(m.Digest); ok {
		return
	}
	b := &body{mediaType: m.MediaType, data: m.Body, headers: NewHeaders(m.Digest, m.MediaType, len(m.Body))}
	if !c.bodies.add(m.Digest, b) {
		c.m.uncacheable.Inc()
	}
}

// syncGauges reports size changes as deltas. c.mu is held.
func (c *Cache) syncGauges() {
	if d := c.bodies.used - c.gBytes; d != 0 {
		c.m.bytes.Add(float64(d))
		c.gBytes = c.bodies.used
	}
	if n := int64(c.bodies.len()); n != c.gManifests {
		c.m.manifests.Add(float64(n - c.gManifests))
		c.gManifests = n
	}
	if n := int64(c.entries.len()); n != c.gEntries {
		c.m.entries.Add(float64(n - c.gEntries))
		c.gEntries = n
	}
}

// manifest is b served as d, with the media type of ty (nil: b's own).
func (b *body) manifest(d digest.Digest, ty *typed, stale bool) *Manifest {
	if ty != nil {
		return &Manifest{Digest: d, MediaType: ty.mediaType, Body: b.data, Stale: stale, Headers: ty.headers}
	}
	return &Manifest{Digest: d, MediaType: b.mediaType, Body: b.data, Stale: stale, Headers: b.headers}
}

// do runs fill once per key among concurrent callers, on a context detached
// from the caller's (values kept, bounded by FillTimeout). A caller whose
// ctx ends stops waiting; the fill goes on for the others and for the cache.
func (c *Cache) do(ctx context.Context, key string, fill func(context.Context) (*Manifest, error)) (*Manifest, error) {
	ch := c.sf.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.FillTimeout)
		defer cancel()
		return fill(fctx)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		m := *r.Val.(*Manifest) // each caller gets its own copy of the struct
		return &m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
