// Package mirror serves the read side of the OCI distribution API for a
// node's container runtimes: GET and HEAD of /v2/, manifests by tag and
// digest, blobs (with a single Range) and tag lists. It is what docker's
// registry-mirrors, containerd's hosts.toml mirrors and direct clients
// (crane pull 127.0.0.1:65001/repo:tag) talk to.
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
// When the upstream cannot be reached (connection failure, timeout, 5xx)
// the mirror fails closed: 503 UNAVAILABLE, with one exception. A 429 is
// treated alike, except that it reaches the client as 429 with its
// Retry-After: a rate limit is no verdict on access. If the same
// credentials were confirmed for the same blob of the same repository less
// than Config.AuthGrace (5m) ago, the blob is served: a pull that was
// authorised moments ago may finish through a short upstream outage, and
// nobody gains access they were not just granted. A negative AuthGrace
// turns this off.
//
// GET /v2/ is the one request the mirror answers itself when the upstream
// cannot answer (unreachable, 5xx): 200 with "{}", so that clients which ping
// first (crane, skopeo, regctl) go on to the manifests and blobs the node
// can still serve under the rules above. It grants nothing: every later
// request is decided as it would be without the ping. An upstream that does
// answer is passed through (a 401 challenge, so clients get their tokens).
//
// Then the blob is downloaded through the peer engine as task "sha256:<hex>"
// (shared by every client and every node) and streamed as its pieces are
// verified. That holds for the registries the configuration names
// (Config.Registry, Config.Upstreams; see Registries) only: a registry
// reached through Config.AllowAnyUpstream has no say over the cluster's
// digest tasks, so a yes from it only starts a URL task of its own (keyed by
// the blob's URL and the client's credentials), whose content is checked
// against the digest here and never comes from the node's cache of the
// digest. Content-Length and Docker-Content-Digest come from the HEAD. A
// Range is served from the stream. When the response reaches the end of the
// blob, its last bytes are held back until the engine has verified the whole
// blob's digest; if the download fails the connection is aborted, so a
// client never sees a clean but wrong or short body.
//
// # Errors
//
// Every error is distribution-spec JSON (errcode) with its status: 400
// DIGEST_INVALID, NAME_INVALID or TAG_INVALID for bad input, 403 DENIED for an
// upstream that is not allowed, 404 BLOB_UNKNOWN or MANIFEST_UNKNOWN, 405
// UNSUPPORTED for writes, 416 RANGE_INVALID, 401/403/404/429 passed through
// from the upstream (its JSON body too, when it sent one), 502 when the
// upstream's content does not match its digest, 503 UNAVAILABLE when it
// cannot be reached.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/gorilla/mux"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// Blobs downloads blobs through the node's peer engine (blobcache.Cache).
type Blobs interface {
	// Open returns the content of req from off on, as the engine verifies
	// it: it ends with io.EOF only after the whole blob's digest is
	// verified. Close releases it; the download itself goes on.
	Open(ctx context.Context, req peer.Request, off int64) (io.ReadCloser, error)
}

// Manifests fetches manifests of an upstream registry: the registry-cache,
// or the upstream itself. header is the client's own Authorization. A
// status other than 2xx is a *registrysource.ResponseError.
type Manifests interface {
	Manifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (*registrysource.Manifest, error)
}

// Mirror is the registry mirror. It is an http.Handler for /v2/ paths.
type Mirror struct {
	cfg       Config
	def       *url.URL
	upstreams map[string]*url.URL
	trusted   Registries
	blobs     Blobs
	manifests Manifests
	reg       *registrysource.Client
	hc        *http.Client
	auth      *Authorizer
	router    *mux.Router
	logger    *zap.Logger
	metrics   *metrics
}

// Option configures a Mirror.
type Option func(*options)

type options struct {
	logger     *zap.Logger
	hc         *http.Client
	manifests  Manifests
	registerer prometheus.Registerer
}

