package registryapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// The embedded registry leaves its notification broadcasters running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

// clock is a manual clock for the cache.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a registry cache server in front of an upstream.
type env struct {
	upstream *url.URL
	clock    *clock
	cache    *manifestcache.Cache
	srv      *Front
	url      string
	client   *http.Client
}

// newEnv starts the server in front of upstream.
func newEnv(t *testing.T, upstream *url.URL, cfg manifestcache.Config) *env {
	t.Helper()
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}
	hc := &http.Client{Transport: tr}
	e := &env{upstream: upstream, clock: &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}}
	var err error
	e.cache, err = manifestcache.New(cfg, registrysource.New(registrysource.WithHTTPClient(hc)), manifestcache.WithClock(e.clock.Now))
	require.NoError(t, err)
	e.srv, err = newFront(e.cache, upstream, hc)
	require.NoError(t, err)
	ts := httptest.NewServer(e.srv)
	ctr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}
	e.client = &http.Client{Transport: ctr}
	e.url = ts.URL
	t.Cleanup(func() {
		ts.Close()
		tr.CloseIdleConnections()
		ctr.CloseIdleConnections()
	})
	return e
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(t *testing.T, method, path string, header ...string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.url+path, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := e.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{resp.StatusCode, resp.Header, b}
}

// errorCode decodes an errcode JSON body and returns its first code.
func errorCode(t *testing.T, r response) string {
	t.Helper()
	require.Equal(t, "application/json", r.header.Get("Content-Type"), "body %s", r.body)
	var body struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	require.NoError(t, json.Unmarshal(r.body, &body), "body %s", r.body)
	require.NotEmpty(t, body.Errors)
	return body.Errors[0].Code
}

const acceptAll = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"

func TestPullThrough(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1.0", 1000, 2000)
	require.NoError(t, err)
	e := newEnv(t, reg.URL, manifestcache.Config{})
	reg.ResetStats()

	// HEAD by tag, GET by tag, GET by digest: what a runtime does.
	r := e.do(t, http.MethodHead, "/v2/library/app/manifests/1.0", "Accept", acceptAll)
	require.Equal(t, http.StatusOK, r.status)
	require.Empty(t, r.body)
	require.Equal(t, img.Manifest.String(), r.header.Get("Docker-Content-Digest"))
	require.Equal(t, img.MediaType, r.header.Get("Content-Type"))
	require.Equal(t, `"`+img.Manifest.String()+`"`, r.header.Get("ETag"))
	require.Equal(t, len(img.ManifestBody), atoi(t, r.header.Get("Content-Length")))

	for _, ref := range []string{"1.0", img.Manifest.String()} {
		r = e.do(t, http.MethodGet, "/v2/library/app/manifests/"+ref, "Accept", acceptAll)
		require.Equal(t, http.StatusOK, r.status, "%s: %s", ref, r.body)
		require.Equal(t, img.ManifestBody, r.body)
		require.Equal(t, img.Manifest, digest.FromBytes(r.body))
		require.Equal(t, "registry/2.0", r.header.Get("Docker-Distribution-Api-Version"))
	}
	st := reg.Stats()
	require.Equal(t, 1, st.ManifestGETs["library/app:1.0"], "one upstream GET for the tag")
	require.Zero(t, st.ManifestGETs["library/app:"+img.Manifest.String()], "the digest is served from the cache")

	// A conditional GET with the ETag is a 304.
	r = e.do(t, http.MethodGet, "/v2/library/app/manifests/1.0", "Accept", acceptAll, "If-None-Match", `"`+img.Manifest.String()+`"`)
	require.Equal(t, http.StatusNotModified, r.status)

	// Blobs are streamed through, whole and by range; HEAD too.
	for _, d := range img.Blobs() {
		r = e.do(t, http.MethodGet, "/v2/library/app/blobs/"+d.Digest.String())
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, d.Digest, digest.FromBytes(r.body))
		require.Equal(t, d.Digest.String(), r.header.Get("Docker-Content-Digest"))
	}
	layer := img.Layers[0]
	full := e.do(t, http.MethodGet, "/v2/library/app/blobs/"+layer.Digest.String())
	r = e.do(t, http.MethodGet, "/v2/library/app/blobs/"+layer.Digest.String(), "Range", "bytes=10-19")
	require.Equal(t, http.StatusPartialContent, r.status)
	require.Equal(t, full.body[10:20], r.body)
	require.Equal(t, "bytes 10-19/"+strconv.Itoa(len(full.body)), r.header.Get("Content-Range"))
	r = e.do(t, http.MethodHead, "/v2/library/app/blobs/"+layer.Digest.String())
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, layer.Size, int64(atoi(t, r.header.Get("Content-Length"))))

	// Base and tags list pass through.
	r = e.do(t, http.MethodGet, "/v2/")
	require.Equal(t, http.StatusOK, r.status)
	r = e.do(t, http.MethodGet, "/v2/library/app/tags/list")
	require.Equal(t, http.StatusOK, r.status)
	var tags struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	require.NoError(t, json.Unmarshal(r.body, &tags))
	require.Equal(t, "library/app", tags.Name)
	require.Equal(t, []string{"1.0"}, tags.Tags)

	// Unknown blob: the upstream's 404 BLOB_UNKNOWN.
	r = e.do(t, http.MethodGet, "/v2/library/app/blobs/"+digest.FromString("none").String())
	require.Equal(t, http.StatusNotFound, r.status)
	require.Equal(t, "BLOB_UNKNOWN", errorCode(t, r))
}

