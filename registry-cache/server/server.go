// Package server is the registry-cache's /v2/ surface: the read side of the
// OCI distribution API in front of an upstream registry, with manifests
// served through pkg/manifestcache and everything else passed through.
//
//   - GET /v2/: the upstream's answer, passed through (a 401 with its
//     WWW-Authenticate challenge included, so the client gets its own token
//     from the upstream's realm and sends it back to us). When the upstream
//     cannot answer (unreachable, timed out, 5xx), 200 "{}" of our own, so
//     that clients which ping first reach the manifests served stale.
//   - GET, HEAD /v2/<name>/manifests/<tag|digest>: from the cache
//     (Content-Type, Content-Length, Docker-Content-Digest, ETag; a Warning
//     header when served stale, If-None-Match answered with 304).
//   - GET /v2/<name>/tags/list and GET, HEAD /v2/<name>/blobs/<digest>:
//     streamed from the upstream with the client's own headers (Authorization,
//     Accept, Range and the conditional headers), following redirects (Go's
//     client drops Authorization on a hop to another host); never cached.
//
// A GET or HEAD of /v2/<name>/manifests/<reference> whose name and
// reference follow the distribution grammar is recognised by hand (the
// grammar in pkg/source/registrysource, fuzzed against distribution's route
// regular expressions) and answered from the cache with the header values
// the cache prepared when it fetched the manifest. Every other request is
// matched with distribution's v2.Router(). Errors are
// distribution error JSON (errcode), mapped to a status in one place,
// serveError: invalid names, tags and digests are 400 (NAME_INVALID,
// TAG_INVALID, DIGEST_INVALID) and never reach the upstream; an unknown
// manifest is 404 MANIFEST_UNKNOWN; the upstream's 401, 403 and 429 reach the
// client with its status, error body and challenge headers; an upstream
// that answers 5xx or with content that does not match its digest is 502
// UPSTREAM_ERROR; one that cannot be reached or times out is 503 UNAVAILABLE.
//
// A Server has a default upstream (for Handler), and the Serve* methods take
// the upstream per call, so a mirror that picks the upstream per request
// (dfdaemon) serves manifests through the same code.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/gorilla/mux"
	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

const errGroup = "damselfly.registry-cache"

var (
	// ErrorCodeUpstream is the error code of a 502: the upstream registry
	// answered with a server error, or with content that does not match its
	// digest.
	ErrorCodeUpstream = errcode.Register(errGroup, errcode.ErrorDescriptor{
		Value:          "UPSTREAM_ERROR",
		Message:        "upstream registry error",
		Description:    "The upstream registry answered with a server error or with content that does not match its digest.",
		HTTPStatusCode: http.StatusBadGateway,
	})
	// ErrorCodeNotFound is the error code of a 404 for a path that is not
	// part of the distribution read API.
	ErrorCodeNotFound = errcode.Register(errGroup, errcode.ErrorDescriptor{
		Value:          "NOT_FOUND",
		Message:        "no such endpoint",
		Description:    "The path is not part of the registry read API.",
		HTTPStatusCode: http.StatusNotFound,
	})
)

// apiVersionHeader is sent on every answer, as registries do.
const (
	apiVersionHeader = "Docker-Distribution-Api-Version"
	apiVersion       = "registry/2.0"
	maxErrorBody     = 64 << 10
)

// Option configures a Server.
type Option func(*Server)

// WithHTTPClient sets the client that passes requests through to upstreams
// (default: a client with a transport that uses no proxy). Its redirect
// policy applies to blob redirects.
func WithHTTPClient(hc *http.Client) Option {
	return func(s *Server) { s.hc = hc }
}

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(s *Server) { s.log = l }
}

// WithHTTPMetrics instruments Handler with m, under the handler label
// "registry".
func WithHTTPMetrics(m *httpx.Metrics) Option {
	return func(s *Server) { s.httpm = m }
}

// Server serves the /v2/ read API. It is safe for concurrent use.
type Server struct {
	cache    *manifestcache.Cache
	upstream *url.URL
	hc       *http.Client
	log      *zap.Logger
	httpm    *httpx.Metrics
}

