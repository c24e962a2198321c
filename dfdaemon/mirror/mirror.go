// Package mirror is dfdaemon's registry mirror: pkg/registryapi's read
// front (the same answers as the registry-cache's, tested there) with the
// upstream picked per request from the node's configuration and blobs
// moved peer to peer. It is what docker's registry-mirrors, containerd's
// hosts.toml mirrors and direct clients (crane pull
// 127.0.0.1:65001/repo:tag) talk to. It also holds the rules the forward
// proxy shares with it: the read authoriser (Authorizer), the configured
// registries (Registries) and the proxy's P2P fetcher (Fetcher).
//
// # Upstreams
//
// containerd names the registry it wants with ?ns=<host>; docker and direct
// clients name none and get Config.Registry (Docker Hub by default;
// "docker.io" and "index.docker.io" are names of Docker Hub). ns may only
// name Config.Registry's host, a host in Config.Upstreams, or, with
// Config.AllowAnyUpstream, any host (over https). Anything else is 403
// DENIED: the mirror does not fetch from wherever a client points it. On
// Docker Hub a one-component name gets the "library/" prefix.
//
// # Credentials
//
// The mirror holds no credentials. A runtime's Authorization header goes to
// the upstream with each request it makes for that runtime, and the
// upstream's 401 (with its Bearer or Basic WWW-Authenticate challenge) comes
// back to the runtime, which then gets its own token. For a blob, the
// Authorization also goes to the supernode in the download request, which
// uses it only for that task's source fetch.
//
// # Blobs
//
// Before a blob is served, from the node's cache or from peers, the client's
// right to read it is confirmed: a HEAD of the blob on the upstream with the
// client's own Authorization. A yes is remembered for Config.AuthTTL (30s)
// for exactly that upstream, repository, blob and credential (kept as a
// hash); concurrent checks of one key share one HEAD. A 401, 403 or 404 is
// passed to the client with the upstream's status and challenge, and ends
// any remembered yes for that key. So a client without credentials never
// gets a private blob another client pulled.
//
// When the upstream cannot answer (connection failure, timeout, 5xx, 429)
// the mirror fails closed (503 UNAVAILABLE, 502 UPSTREAM_ERROR for a 5xx
// other than 503, 429 with its Retry-After), with one exception: if the
// same credentials were confirmed for the same blob of the same repository
// less than Config.AuthGrace (5m) ago, the blob is served: a pull that was
// authorised moments ago may finish through a short upstream outage, and
// nobody gains access they were not just granted. A negative AuthGrace
// turns this off. (The /v2/ ping is answered by the front itself while the
// upstream cannot answer; it grants nothing.)
//
// Then the blob is downloaded through the peer engine as task "sha256:<hex>"
// (shared by every client and every node) and streamed as its pieces are
// verified. That holds for the registries the configuration names
// (Config.Registry, Config.Upstreams; see Registries) only: a registry
// reached through Config.AllowAnyUpstream has no say over the cluster's
// digest tasks, so a yes from it only starts a URL task of its own (keyed by
// the blob's URL and the client's credentials), whose content is checked
// against the digest here and never comes from the node's cache of the
// digest. Content-Length and Docker-Content-Digest come from the HEAD, so a
// HEAD never waits for a download.
//
// # Ranges
//
// Lazy pullers read blobs in ranges: stargz-snapshotter lists many 50,000-
// byte chunks in one Range and probes with bytes=0-1, nydus asks for ~1 MiB
// ranges, SOCI for 4 MiB spans, containerd 2.1+ for a layer in several
// large ranges at once. A Range is answered exactly (httpx.Body): one range,
// or a list that coalesces to one, is a 206 with Content-Range and its exact
// Content-Length; several are a 206 multipart/byteranges whose parts carry
// their Content-Range; none satisfiable is 416 RANGE_INVALID with
// "Content-Range: bytes */size". Overlapping and adjacent ranges are merged
// (stargz maps each part by its Content-Range, so this is safe). A Range
// listing more than httpx.MaxRanges ranges, or longer than
// httpx.MaxRangesHeader, is ignored: the answer is the whole blob (200),
// which every puller accepts. A single-range 206 always carries
// Content-Range; blob bytes are never re-encoded and never redirected.
//
// Every range's reader is opened before the first byte is sent, so the
// engine fetches all their pieces first. A response carrying the whole blob
// (no Range, or one range covering all of it) holds its last 64 KiB back
// until the engine has verified the whole blob's digest. A partial range is
// sent as soon as its pieces are verified, each byte against its piece's
// digest: it is not the blob, a client cannot check it against the blob's
// digest anyway (stargz checks its chunks itself), and waiting for the whole
// blob would defeat lazy pulling. A registry reached through
// AllowAnyUpstream has no trusted piece digests: its blob is read from the
// first byte and checked against the digest, and only the range's bytes are
// sent; a range reaching the end of the blob holds its last 64 KiB until
// that check (VerifyRange). If a download fails after the first byte the connection is
// aborted, so a client never sees a clean but wrong or short body.
//
// Errors are the front's (pkg/registryapi); a download that fails before
// its first byte is 503 UNAVAILABLE, or 502 UPSTREAM_ERROR when the
// upstream's content does not match its digest.
package mirror

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/registryapi"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// Mirror is the registry mirror. It is an http.Handler for /v2/ paths.
type Mirror struct {
	front *registryapi.Front
}

