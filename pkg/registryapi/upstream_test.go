package registryapi

// Tests of what the upstream answers: challenges, failures, redirects.

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// TestTokenAuth: the registry wants Bearer tokens. Challenges reach the
// client, the client's token reaches the registry, and what one client
// pulled with its token is not served to a client without one.
func TestTokenAuth(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "wonderland"}))
	img, err := reg.PushRandomImage(t.Context(), "team/app", "1", 500)
	require.NoError(t, err)
	e := newEnv(t, reg.URL, manifestcache.Config{})

	// The base endpoint's challenge is passed through.
	r := e.do(t, http.MethodGet, "/v2/")
	require.Equal(t, http.StatusUnauthorized, r.status)
	challenge := r.header.Get("WWW-Authenticate")
	require.Contains(t, challenge, `Bearer realm="`+reg.Realm())
	require.Equal(t, "UNAUTHORIZED", errorCode(t, r))

	// So is a manifest's, with the scope to ask for.
	r = e.do(t, http.MethodGet, "/v2/team/app/manifests/1", "Accept", acceptAll)
	require.Equal(t, http.StatusUnauthorized, r.status)
	require.Contains(t, r.header.Get("WWW-Authenticate"), `scope="repository:team/app:pull"`)
	require.Equal(t, "UNAUTHORIZED", errorCode(t, r))

	tok, err := reg.Token(t.Context(), "alice", "wonderland", "repository:team/app:pull")
	require.NoError(t, err)
	bearer := "Bearer " + tok
	r = e.do(t, http.MethodGet, "/v2/", "Authorization", bearer)
	require.Equal(t, http.StatusOK, r.status)
	for _, ref := range []string{"1", img.Manifest.String()} {
		r = e.do(t, http.MethodGet, "/v2/team/app/manifests/"+ref, "Accept", acceptAll, "Authorization", bearer)
		require.Equal(t, http.StatusOK, r.status, "%s", r.body)
		require.Equal(t, img.ManifestBody, r.body)
	}
	for _, d := range img.Blobs() {
		r = e.do(t, http.MethodGet, "/v2/team/app/blobs/"+d.Digest.String(), "Authorization", bearer)
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, d.Digest, digest.FromBytes(r.body))
	}

	// Another token of alice's (registries hand out short-lived ones): the
	// tag is resolved with a HEAD, the manifest is not fetched again.
	tok2, err := reg.Token(t.Context(), "alice", "wonderland", "repository:team/app:pull")
	require.NoError(t, err)
	require.NotEqual(t, tok, tok2)
	gets := reg.Stats().ManifestGETs["team/app:1"]
	r = e.do(t, http.MethodGet, "/v2/team/app/manifests/1", "Accept", acceptAll, "Authorization", "Bearer "+tok2)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, img.ManifestBody, r.body)
	require.Equal(t, gets, reg.Stats().ManifestGETs["team/app:1"])

	// The cache holds the manifest now; a client without a token, or with
	// an anonymous token (no access), must still be refused.
	anon, err := reg.Token(t.Context(), "", "", "repository:team/app:pull")
	require.NoError(t, err)
	for _, auth := range []string{"", "Bearer " + anon} {
		for _, ref := range []string{"1", img.Manifest.String()} {
			var hdr []string
			if auth != "" {
				hdr = []string{"Authorization", auth}
			}
			r = e.do(t, http.MethodGet, "/v2/team/app/manifests/"+ref, hdr...)
			require.Equal(t, http.StatusUnauthorized, r.status, "auth %q ref %s", auth != "", ref)
			require.NotEqual(t, img.ManifestBody, r.body)
			require.NotEmpty(t, r.header.Get("WWW-Authenticate"))
		}
		r = e.do(t, http.MethodGet, "/v2/team/app/blobs/"+img.Layers[0].Digest.String())
		require.Equal(t, http.StatusUnauthorized, r.status)
	}
}

// authProxy puts a registry behind a front that demands its own Bearer
// token, as a registry behind an auth proxy does.
func authProxy(t *testing.T, reg *registrytest.Registry, token string) *url.URL {
	t.Helper()
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://auth.invalid/token",service="front",scope="repository:library/app:pull"`)
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, "go away\n")
			return
		}
		u := *reg.URL
		u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, u.String(), nil)
		req.Header = r.Header.Clone()
		req.Header.Del("Authorization")
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(front.Close)
	u, _ := url.Parse(front.URL)
	return u
}

func TestChallengeFromAuthProxy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)
	e := newEnv(t, authProxy(t, reg, "s3cret"), manifestcache.Config{})

	for _, path := range []string{"/v2/", "/v2/library/app/manifests/1", "/v2/library/app/tags/list",
		"/v2/library/app/blobs/" + img.Layers[0].Digest.String()} {
		r := e.do(t, http.MethodGet, path)
		require.Equal(t, http.StatusUnauthorized, r.status, path)
		require.Equal(t, `Bearer realm="http://auth.invalid/token",service="front",scope="repository:library/app:pull"`,
			r.header.Get("WWW-Authenticate"), path)
		require.Equal(t, "UNAUTHORIZED", errorCode(t, r), "a non-JSON 401 becomes errcode JSON")
	}
	r := e.do(t, http.MethodGet, "/v2/library/app/manifests/1", "Authorization", "Bearer s3cret", "Accept", acceptAll)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, img.ManifestBody, r.body)
	r = e.do(t, http.MethodGet, "/v2/library/app/manifests/1", "Authorization", "Bearer wrong", "Accept", acceptAll)
	require.Equal(t, http.StatusUnauthorized, r.status)
}

