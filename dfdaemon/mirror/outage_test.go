package mirror_test

// Tests of an upstream that cannot answer: grace, stale manifests, the
// ping, rate limits.

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

func TestUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "s3cret", "bob": "hunter2"}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "v1", 100_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	withGrace := startNode(t, sn, mirror.Config{Registry: reg.URL.String(), AuthTTL: time.Millisecond, AuthGrace: time.Hour})
	noGrace := startNode(t, sn, mirror.Config{Registry: reg.URL.String(), AuthTTL: time.Millisecond, AuthGrace: -1})
	tok, err := reg.Token(t.Context(), "alice", "s3cret", "repository:private/app:pull")
	require.NoError(t, err)
	bob, err := reg.Token(t.Context(), "bob", "hunter2", "repository:private/app:pull")
	require.NoError(t, err)
	alice := hdr("Authorization", "Bearer "+tok)
	path := "/v2/private/app/blobs/" + img.Layers[0].Digest.String()
	for _, n := range []*node{withGrace, noGrace} {
		r := do(t, http.MethodGet, n.url+path, alice)
		require.Equal(t, http.StatusOK, r.status)
	}
	reg.Close()
	time.Sleep(5 * time.Millisecond) // past AuthTTL

	r := do(t, http.MethodGet, withGrace.url+path, alice)
	require.Equal(t, http.StatusOK, r.status, "confirmed moments ago: served through the outage")
	require.Equal(t, img.Layers[0].Digest, digest.FromBytes(r.body))

	r = do(t, http.MethodGet, withGrace.url+path, hdr("Authorization", "Bearer "+bob))
	require.Equal(t, http.StatusServiceUnavailable, r.status, "other credentials: fail closed")
	require.Equal(t, []string{"UNAVAILABLE"}, errorCodes(t, r.body))
	r = do(t, http.MethodGet, withGrace.url+path, nil)
	require.Equal(t, http.StatusServiceUnavailable, r.status)

	r = do(t, http.MethodGet, noGrace.url+path, alice)
	require.Equal(t, http.StatusServiceUnavailable, r.status, "no grace: fail closed")
	r = do(t, http.MethodGet, noGrace.url+"/v2/", alice)
	require.Equal(t, http.StatusOK, r.status, "the ping is answered by the mirror; it grants nothing")
}