// Option configures a Mirror.
type Option func(*options)

type options struct {
	logger     *zap.Logger
	hc         *http.Client
	manifests  registryapi.Manifests
	registerer prometheus.Registerer
}

// WithLogger sets the logger (default: no-op).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// WithHTTPClient sets the client of the mirror's own upstream requests
// (HEADs, /v2/ and tag lists). The default ignores proxy environment
// variables and keeps Go's redirect policy, which drops Authorization on a
// hop to another host.
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.hc = hc } }

// WithManifests serves manifests from m (the node's manifestcache.Cache).
// Without it the mirror keeps a manifest cache of its own, with
// manifestcache's defaults.
func WithManifests(m registryapi.Manifests) Option { return func(o *options) { o.manifests = m } }

// WithMetrics registers the mirror's metrics with reg.
func WithMetrics(reg prometheus.Registerer) Option { return func(o *options) { o.registerer = reg } }

// New returns a mirror that downloads blobs through blobs.
func New(cfg Config, blobs Blobs, opts ...Option) (*Mirror, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if blobs == nil {
		return nil, errors.New("mirror: blobs are required")
	}
	o := options{logger: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	if o.hc == nil {
		o.hc = defaultUpstreamClient()
	}
	met, err := newMetrics(o.registerer)
	if err != nil {
		return nil, err
	}
	reg := registrysource.New(registrysource.WithHTTPClient(o.hc), registrysource.WithLogger(o.logger.Named("registry")))
	if o.manifests == nil {
		mc, err := manifestcache.New(manifestcache.Config{}, reg, manifestcache.WithLogger(o.logger.Named("manifests")))
		if err != nil {
			return nil, fmt.Errorf("mirror: %w", err)
		}
		o.manifests = mc
	}
	auth := &Authorizer{cache: newAuthCache(cfg.AuthTTL, cfg.AuthGrace), reg: reg, checks: met.auth}
	p2p := &p2pBlobs{blobs: blobs, auth: auth, trusted: cfg.Registries(), logger: o.logger, bytes: met.blobBytes}
	front, err := registryapi.New(o.manifests, newUpstreams(cfg), p2p,
		registryapi.WithHTTPClient(o.hc), registryapi.WithLogger(o.logger), registryapi.WithOutagePings(met.outagePings))
	if err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	return &Mirror{front: front}, nil
}

// ServeHTTP serves the /v2/ API.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.front.ServeHTTP(w, r) }

// defaultUpstreamClient ignores proxy variables (this node may be the
// proxy they name) and keeps Go's redirect policy, which drops
// Authorization on a hop to another host.
func defaultUpstreamClient() *http.Client {
	hc := registryapi.DefaultHTTPClient()
	hc.Transport.(*http.Transport).ResponseHeaderTimeout = headTimeout
	return hc
}

type metrics struct {
	auth        *prometheus.CounterVec
	blobBytes   prometheus.Counter
	outagePings prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "mirror", Name: "blob_auth_checks_total",
			Help: "Blob authorisations by outcome: upstream (asked now), cached, grace (upstream unreachable or 429), denied, failed.",
		}, []string{"result"}),
		blobBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "mirror", Name: "blob_bytes_total",
			Help: "Blob bytes sent to clients.",
		}),
		outagePings: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "damselfly", Subsystem: "mirror", Name: "outage_pings_total",
			Help: "GET /v2/ answered by the mirror itself because the upstream could not answer (unreachable or 5xx).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.auth, m.blobBytes, m.outagePings} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("mirror: register metrics: %w", err)
		}
	}
	return m, nil
}
