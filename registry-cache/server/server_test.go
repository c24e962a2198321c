package server

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// The answers themselves are pkg/registryapi's, tested there; these tests
// check the registry-cache's wiring of it.

func TestNew(t *testing.T) {
	t.Parallel()
	c, err := manifestcache.New(manifestcache.Config{}, registrysource.New())
	require.NoError(t, err)
	for _, u := range []string{"ftp://x", "http://", "http://u:p@host", "http://host?q=1"} {
		pu, err := url.Parse(u)
		require.NoError(t, err)
		_, err = New(c, pu)
		require.Error(t, err, u)
		require.NotContains(t, err.Error(), ":p@", "no password in errors")
	}
	_, err = New(c, nil)
	require.Error(t, err, "one upstream is required")
	_, err = New(nil, nil)
	require.Error(t, err)
}

func TestPassesThrough(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 100)
	require.NoError(t, err)
	hc := &http.Client{Transport: &http.Transport{Proxy: nil}}
	c, err := manifestcache.New(manifestcache.Config{}, registrysource.New(registrysource.WithHTTPClient(hc)))
	require.NoError(t, err)
	s, err := New(c, reg.URL, WithHTTPClient(hc))
	require.NoError(t, err)
	for _, p := range []string{"/v2/", "/v2/library/app/manifests/1", "/v2/library/app/blobs/" + img.Layers[0].Digest.String()} {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, p, nil))
		require.Equal(t, http.StatusOK, rec.Code, "%s: %s", p, rec.Body)
		require.Equal(t, "registry/2.0", rec.Header().Get("Docker-Distribution-API-Version"))
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/blobs/"+img.Layers[0].Digest.String(), nil))
	require.Equal(t, reg.Stats().BlobGETs[img.Layers[0].Digest], 2, "blobs are not cached")
}