// TestUpstreamFailures: stale within the window, 503 when unreachable, 502
// when the upstream answers 5xx.
func TestUpstreamFailures(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)

	// A front that can be switched to failing.
	var mode atomic.Value
	mode.Store("ok")
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load().(string) {
		case "500":
			w.WriteHeader(http.StatusInternalServerError)
			return
		case "503":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case "hang": // closes the connection without answering
			if hj, ok := w.(http.Hijacker); ok {
				c, _, _ := hj.Hijack()
				_ = c.Close()
			}
			return
		}
		u := *reg.URL
		u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, u.String(), nil)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(front.Close)
	fu, _ := url.Parse(front.URL)
	e := newEnv(t, fu, manifestcache.Config{TagTTL: 30 * time.Second, StaleIfError: 5 * time.Minute})

	r := e.do(t, http.MethodGet, "/v2/library/app/manifests/1", "Accept", acceptAll)
	require.Equal(t, http.StatusOK, r.status)
	require.Empty(t, r.header.Get("Warning"))

	e.clock.Advance(time.Minute)
	mode.Store("500")
	r = e.do(t, http.MethodGet, "/v2/library/app/manifests/1", "Accept", acceptAll)
	require.Equal(t, http.StatusOK, r.status, "stale within the window")
	require.Equal(t, img.ManifestBody, r.body)
	require.Contains(t, r.header.Get("Warning"), "110")

	r = e.do(t, http.MethodGet, "/v2/library/app/manifests/other", "Accept", acceptAll)
	require.Equal(t, http.StatusBadGateway, r.status)
	require.Equal(t, "UPSTREAM_ERROR", errorCode(t, r))
	r = e.do(t, http.MethodGet, "/v2/library/app/blobs/"+img.Layers[0].Digest.String())
	require.Equal(t, http.StatusBadGateway, r.status)
	require.Equal(t, "UPSTREAM_ERROR", errorCode(t, r))

	mode.Store("503")
	r = e.do(t, http.MethodGet, "/v2/library/app/manifests/other", "Accept", acceptAll)
	require.Equal(t, http.StatusServiceUnavailable, r.status)
	require.Equal(t, "UNAVAILABLE", errorCode(t, r))
	require.Equal(t, "7", r.header.Get("Retry-After"))

	mode.Store("hang")
	r = e.do(t, http.MethodGet, "/v2/library/app/manifests/other", "Accept", acceptAll)
	require.Equal(t, http.StatusBadGateway, r.status, "a connection closed without an answer: %s", r.body)

	e.clock.Advance(5 * time.Minute)
	mode.Store("500")
	r = e.do(t, http.MethodGet, "/v2/library/app/manifests/1", "Accept", acceptAll)
	require.Equal(t, http.StatusBadGateway, r.status, "beyond the stale window")

	// Nothing listening at all.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	require.NoError(t, ln.Close())
	e2 := newEnv(t, dead, manifestcache.Config{})
	for _, path := range []string{"/v2/library/app/manifests/1", "/v2/library/app/blobs/" + img.Layers[0].Digest.String()} {
		r = e2.do(t, http.MethodGet, path)
		require.Equal(t, http.StatusServiceUnavailable, r.status, path)
		require.Equal(t, "UNAVAILABLE", errorCode(t, r))
	}
	// The ping is answered by the cache itself, so that clients that ping
	// first reach what it can serve stale.
	for _, ee := range []*env{e, e2} {
		mode.Store("500")
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r = ee.do(t, method, "/v2/")
			require.Equal(t, http.StatusOK, r.status, "%s: %s", method, r.body)
			require.Equal(t, "registry/2.0", r.header.Get("Docker-Distribution-Api-Version"))
		}
		require.Equal(t, "{}", string(ee.do(t, http.MethodGet, "/v2/").body))
	}
}

// TestBlobRedirect: a blob redirected to storage on another host is
// followed, and the client's Authorization does not go along.
func TestBlobRedirect(t *testing.T) {
	t.Parallel()
	payload := []byte("layer bytes from blob storage")
	d := digest.FromBytes(payload)
	var storageAuth atomic.Value
	storageAuth.Store("unset")
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageAuth.Store(r.Header.Get("Authorization"))
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(payload))
	}))
	t.Cleanup(storage.Close)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(storage.URL, "http://"))
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		// Another host name for the same loopback address.
		http.Redirect(w, r, "http://localhost:"+port+"/blob?sig=1", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(front.Close)
	fu, _ := url.Parse(front.URL)
	e := newEnv(t, fu, manifestcache.Config{})

	r := e.do(t, http.MethodGet, "/v2/library/app/blobs/"+d.String(), "Authorization", "Bearer t")
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, payload, r.body)
	require.Empty(t, storageAuth.Load(), "Authorization was dropped on the cross-host hop")

	r = e.do(t, http.MethodGet, "/v2/library/app/blobs/"+d.String(), "Authorization", "Bearer t", "Range", "bytes=6-10")
	require.Equal(t, http.StatusPartialContent, r.status)
	require.Equal(t, payload[6:11], r.body)
}
