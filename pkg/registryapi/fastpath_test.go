package registryapi

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/gorilla/mux"
	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// checkManifestPath compares manifestPath with distribution's router on p:
// what manifestPath takes, the router matches as the manifest route with
// the same variables; what the router matches as a manifest that
// the front would serve, manifestPath takes (except a trailing "/",
// which the router's strict-slash matching accepts and which is left to
// it).
func checkManifestPath(t *testing.T, p string) {
	name, ref, ok := manifestPath(p)
	var m mux.RouteMatch
	matched := v2.Router().Match(&http.Request{Method: http.MethodGet, URL: &url.URL{Path: p}}, &m) &&
		m.Route != nil && m.Route.GetName() == v2.RouteNameManifest
	switch {
	case ok && !matched:
		t.Fatalf("manifestPath(%q) = %q, %q; the router does not match it as a manifest", p, name, ref)
	case ok && (m.Vars["name"] != name || m.Vars["reference"] != ref):
		t.Fatalf("manifestPath(%q) = %q, %q; the router says %q, %q", p, name, ref, m.Vars["name"], m.Vars["reference"])
	case !ok && matched && !strings.HasSuffix(p, "/") && checkNameRef(m.Vars["name"], m.Vars["reference"]) == nil:
		t.Fatalf("manifestPath(%q) refused a manifest the router matches: %q, %q", p, m.Vars["name"], m.Vars["reference"])
	}
}

func FuzzManifestPath(f *testing.F) {
	d := digest.FromString("x").String()
	for _, s := range [][2]string{
		{"library/app", "1.0"}, {"a", d}, {"a/manifests/b", "latest"}, {"Library/App", "1"},
		{"localhost:5000/app", "1"}, {"a", "-x"}, {"a", "sha256:abc"}, {"a", "md5:" + strings.Repeat("a", 32)},
		{"a__b/c-d.e", "V_1.x-y"}, {"a", "b/"}, {"", "x"}, {"a", "b/tags/list"}, {"a", strings.Repeat("t", 129)},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, ref string) {
		checkManifestPath(t, "/v2/"+name+"/manifests/"+ref)
		checkManifestPath(t, name)
	})
}

// TestManifestStatuses walks every answer of a manifest request: the
// recognised path (served from the cache) and the ones left to the router.
func TestManifestStatuses(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)
	e := newEnv(t, reg.URL, manifestcache.Config{})
	etag := `"` + img.Manifest.String() + `"`

	tests := []struct {
		name, method, path string
		header             []string
		status             int
		code               string // error code of a 4xx
		body               bool   // the manifest is the body
	}{
		{"tag", "GET", "/v2/library/app/manifests/1", nil, 200, "", true},
		{"digest", "GET", "/v2/library/app/manifests/" + img.Manifest.String(), nil, 200, "", true},
		{"head", "HEAD", "/v2/library/app/manifests/1", nil, 200, "", false},
		{"if-none-match", "GET", "/v2/library/app/manifests/1", []string{"If-None-Match", etag}, 304, "", false},
		{"if-none-match weak in a list", "GET", "/v2/library/app/manifests/1", []string{"If-None-Match", `"x", W/` + etag}, 304, "", false},
		{"if-none-match star", "HEAD", "/v2/library/app/manifests/1", []string{"If-None-Match", "*"}, 304, "", false},
		{"if-none-match other", "GET", "/v2/library/app/manifests/1", []string{"If-None-Match", `"sha256:0"`}, 200, "", true},
		{"trailing slash, left to the router", "GET", "/v2/library/app/manifests/1/", nil, 200, "", true},
		{"unknown tag", "GET", "/v2/library/app/manifests/2", nil, 404, "MANIFEST_UNKNOWN", false},
		{"unknown digest", "GET", "/v2/library/app/manifests/" + digest.FromString("none").String(), nil, 404, "MANIFEST_UNKNOWN", false},
		{"unknown repository", "GET", "/v2/library/none/manifests/1", nil, 404, "MANIFEST_UNKNOWN", false},
		{"uppercase name", "GET", "/v2/Library/app/manifests/1", nil, 400, "NAME_INVALID", false},
		// As a registry answers: an unclean path is redirected to its clean
		// form (the client follows), a path no route matches is a 404.
		{"empty name", "GET", "/v2//manifests/1", nil, 404, "NOT_FOUND", false},
		{"double slash in name", "GET", "/v2/library//app/manifests/1", nil, 200, "", true},
		{"bad tag", "GET", "/v2/library/app/manifests/.1", nil, 404, "NOT_FOUND", false},
		{"tag too long", "HEAD", "/v2/library/app/manifests/" + strings.Repeat("t", 129), nil, 404, "", false},
		{"bad digest", "GET", "/v2/library/app/manifests/sha256:" + strings.Repeat("A", 64), nil, 400, "DIGEST_INVALID", false},
		{"no name", "GET", "/v2/manifests/1", nil, 404, "NOT_FOUND", false},
		{"push", "PUT", "/v2/library/app/manifests/1", nil, 405, "UNSUPPORTED", false},
		{"delete", "DELETE", "/v2/library/app/manifests/" + img.Manifest.String(), nil, 405, "UNSUPPORTED", false},
		{"patch with a bad name", "PATCH", "/v2/Library/app/manifests/1", nil, 405, "UNSUPPORTED", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, tt.method, tt.path, tt.header...)
			require.Equal(t, tt.status, r.status, "body %s", r.body)
			require.Equal(t, "registry/2.0", r.header.Get("Docker-Distribution-Api-Version"))
			switch {
			case tt.code != "":
				require.Equal(t, tt.code, errorCode(t, r))
			case tt.status == 200 || tt.status == 304:
				require.Equal(t, img.Manifest.String(), r.header.Get("Docker-Content-Digest"))
				require.Equal(t, etag, r.header.Get("ETag"))
				require.Empty(t, r.header.Get("Warning"))
			}
			if tt.status == 200 {
				require.Equal(t, img.MediaType, r.header.Get("Content-Type"))
				require.Equal(t, len(img.ManifestBody), atoi(t, r.header.Get("Content-Length")))
			}
			if tt.body {
				require.Equal(t, img.ManifestBody, r.body)
			} else if tt.status != 400 && tt.status != 404 && tt.status != 405 {
				require.Empty(t, r.body)
			}
		})
	}
	require.Equal(t, 1, reg.Stats().ManifestGETs["library/app:1"], "one upstream GET for the tag")
}