// WithLogger sets the logger (default: no-op).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// WithHTTPClient sets the client of the mirror's own upstream requests
// (HEADs, /v2/ and tag lists). The default ignores proxy environment
// variables and keeps Go's redirect policy, which drops Authorization on a
// hop to another host.
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.hc = hc } }

// WithManifests serves manifests from m (the registry-cache) instead of
// fetching each from the upstream.
func WithManifests(m Manifests) Option { return func(o *options) { o.manifests = m } }

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
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	def, _ := parseBase(cfg.Registry) // validated
	m := &Mirror{
		cfg:       cfg,
		def:       def,
		upstreams: map[string]*url.URL{},
		trusted:   cfg.Registries(),
		blobs:     blobs,
		manifests: o.manifests,
		hc:        o.hc,
		logger:    o.logger,
	}
	if m.logger == nil {
		m.logger = zap.NewNop()
	}
	if m.hc == nil {
		m.hc = defaultUpstreamClient()
	}
	m.reg = registrysource.New(registrysource.WithHTTPClient(m.hc), registrysource.WithLogger(m.logger.Named("registry")))
	if m.manifests == nil {
		m.manifests = upstreamManifests{m.reg}
	}
	for _, u := range cfg.Upstreams {
		h, _ := canonicalHost(u.Host) // validated
		scheme := "https"
		if u.Insecure {
			scheme = "http"
		}
		m.upstreams[h] = &url.URL{Scheme: scheme, Host: h}
	}
	met, err := newMetrics(o.registerer)
	if err != nil {
		return nil, err
	}
	m.metrics = met
	m.auth = &Authorizer{cache: newAuthCache(cfg.AuthTTL, cfg.AuthGrace), reg: m.reg, checks: met.auth}

	// A router of our own: v2.Router() is shared by the whole process.
	r := v2.RouterWithPrefix("")
	r.Get(v2.RouteNameBase).Handler(http.HandlerFunc(m.serveBase))
	r.Get(v2.RouteNameManifest).Handler(http.HandlerFunc(m.serveManifest))
	r.Get(v2.RouteNameBlob).Handler(http.HandlerFunc(m.serveBlob))
	r.Get(v2.RouteNameTags).Handler(http.HandlerFunc(m.serveTags))
	readOnly := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported.WithMessage("the mirror is read-only"))
	})
	r.Get(v2.RouteNameBlobUpload).Handler(readOnly)
	r.Get(v2.RouteNameBlobUploadChunk).Handler(readOnly)
	r.Get(v2.RouteNameCatalog).Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, errcode.ErrorCodeUnsupported.WithMessage("the mirror has no catalog"))
	}))
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, http.StatusNotFound, errcode.ErrorCodeUnsupported.WithMessage("not part of the distribution read API"))
	})
	m.router = r
	return m, nil
}

// ServeHTTP serves the /v2/ API.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, r, http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported.WithMessage("the mirror is read-only"))
		return
	}
	m.router.ServeHTTP(w, r)
}

// defaultUpstreamClient ignores proxy variables (this node may be the
// proxy they name) and keeps Go's redirect policy, which drops
// Authorization on a hop to another host.
func defaultUpstreamClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.ResponseHeaderTimeout = headTimeout
	return &http.Client{Transport: tr}
}

// errNotAllowed: ?ns= names a registry the mirror may not fetch from.
var errNotAllowed = errors.New("upstream registry not allowed")

// upstream returns the registry a request is for.
func (m *Mirror) upstream(r *http.Request) (*url.URL, error) {
	ns := r.URL.Query().Get("ns")
	if ns == "" {
		return m.def, nil
	}
	h, err := canonicalHost(ns)
	if err != nil {
		return nil, fmt.Errorf("ns %q: %w", ns, errNotAllowed)
	}
	if h == m.def.Host {
		return m.def, nil
	}
	if u, ok := m.upstreams[h]; ok {
		return u, nil
	}
	if m.cfg.AllowAnyUpstream {
		return &url.URL{Scheme: "https", Host: h}, nil
	}
	return nil, fmt.Errorf("ns %q: %w (add it to mirror.upstreams)", ns, errNotAllowed)
}