func TestConcurrentPullsOneUpstreamGET(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "latest", 100)
	require.NoError(t, err)
	e := newEnv(t, reg.URL, manifestcache.Config{TagTTL: 30 * time.Second})
	reg.ResetStats()

	round := func() {
		var wg sync.WaitGroup
		var bad atomic.Int32
		for range 50 {
			wg.Go(func() {
				req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.url+"/v2/library/app/manifests/latest", nil)
				req.Header.Set("Accept", acceptAll)
				resp, err := e.client.Do(req)
				if err != nil {
					bad.Add(1)
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(b, img.ManifestBody) {
					bad.Add(1)
				}
			})
		}
		wg.Wait()
		require.Zero(t, bad.Load())
	}
	round()
	require.Equal(t, 1, reg.Stats().ManifestGETs["library/app:latest"])
	e.clock.Advance(30 * time.Second)
	before := reg.Stats().Requests
	round()
	require.Equal(t, before+1, reg.Stats().Requests, "one more upstream request after the TTL")
	require.Equal(t, 1, reg.Stats().ManifestGETs["library/app:latest"], "a HEAD: the digest has not changed")
}

func TestErrors(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	_, err := reg.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)
	e := newEnv(t, reg.URL, manifestcache.Config{})
	reg.ResetStats()

	tests := []struct {
		name, method, path string
		status             int
		code               string
		reachesUpstream    bool
	}{
		{"unknown tag", "GET", "/v2/library/app/manifests/nope", 404, "MANIFEST_UNKNOWN", true},
		{"unknown repository", "GET", "/v2/library/none/manifests/1", 404, "MANIFEST_UNKNOWN", true},
		{"unknown digest", "HEAD", "/v2/library/app/manifests/" + digest.FromString("x").String(), 404, "", true},
		{"uppercase name", "GET", "/v2/Library/App/manifests/1", 404, "NOT_FOUND", false}, // no route matches, as in a registry
		{"name with a port", "GET", "/v2/localhost:5000/app/manifests/1", 400, "NAME_INVALID", false},
		{"bad tag", "GET", "/v2/library/app/manifests/-x", 404, "NOT_FOUND", false},
		{"bad digest", "GET", "/v2/library/app/manifests/sha256:abc", 400, "DIGEST_INVALID", false},
		{"unknown algorithm", "GET", "/v2/library/app/manifests/md5:" + strings.Repeat("a", 32), 400, "DIGEST_INVALID", false},
		{"bad blob digest", "GET", "/v2/library/app/blobs/sha256:zz", 400, "DIGEST_INVALID", false},
		{"manifest push", "PUT", "/v2/library/app/manifests/1", 405, "UNSUPPORTED", false},
		{"manifest delete", "DELETE", "/v2/library/app/manifests/1", 405, "UNSUPPORTED", false},
		{"blob upload", "POST", "/v2/library/app/blobs/uploads/", 405, "UNSUPPORTED", false},
		{"catalog", "GET", "/v2/_catalog", 200, "", true}, // the upstream's, passed through
		{"not the v2 API", "GET", "/v3/x", 404, "NOT_FOUND", false},
		{"garbage under v2", "GET", "/v2/%00", 404, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := reg.Stats().Requests
			r := e.do(t, tt.method, tt.path)
			require.Equal(t, tt.status, r.status, "body %s", r.body)
			if tt.code != "" {
				require.Equal(t, tt.code, errorCode(t, r))
			}
			if !tt.reachesUpstream {
				require.Equal(t, before, reg.Stats().Requests, "bad input reached the upstream")
			}
		})
	}
	// The 404 is remembered briefly: asked again, the upstream is not.
	before := reg.Stats().ManifestGETs["library/app:nope"]
	r := e.do(t, http.MethodGet, "/v2/library/app/manifests/nope")
	require.Equal(t, http.StatusNotFound, r.status)
	require.Equal(t, before, reg.Stats().ManifestGETs["library/app:nope"])
}

