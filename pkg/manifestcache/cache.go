// Package manifestcache is the manifest hot-cache behind pkg/registryapi's
// read front (the registry-cache binary and dfdaemon's mirror): it answers
// manifest requests (by tag or by digest, for any upstream registry) from
// memory, and asks the upstream at most once per key and TTL however many
// clients ask at once.
//
// The package is split by concern: cache.go (types, New, Get), keys.go
// (upstream, partition and Accept keys), tag.go, digest.go, upstream.go
// (singleflight fill and the classification of the upstream's answers).
//
// # What is kept
//
//   - Manifest bodies, keyed by digest, immutable once fetched and verified
//     (the body must hash to its digest; the fetcher also checks the
//     upstream's Docker-Content-Digest). They live in an LRU bounded by
//     Config.MaxBytes, shared by all upstreams and clients.
//   - Tag resolutions: (upstream, repository, tag, Accept set, credential
//     partition) -> digest, fresh for Config.TagTTL. Different Accept sets
//     can resolve one tag to different manifests (a Docker schema 2 manifest
//     or an OCI index), so the normalised Accept set is part of the key.
//   - Read permissions: (upstream, repository, digest, credential partition)
//     confirmed for Config.AccessTTL, by the fetch that brought the body or
//     by a HEAD to the upstream with the client's own credentials.
//   - With each tag resolution and read permission, the media type its
//     upstream gave for that repository (its Content-Type): one digest
//     served by two upstreams or repositories is answered with each one's
//     own type, not with the first one seen.
//
// By digest the content is pinned: a manifest asked for by digest is
// fetched with every manifest media type in Accept and served whatever the
// client's Accept, as registries do. By tag the client's Accept is
// forwarded and part of the key.
//   - Upstream 404s, per tag key or per permission key, for
//     Config.NegativeTTL.
//
// A tag is resolved with a GET the first time. Once some partition has
// resolved it, later resolutions (another partition, or the same one after
// the TTL) ask with a HEAD carrying the client's credentials first: when the
// digest it names is cached, no body is fetched (registries such as Docker
// Hub do not count HEADs against pull limits); when it is not, a GET
// follows.
//
// # Credentials
//
// A client's Authorization header is forwarded to the upstream as it is, and
// only for the request it came with. Everything kept about a client is keyed
// by a partition: a keyed hash (HMAC-SHA256 with a per-Cache random key) of
// its Authorization header, or the anonymous partition when it has none. A
// body fetched with one client's credentials is served to a client of another
// partition only after the upstream has confirmed, with that client's own
// credentials, that it may read it. The header itself is neither kept nor
// logged. A 401 or 403 is never cached: it is returned to the client that
// caused it (with the upstream's challenge), and it drops what its partition
// had for that key.
//
// # Filling
//
// A miss goes through a singleflight keyed by everything that makes the
// answer, including the partition; the upstream request runs on a context
// detached from the client that started it (bounded by Config.FillTimeout),
// so a client hanging up neither cancels nor fails the others waiting.
//
// # Upstream failures
//
// When the upstream fails (5xx, 429, connection error, timeout, a body that
// does not match its digest) a tag resolution or read permission up to
// Config.StaleIfError past its TTL is served, marked Stale. Beyond that
// window, or with nothing cached, the error is returned wrapping
// ErrUnavailable.
package manifestcache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

var (
	// ErrNotFound: the upstream answered 404 for the manifest (now, or
	// within Config.NegativeTTL).
	ErrNotFound = errors.New("manifest unknown")
	// ErrUnavailable: the upstream failed (5xx, 429, unreachable, timed out,
	// or sent a body that does not match its digest) and nothing cached
	// could stand in. The upstream's error is wrapped too.
	ErrUnavailable = errors.New("upstream registry unavailable")
	// ErrBadRequest: the request names no upstream, or an invalid
	// repository, tag or digest.
	ErrBadRequest = errors.New("invalid manifest request")
)

// Fetcher asks upstream registries for manifests. Both methods pass header
// to the upstream as it is. *registrysource.Client implements it; its errors
// (*registrysource.ResponseError for a non-2xx answer) tell the cache what
// may be cached.
type Fetcher interface {
	// GetManifest fetches a manifest by tag or digest and verifies it
	// against its digest.
	GetManifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (*registrysource.Manifest, error)
	// HeadManifest asks whether the manifest exists and may be read.
	HeadManifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (ocispec.Descriptor, error)
}

var _ Fetcher = (*registrysource.Client)(nil)

// Request asks for one manifest.
type Request struct {
	// Upstream is the registry's base URL, scheme://host[:port].
	Upstream *url.URL
	// Repo is the repository name, e.g. "library/alpine".
	Repo string
	// Ref is a tag or a digest.
	Ref string
	// Accept holds the client's Accept header values (each may list several
	// media types). For a tag they are forwarded as they are (nil: the
	// fetcher's default set) and part of the cache key.
	Accept []string
	// Authorization is the client's Authorization header value, or empty.
	// It is forwarded to the upstream for this request only; the cache keeps
	// only a keyed hash of it, as the partition.
	Authorization string
}

// Manifest is a manifest served from the cache or the upstream.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	// Body is shared with the cache and other callers: it must not be
	// modified.
	Body []byte
	// Stale reports that the upstream failed and the manifest was served
	// from an entry past its TTL, within Config.StaleIfError.
	Stale bool
	// Headers are the manifest's response header values, prepared once
	// when it was fetched. Shared: they must not be modified.
	Headers *Headers
}