// target resolves the upstream and the repository of a request, answering
// the client itself when it cannot.
func (m *Mirror) target(w http.ResponseWriter, r *http.Request) (*url.URL, string, bool) {
	base, err := m.upstream(r)
	if err != nil {
		writeError(w, r, http.StatusForbidden, errcode.ErrorCodeDenied.WithMessage(err.Error()))
		return nil, "", false
	}
	repo := mux.Vars(r)["name"]
	if base.Host == dockerHubHost && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	if err := registrysource.ValidateRepository(repo); err != nil {
		writeError(w, r, http.StatusBadRequest, errcode.ErrorCodeNameInvalid.WithMessage("invalid repository name"))
		return nil, "", false
	}
	return base, repo, true
}

// clientAuth is the only request header that reaches the upstream and the
// supernode: the client's own credentials.
func clientAuth(r *http.Request) http.Header {
	h := http.Header{}
	for _, v := range r.Header.Values("Authorization") {
		h.Add("Authorization", v)
	}
	return h
}

func (m *Mirror) serveBlob(w http.ResponseWriter, r *http.Request) {
	base, repo, ok := m.target(w, r)
	if !ok {
		return
	}
	d, err := digest.Parse(mux.Vars(r)["digest"])
	if err != nil || d.Algorithm() != digest.SHA256 {
		writeError(w, r, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid.WithMessage("want a sha256 digest"))
		return
	}
	ctx := r.Context()
	auth := clientAuth(r)
	size, err := m.Authorize(ctx, base, repo, d, auth)
	if err != nil {
		m.upstreamError(w, r, err, errcode.ErrorCodeBlobUnknown)
		return
	}

	h := w.Header()
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "max-age=31536000")
	start, length, status := int64(0), size, http.StatusOK
	if rh := r.Header.Get("Range"); rh != "" {
		rg, err := httpx.ParseRange(rh, size)
		if err != nil {
			if size >= 0 {
				h.Set("Content-Range", httpx.UnsatisfiedContentRange(size))
			}
			writeError(w, r, http.StatusRequestedRangeNotSatisfiable, errcode.ErrorCodeRangeInvalid.WithMessage(err.Error()))
			return
		}
		start, length, status = rg.Start, rg.Length, http.StatusPartialContent
		h.Set("Content-Range", rg.ContentRange(size))
	}
	if length >= 0 {
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	h.Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}

	req, shared, err := m.trusted.BlobRequest(base, repo, d, auth, size)
	if err != nil {
		writeError(w, r, http.StatusBadRequest, errcode.ErrorCodeNameInvalid.WithMessage("invalid repository name"))
		return
	}
	var rc io.ReadCloser
	if shared {
		rc, err = m.blobs.Open(ctx, req, start)
	} else if rc, err = m.blobs.Open(ctx, req, 0); err == nil {
		// A registry the config does not name: its own URL task, checked
		// against d here from its first byte.
		rc, err = VerifyDigest(rc, d, start)
	}
	if err != nil {
		m.blobFailed(w, r, d, err)
		return
	}
	defer rc.Close()
	// A Read blocked on a piece returns once the client is gone.
	stop := context.AfterFunc(ctx, func() { _ = rc.Close() })
	defer stop()

	lw := &lazyWriter{w: w, status: status}
	toEnd := length < 0 || (size >= 0 && start+length == size)
	err = copyBlob(lw, rc, length, toEnd)
	m.metrics.blobBytes.Add(float64(lw.n))
	if err != nil {
		if !lw.started {
			m.blobFailed(w, r, d, err)
			return
		}
		if ctx.Err() == nil {
			m.logger.Warn("blob stream broken", zap.Stringer("digest", d), zap.Error(err))
		}
		// Never a clean short body: abort the connection.
		panic(http.ErrAbortHandler)
	}
	lw.start()
}