// byNS is an Upstreams that picks the upstream by ?ns=, as dfdaemon's
// mirror does.
type byNS map[string]*url.URL

func (u byNS) Upstream(r *http.Request, name string) (*url.URL, string, error) {
	ns := r.URL.Query().Get("ns")
	if base, ok := u[ns]; ok {
		return base, name, nil
	}
	return nil, "", fmt.Errorf("ns %q: %w", ns, ErrNotAllowed)
}

func TestPerRequestUpstream(t *testing.T) {
	t.Parallel()
	regA := registrytest.New(t)
	regB := registrytest.New(t)
	imgA, err := regA.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)
	imgB, err := regB.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)
	c, err := manifestcache.New(manifestcache.Config{}, registrysource.New())
	require.NoError(t, err)
	s, err := New(c, byNS{"a": regA.URL, "b": regB.URL}, NewPassThrough(nil, nil))
	require.NoError(t, err)
	for _, tc := range []struct {
		ns   string
		want []byte
	}{{"a", imgA.ManifestBody}, {"b", imgB.ManifestBody}} {
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/1?ns="+tc.ns, nil)
		req.Header.Set("Accept", acceptAll)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
		require.Equal(t, tc.want, rec.Body.Bytes(), "the same tag on two upstreams are two entries")
	}
	// An upstream the Upstreams refuses is 403 DENIED, on every route.
	for _, p := range []string{"/v2/", "/v2/library/app/manifests/1", "/v2/library/app/tags/list",
		"/v2/library/app/blobs/" + imgA.Layers[0].Digest.String()} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, p+"?ns=c", nil))
		require.Equal(t, http.StatusForbidden, rec.Code, p)
		require.Equal(t, "DENIED", errorCode(t, response{rec.Code, rec.Header(), rec.Body.Bytes()}), p)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	c, err := manifestcache.New(manifestcache.Config{}, registrysource.New())
	require.NoError(t, err)
	for _, u := range []string{"ftp://x", "http://", "http://u:p@host", "http://host?q=1"} {
		pu, err := url.Parse(u)
		require.NoError(t, err)
		_, err = NewFixed(pu)
		require.Error(t, err, u)
		require.NotContains(t, err.Error(), ":p@", "no password in errors")
	}
	_, err = NewFixed(nil)
	require.Error(t, err)
	_, err = New(nil, Fixed{}, NewPassThrough(nil, nil))
	require.Error(t, err)
	_, err = New(c, nil, NewPassThrough(nil, nil))
	require.Error(t, err)
	_, err = New(c, Fixed{}, nil)
	require.Error(t, err)
}

func TestServeErrorStatuses(t *testing.T) {
	t.Parallel()
	re := func(code int, hdr ...string) *registrysource.ResponseError {
		h := http.Header{}
		for i := 0; i+1 < len(hdr); i += 2 {
			h.Set(hdr[i], hdr[i+1])
		}
		return &registrysource.ResponseError{StatusCode: code, Header: h}
	}
	tests := []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"not found", manifestcache.ErrNotFound, 404, "MANIFEST_UNKNOWN"},
		{"bad request", manifestcache.ErrBadRequest, 400, "NAME_INVALID"},
		{"401 passed", re(401, "WWW-Authenticate", "Basic realm=x"), 401, "UNAUTHORIZED"},
		{"403 passed", re(403), 403, "DENIED"},
		{"other 4xx passed", re(400), 400, "UPSTREAM_ERROR"},
		{"429 unavailable", joinErr(manifestcache.ErrUnavailable, re(429, "Retry-After", "3")), 429, "TOOMANYREQUESTS"},
		{"5xx", joinErr(manifestcache.ErrUnavailable, re(500)), 502, "UPSTREAM_ERROR"},
		{"digest mismatch", joinErr(manifestcache.ErrUnavailable, registrysource.ErrDigestMismatch), 502, "UPSTREAM_ERROR"},
		{"timeout", joinErr(manifestcache.ErrUnavailable, context.DeadlineExceeded), 503, "UNAVAILABLE"},
		{"unknown", io.ErrUnexpectedEOF, 500, "UNKNOWN"},
		{"errcode", errcode.ErrorCodeTagInvalid, 400, "TAG_INVALID"},
		{"wrapped errcode", fmt.Errorf("%w: %w", errcode.ErrorCodeUnavailable.WithMessage("download failed"), io.EOF), 503, "UNAVAILABLE"},
		{"not allowed", fmt.Errorf("ns %q: %w", "x", ErrNotAllowed), 403, "DENIED"},
		{"404 without a body, by route", re(404), 404, "MANIFEST_UNKNOWN"},
		{"503 unavailable", joinErr(ErrUnavailable, re(503, "Retry-After", "1")), 503, "UNAVAILABLE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			require.Equal(t, tt.status, serveError(rec, tt.err, errcode.ErrorCodeManifestUnknown))
			require.Equal(t, tt.status, rec.Code)
			require.Equal(t, tt.code, errorCode(t, response{rec.Code, rec.Header(), rec.Body.Bytes()}))
		})
	}
}

