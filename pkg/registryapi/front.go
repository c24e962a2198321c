// Package registryapi is the one read front of the OCI distribution API that
// Damselfly's registry surfaces share: dfdaemon's mirror and the
// registry-cache answer every request through it, and differ only in the
// backends they plug in, as distribution's registry/handlers serve every
// storage and its pull-through proxy.
//
//   - GET, HEAD /v2/: the upstream's answer, passed through (a 401 with its
//     WWW-Authenticate challenge included, so the client gets its own token
//     from the upstream's realm). When the upstream cannot answer
//     (unreachable, timed out, 5xx), 200 "{}" of our own, so that clients
//     which ping first (crane, skopeo, regctl) reach what can still be
//     served; the ping grants nothing.
//   - GET, HEAD /v2/<name>/manifests/<tag|digest>: from the manifest cache
//     (Manifests): Content-Type, Content-Length, Docker-Content-Digest and
//     ETag; If-None-Match answered 304; "Warning: 110" when served stale.
//   - GET, HEAD /v2/<name>/blobs/<sha256 digest>: from the Blobs backend
//     (PassThrough streams from the upstream; dfdaemon's is peer to peer).
//   - GET, HEAD /v2/<name>/tags/list and /v2/_catalog: passed through (n
//     and last kept).
//   - Any other method on these routes, and uploads: 405 UNSUPPORTED with
//     Allow: GET, HEAD. A path with "..", "//" or an encoded dot segment:
//     301 to its clean form, as a registry answers. Any other path: 404
//     NOT_FOUND.
//
// Which registry a request goes to, and the repository's name there, is
// the Upstreams' choice (Fixed for one registry).
//
// A GET or HEAD of /v2/<name>/manifests/<reference> whose name and
// reference follow the distribution grammar is recognised by hand (the
// grammar of pkg/source/registrysource, fuzzed against distribution's route
// expressions) and answered with the header values the cache prepared when
// it fetched the manifest: a hit formats nothing. Every other request is
// routed with distribution's v2 routes.
//
// Errors are distribution error JSON (errcode), mapped to a status in one
// place (errors.go): invalid names, tags and digests are 400 (NAME_INVALID,
// TAG_INVALID, DIGEST_INVALID) and never reach the upstream; an upstream
// the Upstreams refuses is 403 DENIED; a 404 is MANIFEST_UNKNOWN,
// BLOB_UNKNOWN or NAME_UNKNOWN by route, unless the upstream sent its own
// error JSON; the upstream's 401, 403 and 429 reach the client with their
// challenge and Retry-After; an upstream that answers 5xx or content that
// does not match its digest is 502 UPSTREAM_ERROR; one that cannot be
// reached is 503 UNAVAILABLE.
package registryapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/gorilla/mux"
	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// Manifests answers manifest requests: manifestcache.Cache. Errors are
// those of manifestcache.Cache.Get.
type Manifests interface {
	Get(ctx context.Context, req manifestcache.Request) (*manifestcache.Manifest, error)
}

var _ Manifests = (*manifestcache.Cache)(nil)

// Upstreams picks the registry a request is for.
type Upstreams interface {
	// Upstream returns the base URL (scheme://host[:port]) of the registry
	// r goes to, and the name of repository name there (name itself, or
	// the name the registry knows it by, such as Docker Hub's "library/"
	// prefix). name is "" for /v2/. An error wrapping ErrNotAllowed is
	// 403 DENIED with the error's text; any other error is answered by the
	// error mapping.
	Upstream(r *http.Request, name string) (base *url.URL, repo string, err error)
}

// Blob is one blob request, validated: Repo follows the distribution
// grammar and Digest is a valid sha256 digest.
type Blob struct {
	Upstream *url.URL
	Repo     string
	Digest   digest.Digest
}