// Authorize confirms that the credentials in header may read blob d of
// repo on the upstream at base (see Authorizer.Authorize).
func (m *Mirror) Authorize(ctx context.Context, base *url.URL, repo string, d digest.Digest, header http.Header) (int64, error) {
	return m.auth.Authorize(ctx, base, repo, d, header)
}

// blobFailed answers a download that failed before any byte was sent.
func (m *Mirror) blobFailed(w http.ResponseWriter, r *http.Request, d digest.Digest, err error) {
	for _, k := range []string{"Content-Length", "Content-Range", "Docker-Content-Digest", "ETag", "Accept-Ranges", "Cache-Control"} {
		w.Header().Del(k)
	}
	if r.Context().Err() != nil {
		return // nobody to tell
	}
	m.logger.Warn("blob download failed", zap.Stringer("digest", d), zap.Error(err))
	switch {
	case errors.Is(err, peer.ErrInvalid):
		writeError(w, r, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid.WithMessage("invalid blob request"))
	case errors.Is(err, peer.ErrDigestMismatch), errors.Is(err, peer.ErrSizeMismatch):
		writeError(w, r, http.StatusBadGateway, errcode.ErrorCodeUnknown.WithMessage("the upstream's content does not match its digest"))
	default:
		writeError(w, r, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.WithMessage("blob download failed"))
	}
}

// holdBack is how many bytes at the end of a blob wait for the verification
// of the whole blob.
const holdBack = 64 << 10

// copyBufSize is the buffer a blob is copied to the client through: a read
// takes what is verified up to that much, so large reads mean few system
// calls per byte.
const copyBufSize = 1 << 20

var copyBufs = sync.Pool{New: func() any {
	b := make([]byte, copyBufSize)
	return &b
}}

// errShort: the blob ended before the length the upstream announced.
var errShort = errors.New("blob shorter than announced")

// copyBlob copies want bytes (-1: all) from r to w. When the range reaches
// the end of the blob, the last bytes are written only after r has ended
// with io.EOF, which the engine's reader returns only once the whole blob's
// digest is verified.
func copyBlob(w io.Writer, r io.Reader, want int64, toEnd bool) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	if want < 0 {
		_, err := io.CopyBuffer(w, r, *bp) // io.EOF, and so success, only after verification
		return err
	}
	tail := int64(0)
	if toEnd {
		tail = min(want, holdBack)
	}
	if n, err := io.CopyBuffer(w, io.LimitReader(r, want-tail), *bp); err != nil {
		return err
	} else if n < want-tail {
		return fmt.Errorf("%w: %d of %d bytes", errShort, n, want)
	}
	if !toEnd {
		return nil
	}
	last := make([]byte, tail)
	if _, err := io.ReadFull(r, last); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: tail missing", errShort)
		}
		return err
	}
	var one [1]byte
	for range 1000 { // a Read returns data, an error, or blocks; bounded anyway
		n, err := r.Read(one[:])
		if n > 0 {
			return errors.New("blob longer than announced")
		}
		if errors.Is(err, io.EOF) {
			_, err := w.Write(last)
			return err
		}
		if err != nil {
			return err
		}
	}
	return errors.New("blob reader made no progress")
}

// lazyWriter sends the status line with the first byte, so that a download
// failing before any byte still gets an error response.
type lazyWriter struct {
	w       http.ResponseWriter
	status  int
	started bool
	n       int64
}

func (l *lazyWriter) start() {
	if !l.started {
		l.started = true
		l.w.WriteHeader(l.status)
	}
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	l.start()
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}