type joined struct{ a, b error }

func (j joined) Error() string   { return j.a.Error() + ": " + j.b.Error() }
func (j joined) Unwrap() []error { return []error{j.a, j.b} }

func joinErr(a, b error) error { return joined{a, b} }

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	require.NoError(t, err)
	return n
}

// TestManifestByDigestWhateverAccept: a Docker schema 2 manifest asked for
// by digest with only the OCI manifest type in Accept is served, as the
// registry itself serves it (by digest the content is pinned), with the
// registry's Content-Type; first from the upstream, then from the cache.
func TestManifestByDigestWhateverAccept(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 1000)
	require.NoError(t, err)
	require.Equal(t, registrytest.MediaTypeManifest, img.MediaType)
	e := newEnv(t, reg.URL, manifestcache.Config{})
	path := "/v2/library/app/manifests/" + img.Manifest.String()

	direct, err := http.NewRequestWithContext(t.Context(), http.MethodGet, reg.URL.String()+path, nil)
	require.NoError(t, err)
	direct.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := e.client.Do(direct)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "the registry answers")

	for i := range 2 {
		r := e.do(t, http.MethodGet, path, "Accept", "application/vnd.oci.image.manifest.v1+json")
		require.Equal(t, http.StatusOK, r.status, "attempt %d: %s", i, r.body)
		require.Equal(t, img.ManifestBody, r.body)
		require.Equal(t, resp.Header.Get("Content-Type"), r.header.Get("Content-Type"))
		r = e.do(t, http.MethodHead, path, "Accept", "application/vnd.oci.image.index.v1+json")
		require.Equal(t, http.StatusOK, r.status, "attempt %d", i)
	}
}

// TestRoutesAsARegistry: where dfdaemon's mirror and the registry-cache
// used to answer differently, the front answers as distribution's registry
// does: unclean paths are redirected, an unmatched path is a 404 whatever
// the method, a write on a read route is a 405 naming the methods allowed.
func TestRoutesAsARegistry(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)
	e := newEnv(t, reg.URL, manifestcache.Config{})
	noRedirect := &http.Client{Transport: e.client.Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	blob := "/v2/library/app/blobs/" + img.Layers[0].Digest.String()
	tests := []struct {
		method, path string
		status       int
		code         string // error code, or the Location of a 301
	}{
		{"GET", "/v2", 301, "/v2/"},
		{"GET", "/v2/library/../app/manifests/1", 301, "/v2/app/manifests/1"},
		{"HEAD", "/v2/library//app/manifests/1", 301, "/v2/library/app/manifests/1"},
		{"PUT", "/v3/x", 404, "NOT_FOUND"},
		{"GET", "/v2/library/app/nothing", 404, "NOT_FOUND"},
		{"PUT", blob, 405, "UNSUPPORTED"},
		{"DELETE", "/v2/library/app/manifests/1", 405, "UNSUPPORTED"},
		{"POST", "/v2/library/app/blobs/uploads/", 405, "UNSUPPORTED"},
		{"GET", "/v2/_catalog", 200, ""},
		{"GET", "/v2/library/app/blobs/" + digest.FromString("none").String(), 404, "BLOB_UNKNOWN"},
		{"GET", "/v2/library/none/tags/list", 404, "NAME_UNKNOWN"},
	}
	for _, tt := range tests {
		req, err := http.NewRequestWithContext(t.Context(), tt.method, e.url+tt.path, nil)
		require.NoError(t, err)
		resp, err := noRedirect.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, tt.status, resp.StatusCode, "%s %s: %s", tt.method, tt.path, body)
		switch {
		case tt.status == 301:
			require.Equal(t, tt.code, resp.Header.Get("Location"), tt.path)
		case tt.status == 405:
			require.Equal(t, "GET, HEAD", resp.Header.Get("Allow"), tt.path)
			require.Equal(t, tt.code, errorCode(t, response{resp.StatusCode, resp.Header, body}))
		case tt.code != "":
			require.Equal(t, tt.code, errorCode(t, response{resp.StatusCode, resp.Header, body}), tt.path)
		}
	}
}
