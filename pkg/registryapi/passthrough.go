package registryapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// pingTimeout bounds the /v2/ request to the upstream: an upstream that
// does not answer a ping in that time is treated as down.
const pingTimeout = 30 * time.Second

// maxErrorBody bounds an upstream error body passed through.
const maxErrorBody = 64 << 10

// serveBase passes /v2/ through to the upstream, challenge included. When
// the upstream cannot answer (unreachable, timed out, 5xx) it answers the
// ping itself, 200 with "{}", so that clients which ping first reach what
// can still be served; that grants nothing, every later request is decided
// on its own.
func (f *Front) serveBase(w http.ResponseWriter, r *http.Request) {
	base, _, err := f.upstreams.Upstream(r, "")
	if err != nil {
		f.fail(w, r, nil, "base", err, errcode.ErrorCodeUnknown)
		return
	}
	u := *base
	u.Path = strings.TrimRight(base.Path, "/") + "/v2/"
	u.RawPath, u.RawQuery = "", ""
	ctx, cancel := context.WithTimeout(r.Context(), pingTimeout)
	defer cancel()
	resp, err := f.pass.forward(ctx, r, u.String())
	if err == nil && resp.StatusCode < 500 {
		defer resp.Body.Close()
		if err := f.pass.relay(w, r, resp, u.String(), "base"); err != nil {
			f.fail(w, r, base, "base", err, errcode.ErrorCodeUnknown)
		}
		return
	}
	if err == nil {
		err = fmt.Errorf("status %d", resp.StatusCode)
		resp.Body.Close()
	}
	if r.Context().Err() != nil {
		return
	}
	f.log.Warn("upstream unreachable; answering /v2/ ourselves", zap.String("upstream", base.Host), zap.Error(err))
	if f.outagePings != nil {
		f.outagePings.Inc()
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = io.WriteString(w, "{}")
	}
}

// serveTags passes GET /v2/<name>/tags/list through to the upstream, with
// the n and last query parameters.
func (f *Front) serveTags(w http.ResponseWriter, r *http.Request, name string) {
	if registrysource.ValidateRepository(name) != nil {
		serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(name), errcode.ErrorCodeNameUnknown)
		return
	}
	base, repo, ok := f.target(w, r, name, errcode.ErrorCodeNameUnknown)
	if !ok {
		return
	}
	target, err := registrysource.TagsURL(base, repo)
	if err != nil {
		serveError(w, errcode.ErrorCodeNameInvalid.WithDetail(repo), errcode.ErrorCodeNameUnknown)
		return
	}
	if q := pagination(r); len(q) > 0 {
		target += "?" + q.Encode()
	}
	if err := f.pass.pass(w, r, target, repo); err != nil {
		f.fail(w, r, base, repo, err, errcode.ErrorCodeNameUnknown)
	}
}

// serveCatalog passes GET /v2/_catalog through to the upstream, with the n
// and last query parameters: the catalog is the upstream's, and what a
// client may see of it is the upstream's decision on its credentials.
func (f *Front) serveCatalog(w http.ResponseWriter, r *http.Request) {
	base, _, err := f.upstreams.Upstream(r, "")
	if err != nil {
		f.fail(w, r, nil, "catalog", err, errcode.ErrorCodeUnknown)
		return
	}
	u := *base
	u.Path = strings.TrimRight(base.Path, "/") + "/v2/_catalog"
	u.RawPath = ""
	u.RawQuery = pagination(r).Encode()
	if err := f.pass.pass(w, r, u.String(), "catalog"); err != nil {
		f.fail(w, r, base, "catalog", err, errcode.ErrorCodeUnknown)
	}
}

// pagination is the n and last query parameters of r.
func pagination(r *http.Request) url.Values {
	q := url.Values{}
	for _, k := range []string{"n", "last"} {
		if v := r.URL.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// PassThrough is the blob backend of a registry-cache: every blob is
// streamed from the upstream with the client's Authorization, Range and
// conditional headers, following redirects to blob storage (each hop
// under hc's policy); nothing is cached.
type PassThrough struct{ p passer }

var _ Blobs = (*PassThrough)(nil)

// NewPassThrough returns a pass-through backend that reaches upstreams
// through hc (nil: DefaultHTTPClient).
func NewPassThrough(hc *http.Client, log *zap.Logger) *PassThrough {
	if hc == nil {
		hc = DefaultHTTPClient()
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &PassThrough{p: passer{hc: hc, log: log}}
}

// ServeBlob streams b from its upstream (see Blobs).
func (p *PassThrough) ServeBlob(w http.ResponseWriter, r *http.Request, b Blob) error {
	target, err := registrysource.BlobURL(b.Upstream, b.Repo, b.Digest)
	if err != nil {
		return errcode.ErrorCodeDigestInvalid.WithDetail(b.Digest.String())
	}
	return p.p.pass(w, r, target, b.Repo+"@"+b.Digest.String())
}

// passer forwards a client's request to an upstream and streams the
// answer back.
type passer struct {
	hc  *http.Client
	log *zap.Logger
}

// forwardedHeaders are the client request headers a pass-through sends on.
var forwardedHeaders = []string{
	"Accept", "Accept-Encoding", "Authorization", "Range", "If-Range",
	"If-None-Match", "If-Modified-Since", "User-Agent",
}

// returnedHeaders are the upstream response headers a pass-through copies.
var returnedHeaders = []string{
	"Content-Type", "Content-Length", "Content-Range", "Content-Encoding", "Accept-Ranges",
	"Docker-Content-Digest", "ETag", "Last-Modified", "Cache-Control",
	"WWW-Authenticate", "Link", "Retry-After", "Location",
}

// pass forwards r to target and streams the answer back. An answer of 400
// or more is returned as an error, nothing written: a
// *registrysource.ResponseError, wrapped in ErrUnavailable for a 5xx; an
// upstream that cannot be reached is ErrUnavailable too.
func (p passer) pass(w http.ResponseWriter, r *http.Request, target, what string) error {
	resp, err := p.forward(r.Context(), r, target)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	return p.relay(w, r, resp, target, what)
}

// forward sends r's method and forwardedHeaders to target.
func (p passer) forward(ctx context.Context, r *http.Request, target string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, r.Method, target, nil)
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
	return p.hc.Do(req)
}

// relay answers r with the upstream's resp (see pass).
func (p passer) relay(w http.ResponseWriter, r *http.Request, resp *http.Response, target, what string) error {
	if resp.StatusCode >= 400 {
		re := &registrysource.ResponseError{Method: r.Method, URL: redact.URL(target), StatusCode: resp.StatusCode,
			Header: resp.Header, Body: readCapped(resp.Body, maxErrorBody)}
		if resp.StatusCode >= 500 {
			return fmt.Errorf("%w: %w", ErrUnavailable, re)
		}
		return re
	}
	h := w.Header()
	for _, k := range returnedHeaders {
		for _, v := range resp.Header.Values(k) {
			h.Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return nil
	}
	if _, err := io.Copy(w, resp.Body); err != nil && r.Context().Err() == nil {
		p.log.Info("pass-through interrupted", zap.String("what", what), zap.Error(err))
	}
	return nil
}

func readCapped(r io.Reader, n int64) []byte {
	b, _ := io.ReadAll(io.LimitReader(r, n))
	return b
}