func (m *Mirror) serveManifest(w http.ResponseWriter, r *http.Request) {
	base, repo, ok := m.target(w, r)
	if !ok {
		return
	}
	ref := mux.Vars(r)["reference"]
	if err := registrysource.ValidateReference(ref); err != nil {
		code := errcode.ErrorCodeTagInvalid
		if strings.Contains(ref, ":") {
			code = errcode.ErrorCodeDigestInvalid
		}
		writeError(w, r, http.StatusBadRequest, code.WithMessage("invalid manifest reference"))
		return
	}
	mf, err := m.manifests.Manifest(r.Context(), base, repo, ref, acceptList(r), clientAuth(r))
	if err != nil {
		m.upstreamError(w, r, err, errcode.ErrorCodeManifestUnknown)
		return
	}
	h := w.Header()
	h.Set("Content-Type", mf.MediaType)
	h.Set("Docker-Content-Digest", mf.Digest.String())
	h.Set("ETag", `"`+mf.Digest.String()+`"`)
	h.Set("Content-Length", strconv.Itoa(len(mf.Body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(mf.Body)
	}
}

// acceptList splits the client's Accept headers into media types.
func acceptList(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Accept") {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

// maxTagsBody bounds a tag list passed through.
const maxTagsBody = 16 << 20

func (m *Mirror) serveTags(w http.ResponseWriter, r *http.Request) {
	base, repo, ok := m.target(w, r)
	if !ok {
		return
	}
	raw, err := registrysource.TagsURL(base, repo)
	if err != nil {
		writeError(w, r, http.StatusBadRequest, errcode.ErrorCodeNameInvalid.WithMessage("invalid repository name"))
		return
	}
	u, _ := url.Parse(raw)
	q := url.Values{}
	for _, k := range []string{"n", "last"} {
		if v := r.URL.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	resp, err := m.get(r, u.String())
	if err != nil {
		m.upstreamError(w, r, err, errcode.ErrorCodeNameUnknown)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		m.upstreamError(w, r, responseError(resp), errcode.ErrorCodeNameUnknown)
		return
	}
	for _, k := range []string{"Content-Type", "Link"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = io.Copy(w, io.LimitReader(resp.Body, maxTagsBody))
	}
}

// serveBase answers /v2/ as the upstream does for these credentials, so
// that a runtime learns the upstream's challenge and gets its own token.
// When the upstream cannot answer (connection refused, reset or timed out,
// or a 5xx), the mirror answers the ping itself, 200 with "{}": clients
// that ping first (crane, skopeo, regctl) then reach what the node can
// still serve through the outage, and every other request is still decided
// as before (stale manifests, blobs within Config.AuthGrace, 503 otherwise).
// A definite answer of the upstream (401 with its challenge, 403, 429) goes
// to the client as it is.
func (m *Mirror) serveBase(w http.ResponseWriter, r *http.Request) {
	base, err := m.upstream(r)
	if err != nil {
		writeError(w, r, http.StatusForbidden, errcode.ErrorCodeDenied.WithMessage(err.Error()))
		return
	}
	resp, err := m.get(r, base.String()+"/v2/")
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		if unreachable(err) {
			m.pingOutage(w, r, base, err)
			return
		}
		m.upstreamError(w, r, err, errcode.ErrorCodeUnknown)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		m.pingOutage(w, r, base, responseError(resp))
		return
	}
	if resp.StatusCode != http.StatusOK {
		m.upstreamError(w, r, responseError(resp), errcode.ErrorCodeUnknown)
		return
	}
	writeBase(w, r)
}

// pingOutage answers /v2/ for an upstream that cannot answer.
func (m *Mirror) pingOutage(w http.ResponseWriter, r *http.Request, base *url.URL, err error) {
	m.logger.Warn("upstream unreachable; answering /v2/ from the mirror", zap.String("upstream", base.Host), zap.Error(err))
	m.metrics.outagePings.Inc()
	writeBase(w, r)
}

// writeBase writes the answer to a /v2/ ping: 200 with "{}" (the
// Docker-Distribution-API-Version header is set by ServeHTTP).
func writeBase(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, "{}")
	}
}

// get sends a GET to the upstream with the client's credentials.
func (m *Mirror) get(r *http.Request, u string) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(r.Context(), headTimeout)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header = clientAuth(r)
	req.Header.Set("Accept", "application/json")
	resp, err := m.hc.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// maxErrorBody bounds an upstream error body passed through.
const maxErrorBody = 64 << 10

// responseError turns a non-2xx answer into the error registrysource
// returns for its own calls.
func responseError(resp *http.Response) *registrysource.ResponseError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	h := http.Header{}
	for _, k := range []string{"WWW-Authenticate", "Content-Type", "Retry-After"} {
		for _, v := range resp.Header.Values(k) {
			h.Add(k, v)
		}
	}
	return &registrysource.ResponseError{
		Method: resp.Request.Method, URL: redact.URL(resp.Request.URL.String()),
		StatusCode: resp.StatusCode, Header: h, Body: body,
	}
}