// TestRegistryOutageAfterPull: the registry stops after a pull. A client
// that pings /v2/ first (crane, skopeo, regctl) gets the mirror's own 200,
// and then everything the node holds for it: manifests by tag and digest
// (stale-if-error) and blobs (confirmed for this client within AuthGrace),
// all verified. A client never confirmed gets nothing: 503.
func TestRegistryOutageAfterPull(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 300_000, 40_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	// Every TTL short, so the outage is met by the stale and grace rules
	// rather than by fresh entries.
	mc, err := manifestcache.New(manifestcache.Config{TagTTL: time.Millisecond, AccessTTL: time.Millisecond},
		registrysource.New(registrysource.WithHTTPClient(upstreamClient(t))))
	require.NoError(t, err)
	n := startNode(t, sn, mirror.Config{Registry: reg.URL.String(), AuthTTL: time.Millisecond}, mirror.WithManifests(mc))
	pull := func(t *testing.T, auth http.Header) {
		t.Helper()
		r := do(t, http.MethodGet, n.url+"/v2/", auth)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.Equal(t, "registry/2.0", r.header.Get("Docker-Distribution-API-Version"))
		require.JSONEq(t, "{}", string(r.body))
		h := do(t, http.MethodHead, n.url+"/v2/", auth)
		require.Equal(t, http.StatusOK, h.status)
		for _, ref := range []string{"v1", img.Manifest.String()} {
			r = do(t, http.MethodGet, n.url+"/v2/team/app/manifests/"+ref, hdr(append([]string{"Accept", registrytest.MediaTypeManifest}, flat(auth)...)...))
			require.Equal(t, http.StatusOK, r.status, "%s: %s", ref, r.body)
			require.Equal(t, img.ManifestBody, r.body)
		}
		for _, b := range img.Blobs() {
			r = do(t, http.MethodGet, n.url+"/v2/team/app/blobs/"+b.Digest.String(), auth)
			require.NoError(t, r.err)
			require.Equal(t, http.StatusOK, r.status, "%s: %s", b.Digest, r.body)
			require.Equal(t, b.Digest, digest.FromBytes(r.body))
		}
	}
	pull(t, nil)
	reg.Close()
	time.Sleep(5 * time.Millisecond) // past every TTL
	t.Run("confirmed client pulls through the outage", func(t *testing.T) { pull(t, nil) })
	t.Run("stale manifests are marked, and revalidate", func(t *testing.T) {
		accept := hdr("Accept", registrytest.MediaTypeManifest)
		r := do(t, http.MethodGet, n.url+"/v2/team/app/manifests/v1", accept)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.Equal(t, `110 - "Response is Stale"`, r.header.Get("Warning"))
		require.Equal(t, `"`+img.Manifest.String()+`"`, r.header.Get("ETag"))
		r = do(t, http.MethodGet, n.url+"/v2/team/app/manifests/v1",
			hdr("Accept", registrytest.MediaTypeManifest, "If-None-Match", `"`+img.Manifest.String()+`"`))
		require.Equal(t, http.StatusNotModified, r.status)
		require.Empty(t, r.body)
	})
	t.Run("a client never confirmed gets nothing", func(t *testing.T) {
		other := hdr("Authorization", "Bearer someone-else")
		r := do(t, http.MethodGet, n.url+"/v2/", other)
		require.Equal(t, http.StatusOK, r.status, "the ping grants nothing")
		r = do(t, http.MethodGet, n.url+"/v2/team/app/blobs/"+img.Layers[0].Digest.String(), other)
		require.Equal(t, http.StatusServiceUnavailable, r.status)
		require.Equal(t, []string{"UNAVAILABLE"}, errorCodes(t, r.body))
		r = do(t, http.MethodGet, n.url+"/v2/team/app/manifests/"+img.Manifest.String(), hdr("Authorization", "Bearer someone-else", "Accept", registrytest.MediaTypeManifest))
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
		r = do(t, http.MethodGet, n.url+"/v2/team/app/manifests/v1", hdr("Authorization", "Bearer someone-else", "Accept", registrytest.MediaTypeManifest))
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r.body)
	})
}

// flat turns a header into key, value pairs for hdr.
func flat(h http.Header) []string {
	var kv []string
	for k, vs := range h {
		for _, v := range vs {
			kv = append(kv, k, v)
		}
	}
	return kv
}

// TestPingAnsweredByMirror: /v2/ is the upstream's answer while it answers
// (a 401 challenge passes through, so clients get tokens); an upstream
// that answers 5xx, or none at all, gets the mirror's own 200.
func TestPingAnsweredByMirror(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "s3cret"}))
	sn := startSupernode(t)
	n := startNode(t, sn, mirror.Config{Registry: reg.URL.String()})
	r := do(t, http.MethodGet, n.url+"/v2/", nil)
	require.Equal(t, http.StatusUnauthorized, r.status)
	require.Contains(t, r.header.Get("WWW-Authenticate"), "Bearer realm=")

	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no backend", http.StatusBadGateway) // a load balancer without registry
	}))
	defer failing.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens: connection refused
	for _, tc := range []struct {
		up     string
		status int // of a manifest, nothing cached
	}{{failing.URL, http.StatusBadGateway}, {closed, http.StatusServiceUnavailable}} {
		n := startNode(t, sn, mirror.Config{Registry: tc.up})
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := do(t, method, n.url+"/v2/", nil)
			require.Equal(t, http.StatusOK, r.status, "%s %s: %s", method, tc.up, r.body)
			require.Equal(t, "registry/2.0", r.header.Get("Docker-Distribution-API-Version"))
		}
		r := do(t, http.MethodGet, n.url+"/v2/team/app/manifests/v1", nil)
		require.Equal(t, tc.status, r.status, "nothing cached: %s", r.body)
	}
}

