package cmd

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/proxy"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// A blob GET through the forward proxy naming a registry the node is not
// configured for is never authorised by that registry: a fake registry that
// answers 200 to every HEAD (and its own bytes to every GET) gets back none
// of the private layer the node holds, neither from the node's cache nor
// from the cluster's digest task.
func TestProxyFakeRegistryGetsNoPrivateBlob(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "s3cret"}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "v1", 300_000)
	require.NoError(t, err)
	layer := img.Layers[0]

	junk := make([]byte, layer.Size)
	_, _ = rand.Read(junk)
	var heads atomic.Int64
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			heads.Add(1)
		}
		if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 {
			w.Header().Set("Docker-Content-Digest", r.URL.Path[i+len("/blobs/"):])
		}
		w.Header().Set("Content-Length", strconv.FormatInt(layer.Size, 10))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(junk)
		}
	}))
	t.Cleanup(fake.Close)

	sn := startSupernode(t)
	cfg := writeFile(t, "proxy:\n  outbound:\n    allow: [127.0.0.1/32]\n")
	d := startDaemon(t, "--node", sn, "--registry", reg.URL.String(), "--config", cfg, "--source-allow", "127.0.0.1/32")
	proxyURL, err := url.Parse("http://" + d.addr)
	require.NoError(t, err)
	viaProxy := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}}

	// The configured private registry, pulled normally with alice's token.
	tok, err := reg.Token(t.Context(), "alice", "s3cret", "repository:private/app:pull")
	require.NoError(t, err)
	resp, private := get(t, viaProxy, reg.URL.String()+"/v2/private/app/blobs/"+layer.Digest.String(), http.Header{"Authorization": {"Bearer " + tok}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "p2p", resp.Header.Get(proxy.RouteHeader))
	require.Equal(t, layer.Digest, digest.FromBytes(private))

	// The fake registry, with and without credentials of its own making.
	for _, h := range []http.Header{nil, {"Authorization": {"Bearer anything"}}} {
		status, route, body := getLoose(t, viaProxy, fake.URL+"/v2/any/repo/blobs/"+layer.Digest.String(), h)
		require.NotEqual(t, layer.Digest, digest.FromBytes(body), "status %d route %q", status, route)
		for i := 0; i+64 <= len(body); i += 64 {
			require.False(t, bytes.Contains(private, body[i:i+64]), "a private byte was served (route %q)", route)
		}
	}
	require.Zero(t, heads.Load(), "the fake registry was never asked to authorise a read")
}

// getLoose is get for a response that may be cut short: it returns what
// arrived.
func getLoose(t *testing.T, c *http.Client, u string, h http.Header) (int, string, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	require.NoError(t, err)
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(proxy.RouteHeader), body
}

// A blob of a registry the node is not configured for still goes through
// P2P, as a URL task of its own whose content is checked against the digest.
func TestProxyUnconfiguredRegistryBlobIsURLTask(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 200_000)
	_, _ = rand.Read(blob)
	d := digest.FromBytes(blob)
	var gets atomic.Int64
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/pub/app/blobs/"+d.String() {
			http.NotFound(w, r)
			return
		}
		gets.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		_, _ = w.Write(blob)
	}))
	t.Cleanup(origin.Close)
	reg := registrytest.New(t)
	sn := startSupernode(t)
	cfg := writeFile(t, "proxy:\n  outbound:\n    allow: [127.0.0.1/32]\n")
	dd := startDaemon(t, "--node", sn, "--registry", reg.URL.String(), "--config", cfg, "--source-allow", "127.0.0.1/32")
	proxyURL, err := url.Parse("http://" + dd.addr)
	require.NoError(t, err)
	viaProxy := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}}

	for range 2 {
		resp, body := get(t, viaProxy, origin.URL+"/v2/pub/app/blobs/"+d.String(), nil)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "p2p", resp.Header.Get(proxy.RouteHeader))
		require.Equal(t, d, digest.FromBytes(body))
	}
	require.Equal(t, int64(1), gets.Load(), "one URL task, fetched once")
}