// Blobs serves GET and HEAD of blobs.
type Blobs interface {
	// ServeBlob answers r for b. It returns a non-nil error only when it
	// has written nothing (no status; headers it set are removed): the
	// front then answers the error through its one error mapping (an
	// errcode.Error with its own status, the upstream's answer, ...). A
	// failure after the first byte aborts the response (panic
	// http.ErrAbortHandler): a client never sees a clean short body.
	ServeBlob(w http.ResponseWriter, r *http.Request, b Blob) error
}

// ErrNotAllowed: the request names a registry the front may not reach.
var ErrNotAllowed = errors.New("upstream registry not allowed")

// Option configures a Front.
type Option func(*Front)

// WithHTTPClient sets the client of the front's pass-through requests (/v2/
// and tag lists). The default uses no proxy and keeps Go's redirect policy,
// which drops Authorization on a hop to another host.
func WithHTTPClient(hc *http.Client) Option { return func(f *Front) { f.pass.hc = hc } }

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option { return func(f *Front) { f.log = l } }

// WithOutagePings counts each /v2/ the front answers itself because the
// upstream could not.
func WithOutagePings(c prometheus.Counter) Option { return func(f *Front) { f.outagePings = c } }

// Front is the read front. It is an http.Handler for /v2/ paths, safe for
// concurrent use.
type Front struct {
	manifests   Manifests
	upstreams   Upstreams
	blobs       Blobs
	pass        passer
	router      *mux.Router
	log         *zap.Logger
	outagePings prometheus.Counter
}

// New returns a front serving manifests from manifests, blobs from blobs,
// each request against the registry upstreams picks.
func New(manifests Manifests, upstreams Upstreams, blobs Blobs, opts ...Option) (*Front, error) {
	if manifests == nil || upstreams == nil || blobs == nil {
		return nil, errors.New("registryapi: manifests, upstreams and blobs are required")
	}
	f := &Front{manifests: manifests, upstreams: upstreams, blobs: blobs, log: zap.NewNop()}
	for _, o := range opts {
		o(f)
	}
	if f.pass.hc == nil {
		f.pass.hc = DefaultHTTPClient()
	}
	f.pass.log = f.log
	f.router = f.newRouter()
	return f, nil
}

// DefaultHTTPClient is a client for upstream registries: it ignores proxy
// environment variables (this node may be the proxy they name) and keeps
// Go's redirect policy, which drops Authorization on a hop to another host.
func DefaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return &http.Client{Transport: t}
}

// Header values set on every answer, shared.
var (
	apiVersionValue = []string{apiVersion}
	allowValue      = []string{"GET, HEAD"}
)

const (
	apiVersionHeader = "Docker-Distribution-Api-Version"
	apiVersion       = "registry/2.0"
)

// ServeHTTP routes a /v2/ request.
func (f *Front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header()[apiVersionHeader] = apiVersionValue
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if name, ref, ok := manifestPath(r.URL.Path); ok {
			f.serveManifest(w, r, name, ref)
			return
		}
	}
	f.router.ServeHTTP(w, r)
}

// newRouter routes with distribution's v2 routes, as a registry does: a
// path with "..", "//" or an encoded dot segment is redirected (301) to its
// clean form, "/v2" to "/v2/"; a path no route matches is 404 NOT_FOUND,
// whatever the method; a method other than GET or HEAD on a route is 405
// UNSUPPORTED.
func (f *Front) newRouter() *mux.Router {
	// A router of our own: v2.Router() is shared by the whole process.
	r := v2.RouterWithPrefix("")
	read := func(h func(w http.ResponseWriter, r *http.Request, vars map[string]string)) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				w.Header()["Allow"] = allowValue
				serveError(w, errcode.ErrorCodeUnsupported.WithMessage("the registry API here is read-only"), errcode.ErrorCodeUnknown)
				return
			}
			h(w, r, mux.Vars(r))
		})
	}
	r.Get(v2.RouteNameBase).Handler(read(func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
		f.serveBase(w, r)
	}))
	r.Get(v2.RouteNameManifest).Handler(read(func(w http.ResponseWriter, r *http.Request, v map[string]string) {
		if err := checkNameRef(v["name"], v["reference"]); err != nil {
			serveError(w, err, errcode.ErrorCodeManifestUnknown)
			return
		}
		f.serveManifest(w, r, v["name"], v["reference"])
	}))
	r.Get(v2.RouteNameBlob).Handler(read(func(w http.ResponseWriter, r *http.Request, v map[string]string) {
		f.serveBlob(w, r, v["name"], v["digest"])
	}))
	r.Get(v2.RouteNameTags).Handler(read(func(w http.ResponseWriter, r *http.Request, v map[string]string) {
		f.serveTags(w, r, v["name"])
	}))
	r.Get(v2.RouteNameCatalog).Handler(read(func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
		f.serveCatalog(w, r)
	}))
	upload := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Allow"] = allowValue
		serveError(w, errcode.ErrorCodeUnsupported.WithMessage("the registry API here is read-only"), errcode.ErrorCodeUnknown)
	})
	r.Get(v2.RouteNameBlobUpload).Handler(upload)
	r.Get(v2.RouteNameBlobUploadChunk).Handler(upload)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		serveError(w, ErrorCodeNotFound, errcode.ErrorCodeUnknown)
	})
	return r
}