// rateLimited fronts a real registry with a rate limiter that, while
// limit holds a path fragment (optionally after a method and a space: "GET
// /blobs/"), answers every request whose path contains it with 429 and
// Retry-After: 7, as Docker Hub does; everything else reaches the registry.
func rateLimited(t *testing.T, reg *registrytest.Registry) (base string, limit *atomic.Value) {
	t.Helper()
	limit = &atomic.Value{}
	limit.Store("")
	rp := httputil.NewSingleHostReverseProxy(reg.URL)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	rp.Transport = tr
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l := limit.Load().(string)
		if m, rest, ok := strings.Cut(l, " "); ok {
			if m != r.Method {
				l = ""
			} else {
				l = rest
			}
		}
		if l != "" && strings.Contains(r.URL.Path, l) {
			w.Header().Set("Retry-After", "7")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			if r.Method != http.MethodHead {
				_, _ = io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit"}]}`)
			}
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		front.Close()
		tr.CloseIdleConnections()
	})
	return front.URL, limit
}

// TestUpstream429PassesThrough: an upstream 429 reaches the client as 429
// TOOMANYREQUESTS with its Retry-After, for manifests (through the
// registry-cache, nothing cached to stand in), blob checks, tag lists and
// the ping; a manifest cached stands in for it (stale-if-error).
func TestUpstream429PassesThrough(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 1000)
	require.NoError(t, err)
	base, limit := rateLimited(t, reg)
	sn := startSupernode(t)
	mc, err := manifestcache.New(manifestcache.Config{TagTTL: time.Millisecond},
		registrysource.New(registrysource.WithHTTPClient(upstreamClient(t))))
	require.NoError(t, err)
	n := startNode(t, sn, mirror.Config{Registry: base, AuthTTL: time.Millisecond, AuthGrace: -1}, mirror.WithManifests(mc))
	accept := hdr("Accept", registrytest.MediaTypeManifest)

	limit.Store("/")
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/v2/"},
		{http.MethodGet, "/v2/team/app/manifests/v1"},
		{http.MethodHead, "/v2/team/app/manifests/v1"},
		{http.MethodGet, "/v2/team/app/manifests/" + img.Manifest.String()},
		{http.MethodGet, "/v2/team/app/blobs/" + img.Layers[0].Digest.String()},
		{http.MethodHead, "/v2/team/app/blobs/" + img.Layers[0].Digest.String()},
		{http.MethodGet, "/v2/team/app/tags/list"},
	} {
		r := do(t, tc.method, n.url+tc.path, accept)
		require.Equal(t, http.StatusTooManyRequests, r.status, "%s %s: %s", tc.method, tc.path, r.body)
		require.Equal(t, "7", r.header.Get("Retry-After"), "%s %s", tc.method, tc.path)
		if tc.method == http.MethodGet {
			require.Equal(t, []string{"TOOMANYREQUESTS"}, errorCodes(t, r.body), "%s %s", tc.method, tc.path)
		}
	}

	limit.Store("")
	r := do(t, http.MethodGet, n.url+"/v2/team/app/manifests/v1", accept)
	require.Equal(t, http.StatusOK, r.status)
	time.Sleep(5 * time.Millisecond) // past the tag's TTL
	limit.Store("/manifests/")
	r = do(t, http.MethodGet, n.url+"/v2/team/app/manifests/v1", accept)
	require.Equal(t, http.StatusOK, r.status, "a cached manifest stands in: %s", r.body)
	require.Equal(t, img.ManifestBody, r.body)
}

// TestBlobCheck429KeepsGrace: a 429 to the read check of a blob is no
// verdict on access: a client confirmed within AuthGrace keeps reading the
// blob the node holds, and one never confirmed gets the 429 with its
// Retry-After.
func TestBlobCheck429KeepsGrace(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 100_000)
	require.NoError(t, err)
	base, limit := rateLimited(t, reg)
	sn := startSupernode(t)
	n := startNode(t, sn, mirror.Config{Registry: base, AuthTTL: time.Millisecond, AuthGrace: time.Hour})
	path := n.url + "/v2/team/app/blobs/" + img.Layers[0].Digest.String()
	r := do(t, http.MethodGet, path, nil)
	require.Equal(t, http.StatusOK, r.status)

	limit.Store("HEAD /blobs/")
	time.Sleep(5 * time.Millisecond) // past AuthTTL
	for range 2 {
		r = do(t, http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, r.status, "confirmed within the grace: %s", r.body)
		require.Equal(t, img.Layers[0].Digest, digest.FromBytes(r.body))
	}
	r = do(t, http.MethodGet, path, hdr("Authorization", "Bearer never-confirmed"))
	require.Equal(t, http.StatusTooManyRequests, r.status)
	require.Equal(t, "7", r.header.Get("Retry-After"))
}
