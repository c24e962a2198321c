package mirror_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// fakeRegistry says yes to every HEAD, announcing size bytes, and answers
// every GET with size bytes of its own.
func fakeRegistry(t *testing.T, size int64, tls bool) *httptest.Server {
	t.Helper()
	junk := make([]byte, size)
	_, _ = rand.Read(junk)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 {
			w.Header().Set("Docker-Content-Digest", r.URL.Path[i+len("/blobs/"):])
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(junk)
		}
	})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv
}

// A registry that says yes to everything, named with ?ns= under
// allowAnyUpstream, cannot open the cluster's digest task of a private
// layer: the node holds the layer (alice pulled it through the configured
// registry), yet the fake registry's client gets none of it.
func TestAnyUpstreamCannotAuthorisePrivateBlob(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "s3cret"}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "v1", 200_000)
	require.NoError(t, err)
	layer := img.Layers[0]
	fake := fakeRegistry(t, layer.Size, true)
	sn := startSupernode(t)

	hc := upstreamClient(t)
	tr := hc.Transport.(*http.Transport)
	tr.TLSClientConfig = fake.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	n := startNode(t, sn, mirror.Config{Registry: reg.URL.String(), AllowAnyUpstream: true}, mirror.WithHTTPClient(hc))

	// The private registry, pulled normally, works.
	tok, err := reg.Token(t.Context(), "alice", "s3cret", "repository:private/app:pull")
	require.NoError(t, err)
	r := do(t, http.MethodGet, n.url+"/v2/private/app/blobs/"+layer.Digest.String(), hdr("Authorization", "Bearer "+tok))
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, layer.Digest, digest.FromBytes(r.body))
	private := r.body
	_, err = n.store.Info(t.Context(), layer.Digest)
	require.NoError(t, err, "the node caches the private layer")

	ns := strings.TrimPrefix(fake.URL, "https://")
	for _, rng := range []string{"", "bytes=0-99", "bytes=1000-"} {
		h := http.Header{}
		if rng != "" {
			h.Set("Range", rng)
		}
		r = do(t, http.MethodGet, n.url+"/v2/any/repo/blobs/"+layer.Digest.String()+"?ns="+url.QueryEscape(ns), h)
		require.NotEqual(t, http.StatusOK, r.status, "range %q", rng)
		require.NotEqual(t, http.StatusPartialContent, r.status, "range %q", rng)
		require.False(t, len(r.body) > 16 && bytes.Contains(private, r.body), "range %q: a private byte was served", rng)
	}
}

func TestRegistriesNames(t *testing.T) {
	t.Parallel()
	rs := mirror.Config{
		Registry: "http://127.0.0.1:5000",
		Upstreams: []mirror.Upstream{
			{Host: "docker.io"}, {Host: "ghcr.io:443"}, {Host: "registry.internal:5000", Insecure: true},
		},
	}.Registries()
	for base, want := range map[string]bool{
		"http://127.0.0.1:5000":           true,
		"https://127.0.0.1:5000":          false, // another scheme
		"http://127.0.0.1:5001":           false, // another port
		"http://127.0.0.1":                false,
		"https://registry-1.docker.io":    true,
		"https://index.docker.io:443":     true,
		"http://registry-1.docker.io":     false,
		"https://ghcr.io":                 true,
		"https://GHCR.io:443":             true,
		"http://registry.internal:5000":   true,
		"https://registry.internal:5000":  false,
		"https://evil.example":            false,
		"https://registry-1.docker.io.ev": false,
	} {
		u, err := url.Parse(base)
		require.NoError(t, err)
		require.Equal(t, want, rs.Names(u), base)
	}
	d := digest.FromString("x")
	req, shared, err := rs.BlobRequest(&url.URL{Scheme: "https", Host: "evil.example"}, "a/b", d, hdr("Authorization", "Bearer t"), 1)
	require.NoError(t, err)
	require.False(t, shared)
	require.Empty(t, req.Digest, "not the digest task")
	require.NotEmpty(t, req.Identifier, "kept apart per credential")
	require.NotContains(t, req.Identifier, "Bearer")
	req, shared, err = rs.BlobRequest(&url.URL{Scheme: "https", Host: "ghcr.io"}, "a/b", d, nil, 1)
	require.NoError(t, err)
	require.True(t, shared)
	require.Equal(t, d, req.Digest)
}

func TestVerifyDigest(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("damselfly"), 10_000)
	d := digest.FromBytes(data)
	rc, err := mirror.VerifyDigest(io.NopCloser(bytes.NewReader(data)), d, 0)
	require.NoError(t, err)
	got, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.Equal(t, data, got)

	rc, err = mirror.VerifyDigest(io.NopCloser(bytes.NewReader(data)), d, 100)
	require.NoError(t, err)
	got, err = io.ReadAll(rc)
	require.NoError(t, err)
	require.Equal(t, data[100:], got)

	bad := append([]byte(nil), data...)
	bad[len(bad)-1] ^= 1
	rc, err = mirror.VerifyDigest(io.NopCloser(bytes.NewReader(bad)), d, 0)
	require.NoError(t, err)
	_, err = io.ReadAll(rc)
	require.True(t, errors.Is(err, peer.ErrDigestMismatch), "%v", err)
}

// FuzzQueryValue: the hand-written ns lookup agrees with net/url's.
func FuzzQueryValue(f *testing.F) {
	for _, s := range []string{"", "ns=docker.io", "a=1&ns=x&ns=y", "ns=%zz&ns=ok", "n%73=x", "ns", "ns=a+b", ";ns=x", "ns=x;y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, _ := url.ParseQuery(raw)
		if got, want := mirror.QueryValueForTest(raw, "ns"), q.Get("ns"); got != want {
			t.Fatalf("queryValue(%q) = %q, url says %q", raw, got, want)
		}
	})
}

// VerifyRange: the range's bytes, and for the whole content or a range
// reaching its end, the last bytes only once the whole content matched.
func TestVerifyRange(t *testing.T) {
	t.Parallel()
	data := make([]byte, 300_000)
	_, _ = rand.Read(data)
	size := int64(len(data))
	good := digest.FromBytes(data)
	bad := digest.FromString("something else")
	tests := []struct {
		name      string
		off, n    int64
		badFails  bool  // with the wrong digest the read fails
		badAtMost int64 // and gives at most this many bytes
	}{
		{"middle", 1000, 50_000, false, 50_000},
		{"to the end", 200_000, size - 200_000, true, size - 200_000 - httpx.HoldBack},
		{"short to the end", size - 10, 10, true, 0},
		{"whole", 0, -1, true, size},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := data[tt.off:]
			if tt.n >= 0 {
				want = want[:tt.n]
			}
			rc, err := mirror.VerifyRange(io.NopCloser(bytes.NewReader(data)), good, tt.off, tt.n, size)
			require.NoError(t, err)
			got, err := io.ReadAll(rc)
			require.NoError(t, err)
			require.Equal(t, want, got)
			require.NoError(t, rc.Close())

			rc, err = mirror.VerifyRange(io.NopCloser(bytes.NewReader(data)), bad, tt.off, tt.n, size)
			require.NoError(t, err)
			got, err = io.ReadAll(rc)
			if !tt.badFails {
				require.NoError(t, err)
				require.Equal(t, want, got)
				return
			}
			require.ErrorIs(t, err, peer.ErrDigestMismatch)
			require.LessOrEqual(t, int64(len(got)), tt.badAtMost)
		})
	}
}