// target resolves the upstream and the repository of a request for name,
// answering the client itself when it cannot.
func (f *Front) target(w http.ResponseWriter, r *http.Request, name string, notFound errcode.ErrorCode) (*url.URL, string, bool) {
	base, repo, err := f.upstreams.Upstream(r, name)
	if err != nil {
		f.fail(w, r, nil, name, err, notFound)
		return nil, "", false
	}
	if repo != name && registrysource.ValidateRepository(repo) != nil {
		serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(repo), notFound)
		return nil, "", false
	}
	return base, repo, true
}

func (f *Front) serveBlob(w http.ResponseWriter, r *http.Request, name, dgst string) {
	if registrysource.ValidateRepository(name) != nil {
		serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(name), errcode.ErrorCodeBlobUnknown)
		return
	}
	d, err := digest.Parse(dgst)
	if err != nil || d.Algorithm() != digest.SHA256 {
		serveError(w, errcode.ErrorCodeDigestInvalid.WithDetail(dgst), errcode.ErrorCodeBlobUnknown)
		return
	}
	base, repo, ok := f.target(w, r, name, errcode.ErrorCodeBlobUnknown)
	if !ok {
		return
	}
	if err := f.blobs.ServeBlob(w, r, Blob{Upstream: base, Repo: repo, Digest: d}); err != nil {
		f.fail(w, r, base, repo+"@"+d.String(), err, errcode.ErrorCodeBlobUnknown)
	}
}

// manifestPath splits a path /v2/<name>/manifests/<reference> whose name
// and reference are valid (what v2.Router() would match as the manifest
// route, with these variables). ok is false for anything else, which goes
// to the router.
func manifestPath(p string) (name, ref string, ok bool) {
	rest, found := strings.CutPrefix(p, "/v2/")
	if !found {
		return "", "", false
	}
	// A reference has no "/": it follows the last "/manifests/".
	i := strings.LastIndex(rest, manifestsSep)
	if i < 0 {
		return "", "", false
	}
	name, ref = rest[:i], rest[i+len(manifestsSep):]
	if registrysource.ValidateRepository(name) != nil || registrysource.ValidateReference(ref) != nil {
		return "", "", false
	}
	return name, ref, true
}

const manifestsSep = "/manifests/"

// refError is the error for an invalid manifest reference.
func refError(ref string) error {
	if strings.Contains(ref, ":") {
		return errcode.ErrorCodeDigestInvalid.WithDetail(ref)
	}
	return errcode.ErrorCodeTagInvalid.WithDetail(ref)
}

// checkNameRef validates a repository name and a manifest reference before
// anything reaches the cache or the upstream.
func checkNameRef(repo, ref string) error {
	if registrysource.ValidateRepository(repo) != nil {
		return errcode.ErrorCodeNameInvalid.WithDetail(repo)
	}
	if registrysource.ValidateReference(ref) != nil {
		return refError(ref)
	}
	return nil
}
