// Package manifestcache is the registry-cache's manifest hot-cache: it answers
// manifest requests (by tag or by digest, for any upstream registry) from
// memory, and asks the upstream at most once per key and TTL however many
// clients ask at once.
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
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
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
	"github.com/damselfly/damselfly/pkg/source"
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

// Manifest is Get in the shape of a registry client's GetManifest, for
// callers that take either (dfdaemon's mirror): header carries the client's
// Authorization (nothing else of it is used), and every 404 — from the
// upstream or remembered — is a
// *registrysource.ResponseError with StatusCode 404 that also matches
// ErrNotFound and source.ErrNotFound. Other errors are as for Get.
func (c *Cache) Manifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (*registrysource.Manifest, error) {
	m, err := c.Get(ctx, Request{Upstream: base, Repo: repo, Ref: ref, Accept: accept, Authorization: header.Get("Authorization")})
	if err != nil {
		var re *registrysource.ResponseError
		if errors.Is(err, ErrNotFound) && !errors.As(err, &re) {
			u, _ := registrysource.ManifestURL(base, repo, ref)
			err = fmt.Errorf("%w: %w", err, &registrysource.ResponseError{Method: http.MethodGet, URL: u, StatusCode: http.StatusNotFound, Header: http.Header{}})
		}
		return nil, err
	}
	return &registrysource.Manifest{Digest: m.Digest, MediaType: m.MediaType, Body: m.Body}, nil
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

// keys are the parts of one request's cache keys. Only the key a lookup
// needs is built: a cache hit builds one string.
type keys struct {
	up, repo, ref string
	// accept is the normalised Accept set; set for a tag only.
	accept string
	// part is the credential partition.
	part string
	// tag: (upstream, repo, ref, accept, partition); set for a tag only.
	tag string
}

// access is the key of a read permission, or a digest 404, of d:
// (upstream, repo, partition, digest).
func (k keys) access(d digest.Digest) string {
	return "a\x00" + k.up + "\x00" + k.repo + "\x00" + k.part + "\x00" + d.String()
}

// hint: (upstream, repo, ref, accept) without the partition: the digest
// some partition last resolved the tag to. It only tells whether asking with
// HEAD first may spare a GET; it grants nothing.
func (k keys) hint() string {
	return "h\x00" + k.up + "\x00" + k.repo + "\x00" + k.ref + "\x00" + k.accept
}

func (c *Cache) keys(req Request) keys {
	k := keys{up: c.upstreamKey(req.Upstream), repo: req.Repo, ref: req.Ref, part: c.partition(req.Authorization)}
	if strings.IndexByte(req.Ref, ':') < 0 {
		k.accept = normaliseAccept(req.Accept)
	}
	return k
}

// upstreamMemo is the last upstream key computed, so that a server with one
// upstream (registry-cache) does not format it per request.
type upstreamMemo struct {
	scheme, host, path, key string
}

func (c *Cache) upstreamKey(u *url.URL) string {
	if m := c.upMemo.Load(); u.RawPath == "" && m != nil && m.scheme == u.Scheme && m.host == u.Host && m.path == u.Path {
		return m.key
	}
	key := upstreamKey(u)
	if u.RawPath == "" {
		c.upMemo.Store(&upstreamMemo{scheme: u.Scheme, host: u.Host, path: u.Path, key: key})
	}
	return key
}

// partition is the credential partition of an Authorization header: empty
// for anonymous clients, else a keyed hash, so that the header cannot be
// recovered from what the cache keeps.
func (c *Cache) partition(authorization string) string {
	if authorization == "" {
		return ""
	}
	h := hmac.New(sha256.New, c.hkey)
	h.Write([]byte(authorization))
	return hex.EncodeToString(h.Sum(nil))
}

// upstreamKey normalises a registry base URL: lowercase scheme and host,
// no user info, no trailing slash.
func upstreamKey(u *url.URL) string {
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + strings.TrimRight(u.EscapedPath(), "/")
}

// acceptTypes splits Accept header values into their media ranges,
// lowercased, whitespace removed, parameters kept, sorted and deduplicated.
func acceptTypes(accept []string) []string {
	var out []string
	for _, v := range accept {
		for part := range strings.SplitSeq(v, ",") {
			var b strings.Builder
			for f := range strings.SplitSeq(part, ";") {
				if f = strings.ToLower(strings.TrimSpace(f)); f == "" {
					continue
				}
				if b.Len() > 0 {
					b.WriteByte(';')
				}
				b.WriteString(f)
			}
			if b.Len() > 0 {
				out = append(out, b.String())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// normaliseAccept is acceptTypes joined with ",". One Accept value that is
// already normal (one lowercase media type without parameters or spaces,
// what most clients send per header line) is returned as it is.
func normaliseAccept(accept []string) string {
	switch len(accept) {
	case 0:
		return ""
	case 1:
		if normalMediaType(accept[0]) {
			return accept[0]
		}
	}
	return strings.Join(acceptTypes(accept), ",")
}

func normalMediaType(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == ',', c == ';', c <= ' ', c >= 0x7f, 'A' <= c && c <= 'Z':
			return false
		}
	}
	return true
}

// manifestTypes are asked for on every fetch by digest, with the client's
// own: the digest fixes the content, and a registry would otherwise refuse
// media types the first client's Accept did not list.
var manifestTypes = []string{
	ocispec.MediaTypeImageIndex,
	ocispec.MediaTypeImageManifest,
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

func digestAccept(client []string, extra string) []string {
	out := slices.Clone(manifestTypes)
	out = append(out, acceptTypes(client)...)
	if extra != "" {
		out = append(out, extra)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (r Request) header() http.Header {
	if r.Authorization == "" {
		return http.Header{}
	}
	return http.Header{"Authorization": {r.Authorization}}
}

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