// New returns a server answering manifests from c. upstream is the registry
// Handler serves (scheme://host[:port]); it may be nil when only the Serve*
// methods are used.
func New(c *manifestcache.Cache, upstream *url.URL, opts ...Option) (*Server, error) {
	if c == nil {
		return nil, errors.New("server: nil cache")
	}
	if upstream != nil {
		if err := checkUpstream(upstream); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
	}
	s := &Server{cache: c, upstream: upstream, log: zap.NewNop()}
	for _, o := range opts {
		o(s)
	}
	if s.hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.Proxy = nil
		s.hc = &http.Client{Transport: t}
	}
	return s, nil
}

func checkUpstream(u *url.URL) error {
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("upstream %q: must be an http(s) URL with a host", redact.URL(u.String()))
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("upstream %q: no user info, query or fragment", redact.URL(u.String()))
	}
	return nil
}

// Handler returns the /v2/ surface for the server's upstream, instrumented
// when WithHTTPMetrics was given.
func (s *Server) Handler() http.Handler {
	var h http.Handler = s
	if s.httpm != nil {
		h = s.httpm.Instrument("registry", h, s.log)
	}
	return h
}

// ServeHTTP routes a /v2/ request to the Serve* method for it, against the
// server's upstream.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.upstream == nil {
		serveError(w, errcode.ErrorCodeUnavailable.WithMessage("no upstream registry configured"))
		return
	}
	if repo, ref, ok := manifestPath(r.URL.Path); ok {
		s.serveManifest(w, r, s.upstream, repo, ref)
		return
	}
	var m mux.RouteMatch
	if !v2.Router().Match(r, &m) || m.Route == nil {
		s.serveUnmatched(w, r)
		return
	}
	switch m.Route.GetName() {
	case v2.RouteNameBase:
		s.ServeBase(w, r, s.upstream)
	case v2.RouteNameManifest:
		s.ServeManifest(w, r, s.upstream, m.Vars["name"], m.Vars["reference"])
	case v2.RouteNameTags:
		s.ServeTags(w, r, s.upstream, m.Vars["name"])
	case v2.RouteNameBlob:
		d, err := digest.Parse(m.Vars["digest"])
		if err != nil {
			serveError(w, errcode.ErrorCodeDigestInvalid.WithDetail(m.Vars["digest"]))
			return
		}
		s.ServeBlob(w, r, s.upstream, m.Vars["name"], d)
	default:
		// Uploads and the catalog: this is a read-only cache.
		serveError(w, errcode.ErrorCodeUnsupported.WithMessage("the registry cache serves pulls only"))
	}
}

// manifestPath splits a path /v2/<name>/manifests/<reference> whose name
// and reference are valid (what v2.Router() would match as the manifest
// route, with these variables, and ServeManifest would accept). ok is false
// for anything else, which goes to the router.
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

// serveUnmatched answers a path v2.Router() did not match: a 400 when it
// has the shape of a manifest, blob or tags path with an invalid part, else
// a 404.
func (s *Server) serveUnmatched(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p == "/v2" {
		s.ServeBase(w, r, s.upstream)
		return
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		serveError(w, ErrorCodeNotFound)
		return
	}
	for _, sep := range []string{"/manifests/", "/blobs/", "/tags/"} {
		i := strings.LastIndex(rest, sep)
		if i < 0 {
			continue
		}
		name, ref := rest[:i], rest[i+len(sep):]
		if registrysource.ValidateRepository(name) != nil {
			serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(name))
			return
		}
		switch sep {
		case "/manifests/":
			serveError(w, refError(ref))
			return
		case "/blobs/":
			if !strings.HasPrefix(ref, "uploads") {
				serveError(w, errcode.ErrorCodeDigestInvalid.WithDetail(ref))
				return
			}
		}
	}
	serveError(w, ErrorCodeNotFound)
}

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