// upstreamError answers a failed upstream call: a definite answer of the
// upstream goes to the client as it was (status, challenge, JSON body);
// anything else is mapped to our own error. notFound is the code of a 404
// without a body.
func (m *Mirror) upstreamError(w http.ResponseWriter, r *http.Request, err error, notFound errcode.ErrorCode) {
	var re *registrysource.ResponseError
	if errors.As(err, &re) && re.StatusCode >= 400 && re.StatusCode < 500 {
		for _, k := range []string{"WWW-Authenticate", "Retry-After"} {
			for _, v := range re.Header.Values(k) {
				w.Header().Add(k, v)
			}
		}
		if re.Errors() != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(re.StatusCode)
			if r.Method != http.MethodHead {
				_, _ = w.Write(re.Body)
			}
			return
		}
		code := errcode.ErrorCodeUnknown
		switch re.StatusCode {
		case http.StatusUnauthorized:
			code = errcode.ErrorCodeUnauthorized
		case http.StatusForbidden:
			code = errcode.ErrorCodeDenied
		case http.StatusNotFound:
			code = notFound
		case http.StatusTooManyRequests:
			code = errcode.ErrorCodeTooManyRequests
		}
		writeError(w, r, re.StatusCode, code.WithMessage("upstream registry: "+http.StatusText(re.StatusCode)))
		return
	}
	if r.Context().Err() != nil {
		return
	}
	switch {
	case errors.Is(err, registrysource.ErrInvalid):
		writeError(w, r, http.StatusBadRequest, errcode.ErrorCodeNameInvalid.WithMessage("invalid name or reference"))
	case errors.Is(err, registrysource.ErrDigestMismatch):
		writeError(w, r, http.StatusBadGateway, errcode.ErrorCodeUnknown.WithMessage("the upstream's content does not match its digest"))
	case errors.Is(err, registrysource.ErrTooLarge):
		writeError(w, r, http.StatusBadGateway, errcode.ErrorCodeManifestInvalid.WithMessage("the upstream's manifest is too large"))
	case errors.Is(err, errNotAllowed):
		writeError(w, r, http.StatusForbidden, errcode.ErrorCodeDenied.WithMessage(err.Error()))
	default:
		m.logger.Warn("upstream unreachable", zap.Error(err))
		writeError(w, r, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.WithMessage("upstream registry unreachable"))
	}
}

// writeError writes errs as distribution-spec JSON with status (no body
// for HEAD).
func writeError(w http.ResponseWriter, r *http.Request, status int, errs ...errcode.Error) {
	body, err := errcode.Errors(toErrors(errs)).MarshalJSON()
	if err != nil {
		body = []byte(`{"errors":[{"code":"UNKNOWN","message":"unknown error"}]}`)
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Content-Range")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

func toErrors(errs []errcode.Error) []error {
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return out
}

// upstreamManifests fetches every manifest from the upstream.
type upstreamManifests struct{ reg *registrysource.Client }

func (u upstreamManifests) Manifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (*registrysource.Manifest, error) {
	return u.reg.GetManifest(ctx, base, repo, ref, accept, header)
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