// Headers are the header values of an answer with a manifest, formatted
// once per fetch so that a server answering from the cache formats nothing
// per request. Each is a one-element slice to be assigned to an
// http.Header under its canonical key; the slices are shared and must not
// be modified (http.Header.Set and Add replace or copy them).
type Headers struct {
	// ContentType is the media type, or application/octet-stream when the
	// upstream named none.
	ContentType []string
	// Digest is the Docker-Content-Digest value.
	Digest []string
	// ETag is the quoted digest.
	ETag []string
	// ContentLength is the body's length in decimal.
	ContentLength []string
}

// NewHeaders formats the response header values of a manifest.
func NewHeaders(d digest.Digest, mediaType string, size int) *Headers {
	if mediaType == "" {
		mediaType = "application/octet-stream"
	}
	return &Headers{
		ContentType:   []string{mediaType},
		Digest:        []string{d.String()},
		ETag:          []string{`"` + d.String() + `"`},
		ContentLength: []string{strconv.Itoa(size)},
	}
}

// Option configures a Cache.
type Option func(*Cache)

// WithClock sets the cache's clock (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(c *Cache) { c.now = now }
}

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(c *Cache) { c.log = l }
}

// WithMetrics registers the cache's metrics with reg
// (damselfly_registry_cache_*). Caches sharing a registry share collectors.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(c *Cache) { c.reg = reg }
}

// Cache is the manifest cache. It is safe for concurrent use.
type Cache struct {
	cfg  Config
	f    Fetcher
	now  func() time.Time
	log  *zap.Logger
	reg  prometheus.Registerer
	m    *metrics
	hkey []byte // HMAC key of the credential partitions
	sf   singleflight.Group
	// upMemo is the last upstream key computed.
	upMemo atomic.Pointer[upstreamMemo]

	mu      sync.Mutex
	bodies  *lru[digest.Digest, *body]
	entries *lru[string, *entry]
	// Gauge values last reported, so that caches sharing collectors add
	// up.
	gBytes, gManifests, gEntries int64
}

// body is a verified manifest body.
type body struct {
	mediaType string
	data      []byte
	headers   *Headers
}

// entry is a tag resolution (digest set), a read permission (digest empty)
// or a remembered 404 (notFound), valid until the given time. A resolution
// or permission also keeps the media type its upstream gave for its
// repository, with its prepared headers, when that differs from the cached
// body's (nil: the body's): one digest may be served by several upstreams
// and repositories, each naming its type.
type entry struct {
	digest   digest.Digest
	notFound bool
	until    time.Time
	typed    *typed
}

// typed is a media type and the headers prepared with it.
type typed struct {
	mediaType string
	headers   *Headers
}

// typeOf is what an entry keeps for media type mt of body b: nil when it is
// b's own, or when the upstream named none or a generic one (then the body's
// stands, as registrysource reads a GET's Content-Type).
func typeOf(b *body, d digest.Digest, mt string) *typed {
	if b == nil || mt == b.mediaType || genericType(mt) {
		return nil
	}
	return &typed{mediaType: mt, headers: NewHeaders(d, mt, len(b.data))}
}

func genericType(mt string) bool {
	switch mt {
	case "", "application/json", "text/plain", "application/octet-stream":
		return true
	}
	return false
}

// New returns a cache over f. cfg is defaulted and validated.
func New(cfg Config, f Fetcher, opts ...Option) (*Cache, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if f == nil {
		return nil, errors.New("cache: nil fetcher")
	}
	c := &Cache{cfg: cfg, f: f, now: time.Now, log: zap.NewNop(), hkey: make([]byte, 32)}
	for _, o := range opts {
		o(c)
	}
	if _, err := rand.Read(c.hkey); err != nil {
		return nil, fmt.Errorf("cache: partition key: %w", err)
	}
	c.m = newMetrics(c.reg)
	c.bodies = newLRU[digest.Digest, *body](int64(cfg.MaxBytes), func(b *body) int64 { return int64(len(b.data)) },
		func(d digest.Digest, _ *body) {
			c.m.evictions.Inc()
			c.log.Debug("manifest evicted", zap.Stringer("digest", d))
		})
	c.entries = newLRU[string, *entry](int64(cfg.MaxEntries), func(*entry) int64 { return 1 }, nil)
	return c, nil
}

// Config returns the cache's configuration, defaults applied.
func (c *Cache) Config() Config { return c.cfg }

// Get returns the manifest req asks for, from the cache or the upstream.
//
// Errors: ErrBadRequest; ErrNotFound (404); ErrUnavailable wrapping the
// upstream's failure; a *registrysource.ResponseError for any other non-2xx
// answer, 401 and 403 included, to be passed through to the client; the
// context's error when ctx ends first.
func (c *Cache) Get(ctx context.Context, req Request) (*Manifest, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	k := c.keys(req)
	if strings.IndexByte(req.Ref, ':') >= 0 {
		// validate accepted it: a sha256 digest.
		return c.getDigest(ctx, req, k, digest.Digest(req.Ref))
	}
	k.tag = "t\x00" + k.up + "\x00" + req.Repo + "\x00" + req.Ref + "\x00" + k.accept + "\x00" + k.part
	return c.getTag(ctx, req, k)
}

func (r Request) validate() error {
	if r.Upstream == nil || (r.Upstream.Scheme != "http" && r.Upstream.Scheme != "https") || r.Upstream.Host == "" {
		return fmt.Errorf("%w: upstream must be an http(s) URL with a host", ErrBadRequest)
	}
	if registrysource.ValidateRepository(r.Repo) != nil {
		return fmt.Errorf("%w: repository %q: %w", ErrBadRequest, redact.Truncate(r.Repo), registrysource.ErrInvalid)
	}
	if registrysource.ValidateReference(r.Ref) != nil {
		return fmt.Errorf("%w: reference %q: %w", ErrBadRequest, redact.Truncate(r.Ref), registrysource.ErrInvalid)
	}
	return nil
}