// ServeManifest serves GET or HEAD of a manifest of repo (tag or digest
// ref) from upstream, through the cache. The client's Accept values and
// Authorization header go with the request; the answer carries
// Content-Type, Content-Length, Docker-Content-Digest and ETag. Any other
// method is 405 UNSUPPORTED; errors are errcode JSON (see the package doc).
func (s *Server) ServeManifest(w http.ResponseWriter, r *http.Request, upstream *url.URL, repo, ref string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		serveError(w, errcode.ErrorCodeUnsupported.WithMessage("the registry cache serves pulls only"))
		return
	}
	if err := checkNameRef(repo, ref); err != nil {
		serveError(w, err)
		return
	}
	s.serveManifest(w, r, upstream, repo, ref)
}

// Header values set on every manifest answer, shared (see
// manifestcache.Headers).
var (
	apiVersionValue = []string{apiVersion}
	staleWarning    = []string{`110 - "Response is Stale"`}
)

// serveManifest is ServeManifest for a valid repo and ref (any method: a
// write is 405). The header
// values come prepared from the cache: a hit formats nothing.
func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, upstream *url.URL, repo, ref string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		serveError(w, errcode.ErrorCodeUnsupported.WithMessage("the registry cache serves pulls only"))
		return
	}
	m, err := s.cache.Get(r.Context(), manifestcache.Request{
		Upstream:      upstream,
		Repo:          repo,
		Ref:           ref,
		Accept:        r.Header.Values("Accept"),
		Authorization: r.Header.Get("Authorization"),
	})
	if err != nil {
		s.fail(w, r, upstream, repo+":"+ref, err)
		return
	}
	hd := m.Headers
	if hd == nil {
		hd = manifestcache.NewHeaders(m.Digest, m.MediaType, len(m.Body))
	}
	// Canonical keys, assigned directly: net/http copies the header map
	// before it writes it.
	h := w.Header()
	h["Content-Type"] = hd.ContentType
	h["Docker-Content-Digest"] = hd.Digest
	h["Etag"] = hd.ETag
	h[apiVersionHeader] = apiVersionValue
	if m.Stale {
		h["Warning"] = staleWarning
	}
	if inm := r.Header["If-None-Match"]; len(inm) > 0 && etagMatch(inm, hd.ETag[0]) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Length"] = hd.ContentLength
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.Body)
	}
}

// etagMatch reports whether If-None-Match values name etag (weakly
// compared, as RFC 9110 asks for If-None-Match) or are "*".
func etagMatch(values []string, etag string) bool {
	for _, header := range values {
		for v := range strings.SplitSeq(header, ",") {
			v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
			if v == "*" || v == etag {
				return true
			}
		}
	}
	return false
}

// ServeBase passes GET /v2/ through to upstream, challenge included. When
// the upstream cannot answer (unreachable, timed out, 5xx) it answers the
// ping itself, 200 with "{}", so that clients which ping first reach the
// manifests the cache can serve stale; that grants nothing, every later
// request is decided on its own.
func (s *Server) ServeBase(w http.ResponseWriter, r *http.Request, upstream *url.URL) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		serveError(w, errcode.ErrorCodeUnsupported)
		return
	}
	u := *upstream
	u.Path = strings.TrimRight(upstream.Path, "/") + "/v2/"
	u.RawPath, u.RawQuery = "", ""
	resp, err := s.forward(r, u.String())
	if err == nil && resp.StatusCode < 500 {
		defer resp.Body.Close()
		s.relay(w, r, resp, u.String(), "base")
		return
	}
	if err == nil {
		err = fmt.Errorf("status %d", resp.StatusCode)
		resp.Body.Close()
	}
	if r.Context().Err() != nil {
		return
	}
	s.log.Warn("upstream unreachable; answering /v2/ from the cache", zap.String("upstream", upstream.Host), zap.Error(err))
	h := w.Header()
	h.Set(apiVersionHeader, apiVersion)
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = io.WriteString(w, "{}")
	}
}

// ServeTags passes GET /v2/<repo>/tags/list through to upstream, with the
// n and last query parameters.
func (s *Server) ServeTags(w http.ResponseWriter, r *http.Request, upstream *url.URL, repo string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		serveError(w, errcode.ErrorCodeUnsupported)
		return
	}
	target, err := registrysource.TagsURL(upstream, repo)
	if err != nil {
		serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(repo))
		return
	}
	q := url.Values{}
	for _, k := range []string{"n", "last"} {
		if v := r.URL.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	s.pass(w, r, target, repo)
}