// TestManifestChallenge: on the recognised path, a registry's 401 reaches
// the client with its challenge, and a manifest cached for one client is
// not served to another without credentials.
func TestManifestChallenge(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "wonderland"}))
	img, err := reg.PushRandomImage(t.Context(), "team/app", "1", 100)
	require.NoError(t, err)
	e := newEnv(t, reg.URL, manifestcache.Config{})
	tok, err := reg.Token(t.Context(), "alice", "wonderland", "repository:team/app:pull")
	require.NoError(t, err)
	for _, ref := range []string{"1", img.Manifest.String()} {
		r := e.do(t, http.MethodGet, "/v2/team/app/manifests/"+ref, "Authorization", "Bearer "+tok)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.Equal(t, img.ManifestBody, r.body)
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r = e.do(t, method, "/v2/team/app/manifests/"+ref)
			require.Equal(t, http.StatusUnauthorized, r.status)
			require.Contains(t, r.header.Get("WWW-Authenticate"), `scope="repository:team/app:pull"`)
			require.NotEqual(t, img.ManifestBody, r.body)
			if method == http.MethodGet {
				require.Equal(t, "UNAUTHORIZED", errorCode(t, r))
			}
		}
	}
}

// discard is a minimal http.ResponseWriter, so that the benchmark measures
// the handler and not a recorder.
type discard struct {
	h      http.Header
	status int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) WriteHeader(code int)        { d.status = code }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkManifestHit is the handler's own cost of a cache hit by tag,
// without net/http: go test -run X -bench ManifestHit -benchmem.
func BenchmarkManifestHit(b *testing.B) {
	reg := registrytest.New(b)
	_, err := reg.PushRandomImage(b.Context(), "library/app", "1", 100)
	require.NoError(b, err)
	c, err := manifestcache.New(manifestcache.Config{}, registrysource.New())
	require.NoError(b, err)
	s, err := newFront(c, reg.URL, nil)
	require.NoError(b, err)
	req := httptest.NewRequestWithContext(b.Context(), http.MethodGet, "/v2/library/app/manifests/1", nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	w := &discard{h: http.Header{}}
	s.ServeHTTP(w, req)
	require.Equal(b, http.StatusOK, w.status)
	b.ReportAllocs()
	for b.Loop() {
		w.status = 0
		clear(w.h)
		s.ServeHTTP(w, req)
	}
	require.Equal(b, http.StatusOK, w.status)
}