// ServeBlob streams GET or HEAD of blob d of repo from upstream, with the
// client's Authorization, Range and conditional headers, following
// redirects to blob storage. Nothing is cached.
func (s *Server) ServeBlob(w http.ResponseWriter, r *http.Request, upstream *url.URL, repo string, d digest.Digest) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		serveError(w, errcode.ErrorCodeUnsupported.WithMessage("the registry cache serves pulls only"))
		return
	}
	if err := registrysource.ValidateRepository(repo); err != nil {
		serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(repo))
		return
	}
	target, err := registrysource.BlobURL(upstream, repo, d)
	if err != nil {
		serveError(w, errcode.ErrorCodeDigestInvalid.WithDetail(d.String()))
		return
	}
	s.pass(w, r, target, repo+"@"+d.String())
}

// forwardedHeaders are the client request headers a pass-through sends on.
var forwardedHeaders = []string{
	"Accept", "Accept-Encoding", "Authorization", "Range", "If-Range",
	"If-None-Match", "If-Modified-Since", "User-Agent",
}

// returnedHeaders are the upstream response headers a pass-through copies.
var returnedHeaders = []string{
	"Content-Type", "Content-Length", "Content-Range", "Content-Encoding", "Accept-Ranges",
	"Docker-Content-Digest", apiVersionHeader, "ETag", "Last-Modified", "Cache-Control",
	"WWW-Authenticate", "Link", "Retry-After", "Location",
}

// pass forwards r to target and streams the answer back. A 4xx is passed
// through as errcode JSON (the upstream's own when it sent some); a 5xx
// becomes 502, an unreachable upstream 503.
func (s *Server) pass(w http.ResponseWriter, r *http.Request, target, what string) {
	resp, err := s.forward(r, target)
	if err != nil {
		s.fail(w, r, nil, what, fmt.Errorf("%w: %w", manifestcache.ErrUnavailable, err))
		return
	}
	defer resp.Body.Close()
	s.relay(w, r, resp, target, what)
}

// forward sends r's method and forwardedHeaders to target.
func (s *Server) forward(r *http.Request, target string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, target, nil)
	if err != nil {
		return nil, err
	}
	for _, k := range forwardedHeaders {
		for _, v := range r.Header.Values(k) {
			req.Header.Add(k, v)
		}
	}
	if req.Header.Get("Accept-Encoding") == "" {
		// Keep the bytes as the upstream sends them: no transparent gzip.
		req.Header.Set("Accept-Encoding", "identity")
	}
	return s.hc.Do(req)
}

// relay answers r with the upstream's resp (see pass).
func (s *Server) relay(w http.ResponseWriter, r *http.Request, resp *http.Response, target, what string) {
	if resp.StatusCode >= 400 {
		re := &registrysource.ResponseError{Method: r.Method, URL: redact.URL(target), StatusCode: resp.StatusCode,
			Header: resp.Header, Body: readCapped(resp.Body, maxErrorBody)}
		if resp.StatusCode >= 500 {
			s.fail(w, r, nil, what, fmt.Errorf("%w: %w", manifestcache.ErrUnavailable, re))
			return
		}
		s.fail(w, r, nil, what, re)
		return
	}
	h := w.Header()
	for _, k := range returnedHeaders {
		for _, v := range resp.Header.Values(k) {
			h.Add(k, v)
		}
	}
	if h.Get(apiVersionHeader) == "" {
		h.Set(apiVersionHeader, apiVersion)
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, resp.Body); err != nil && r.Context().Err() == nil {
		s.log.Info("pass-through interrupted", zap.String("what", what), zap.Error(err))
	}
}

func readCapped(r io.Reader, n int64) []byte {
	b, _ := io.ReadAll(io.LimitReader(r, n))
	return b
}

// fail logs a failed request where it is handled and answers it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, upstream *url.URL, what string, err error) {
	status := serveError(w, err)
	if status >= 500 && r.Context().Err() == nil {
		fields := []zap.Field{zap.String("method", r.Method), zap.String("what", what), zap.Int("status", status), zap.Error(err)}
		if upstream != nil {
			fields = append(fields, zap.String("upstream", upstream.Host))
		}
		s.log.Warn("registry request failed", fields...)
	}
}

// serveError writes err as distribution error JSON with its status, and
// returns the status. It is the one place errors become statuses.
func serveError(w http.ResponseWriter, err error) int {
	h := w.Header()
	h.Set(apiVersionHeader, apiVersion)
	var (
		ec errcode.ErrorCoder
		re *registrysource.ResponseError
	)
	switch {
	case errors.As(err, &ec):
		// Already an errcode: our own validation.
	case errors.Is(err, manifestcache.ErrBadRequest):
		err = errcode.ErrorCodeNameInvalid.WithMessage(err.Error())
	case errors.Is(err, manifestcache.ErrNotFound):
		err = errcode.ErrorCodeManifestUnknown
	case errors.Is(err, manifestcache.ErrUnavailable) && errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests:
		copyHeaders(h, re.Header, "Retry-After")
		err = errcode.ErrorCodeTooManyRequests
	case errors.Is(err, manifestcache.ErrUnavailable) && errors.As(err, &re) && re.StatusCode == http.StatusServiceUnavailable:
		copyHeaders(h, re.Header, "Retry-After")
		err = errcode.ErrorCodeUnavailable.WithMessage("upstream registry unavailable")
	case errors.Is(err, manifestcache.ErrUnavailable) && unreachable(err):
		err = errcode.ErrorCodeUnavailable.WithMessage("upstream registry unreachable")
	case errors.Is(err, manifestcache.ErrUnavailable):
		err = ErrorCodeUpstream
	case errors.As(err, &re):
		return servePassedError(w, re)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		err = errcode.ErrorCodeUnavailable.WithMessage("request ended before the upstream answered")
	default:
		err = errcode.ErrorCodeUnknown
	}
	var status int
	if c, ok := err.(errcode.ErrorCoder); ok {
		status = c.ErrorCode().Descriptor().HTTPStatusCode
	}
	_ = errcode.ServeJSON(w, err)
	return status
}

// servePassedError answers with the upstream's 4xx: its status, challenge
// and rate-limit headers, and its error JSON when it sent some.
func servePassedError(w http.ResponseWriter, re *registrysource.ResponseError) int {
	h := w.Header()
	copyHeaders(h, re.Header, "WWW-Authenticate", "Retry-After")
	var errs errcode.Errors
	if up := re.Errors(); len(up) > 0 {
		errs = up
	} else {
		switch re.StatusCode {
		case http.StatusUnauthorized:
			errs = errcode.Errors{errcode.ErrorCodeUnauthorized}
		case http.StatusForbidden:
			errs = errcode.Errors{errcode.ErrorCodeDenied}
		case http.StatusTooManyRequests:
			errs = errcode.Errors{errcode.ErrorCodeTooManyRequests}
		case http.StatusNotFound:
			errs = errcode.Errors{errcode.ErrorCodeNameUnknown.WithMessage("not found upstream")}
		default:
			errs = errcode.Errors{ErrorCodeUpstream.WithMessage("upstream answered " + strconv.Itoa(re.StatusCode))}
		}
	}
	status := re.StatusCode
	if status < 400 || status > 499 {
		status = http.StatusBadGateway
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(errs); err != nil {
		status = http.StatusBadGateway
		buf.Reset()
		buf.WriteString(`{"errors":[{"code":"UPSTREAM_ERROR","message":"upstream registry error"}]}` + "\n")
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
	return status
}

func copyHeaders(dst, src http.Header, keys ...string) {
	for _, k := range keys {
		for _, v := range src.Values(k) {
			dst.Add(k, v)
		}
	}
}

// unreachable reports a failure to reach the upstream at all: a name that
// does not resolve, a refused or failed dial, or a timeout.
func unreachable(err error) bool {
	var (
		ne  net.Error
		oe  *net.OpError
		dns *net.DNSError
	)
	return (errors.As(err, &oe) && oe.Op == "dial") || errors.As(err, &dns) ||
		(errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, context.DeadlineExceeded)
}
