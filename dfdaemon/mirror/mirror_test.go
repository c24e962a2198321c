package mirror_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// The embedded registry leaves its event broadcaster running. Its Close
// also gives up after a 5s Shutdown without closing connections that were
// dialled but never used (the supernode's source client dials such spares
// when fetches race), so a pair of idle HTTP connection goroutines may
// outlive it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
	)
}

// startSupernode runs a real supernode in-process on 127.0.0.1.
func startSupernode(t *testing.T) string {
	t.Helper()
	return supernodetest.Start(t, "mirror-test").Addr
}

// node is one dfdaemon's mirror: engine, upload server, cache and mirror
// handler, served on 127.0.0.1.
type node struct {
	url   string
	store *local.Store
	cache *blobcache.Cache
}

var nodeSeq atomic.Int64

func startNode(t *testing.T, sn string, cfg mirror.Config, opts ...mirror.Option) *node {
	t.Helper()
	store, err := local.New(t.TempDir())
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	sc, err := schedclient.New([]string{sn}, schedclient.WithClusterKeys(supernodetest.Keys()))
	require.NoError(t, err)
	self := schedapi.Peer{ID: fmt.Sprintf("mirror-node-%d", nodeSeq.Add(1)), Addr: ln.Addr().String()}
	eng, err := peer.New(peer.Config{PollWait: 500 * time.Millisecond}, store, sc, self)
	require.NoError(t, err)
	cache, err := blobcache.New(blobcache.Config{}, store, eng)
	require.NoError(t, err)
	m, err := mirror.New(cfg, cache, append([]mirror.Option{mirror.WithHTTPClient(upstreamClient(t))}, opts...)...)
	require.NoError(t, err)
	srv := httptest.NewServer(m)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 3)
	go func() { _ = upload.New(eng, supernodetest.Keys()).Run(ctx, ln); done <- struct{}{} }()
	go func() { _ = eng.Run(ctx); done <- struct{}{} }()
	go func() { _ = cache.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() {
		srv.Close()
		cancel()
		for range 3 {
			<-done
		}
	})
	return &node{url: srv.URL, store: store, cache: cache}
}

// upstreamClient is a mirror's client of the upstream whose idle
// connections are closed when the test ends, before the registry stops: a
// connection the transport dialled but never used would otherwise keep a
// registry connection open past its shutdown.
func upstreamClient(t *testing.T) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	hc := &http.Client{Transport: tr}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// testClient keeps no idle connections, which would outlive the tests.
var testClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

type response struct {
	status int
	header http.Header
	body   []byte
	err    error // reading the body
}

func do(t *testing.T, method, url string, header http.Header) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	require.NoError(t, err)
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := testClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, rerr := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: rerr}
}

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

// errorCodes decodes a distribution-spec error body.
func errorCodes(t *testing.T, body []byte) []string {
	t.Helper()
	var env struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	require.NoError(t, json.Unmarshal(body, &env), "body %q", body)
	var codes []string
	for _, e := range env.Errors {
		codes = append(codes, e.Code)
	}
	return codes
}

func TestPullThroughMirror(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 300_000, 5_000_000, 40_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	n := startNode(t, sn, mirror.Config{Registry: reg.URL.String()})
	reg.ResetStats()

	accept := hdr("Accept", registrytest.MediaTypeManifest)
	t.Run("manifest", func(t *testing.T) {
		for _, ref := range []string{"v1", img.Manifest.String()} {
			r := do(t, http.MethodGet, n.url+"/v2/team/app/manifests/"+ref, accept)
			require.Equal(t, http.StatusOK, r.status, "%s: %s", ref, r.body)
			require.Equal(t, img.ManifestBody, r.body)
			require.Equal(t, img.Manifest.String(), r.header.Get("Docker-Content-Digest"))
			require.Equal(t, img.MediaType, r.header.Get("Content-Type"))
			require.Equal(t, "registry/2.0", r.header.Get("Docker-Distribution-API-Version"))

			h := do(t, http.MethodHead, n.url+"/v2/team/app/manifests/"+ref, accept)
			require.Equal(t, http.StatusOK, h.status)
			require.Empty(t, h.body)
			for _, k := range []string{"Content-Type", "Content-Length", "Docker-Content-Digest"} {
				require.Equal(t, r.header.Get(k), h.header.Get(k), k)
			}
		}
	})

	blobs := append([]digest.Digest{img.Config.Digest}, img.Layers[0].Digest, img.Layers[1].Digest, img.Layers[2].Digest)
	sizes := map[digest.Digest]int64{img.Config.Digest: img.Config.Size}
	for _, l := range img.Layers {
		sizes[l.Digest] = l.Size
	}
	full := map[digest.Digest][]byte{}
	t.Run("blobs", func(t *testing.T) {
		for _, d := range blobs {
			u := n.url + "/v2/team/app/blobs/" + d.String()
			h := do(t, http.MethodHead, u, nil)
			require.Equal(t, http.StatusOK, h.status)
			require.Empty(t, h.body)
			require.Equal(t, fmt.Sprint(sizes[d]), h.header.Get("Content-Length"))
			require.Equal(t, d.String(), h.header.Get("Docker-Content-Digest"))

			r := do(t, http.MethodGet, u, nil)
			require.NoError(t, r.err)
			require.Equal(t, http.StatusOK, r.status, "%s", r.body)
			require.Equal(t, d, digest.FromBytes(r.body))
			for _, k := range []string{"Content-Length", "Docker-Content-Digest", "Content-Type", "Accept-Ranges"} {
				require.Equal(t, h.header.Get(k), r.header.Get(k), k)
			}
			full[d] = r.body
		}
	})
	t.Run("ranges", func(t *testing.T) {
		d := img.Layers[1].Digest
		size := sizes[d]
		u := n.url + "/v2/team/app/blobs/" + d.String()
		tests := []struct {
			rng        string
			start, end int64 // inclusive
		}{
			{"bytes=0-99", 0, 99},
			{"bytes=1000-", 1000, size - 1},
			{"bytes=-500", size - 500, size - 1},
			{fmt.Sprintf("bytes=%d-%d", size-10, size+1000), size - 10, size - 1},
			{"bytes=4194300-4194310", 4194300, 4194310}, // across a piece boundary
		}
		for _, tt := range tests {
			r := do(t, http.MethodGet, u, hdr("Range", tt.rng))
			require.NoError(t, r.err)
			require.Equal(t, http.StatusPartialContent, r.status, tt.rng)
			require.Equal(t, full[d][tt.start:tt.end+1], r.body, tt.rng)
			require.Equal(t, fmt.Sprintf("bytes %d-%d/%d", tt.start, tt.end, size), r.header.Get("Content-Range"))
			h := do(t, http.MethodHead, u, hdr("Range", tt.rng))
			require.Equal(t, http.StatusPartialContent, h.status)
			require.Equal(t, r.header.Get("Content-Range"), h.header.Get("Content-Range"))
			require.Equal(t, r.header.Get("Content-Length"), h.header.Get("Content-Length"))
		}
		for _, bad := range []string{fmt.Sprintf("bytes=%d-", size), "bytes=5-1", "pages=1-2", "bytes=0-1,5-6"} {
			r := do(t, http.MethodGet, u, hdr("Range", bad))
			require.Equal(t, http.StatusRequestedRangeNotSatisfiable, r.status, bad)
			require.Equal(t, []string{"RANGE_INVALID"}, errorCodes(t, r.body))
		}
	})
	t.Run("upstream sent each blob once", func(t *testing.T) {
		s := reg.Stats()
		for _, d := range blobs {
			require.Equal(t, 1, s.BlobGETs[d], "%s", d)
		}
		var total int64
		for _, d := range blobs {
			total += sizes[d]
		}
		require.Equal(t, total, s.BlobBytes)
	})
	t.Run("tags", func(t *testing.T) {
		r := do(t, http.MethodGet, n.url+"/v2/team/app/tags/list", nil)
		require.Equal(t, http.StatusOK, r.status)
		var tags struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		require.NoError(t, json.Unmarshal(r.body, &tags))
		require.Equal(t, []string{"v1"}, tags.Tags)
	})
	t.Run("base", func(t *testing.T) {
		r := do(t, http.MethodGet, n.url+"/v2/", nil)
		require.Equal(t, http.StatusOK, r.status)
		require.Equal(t, "registry/2.0", r.header.Get("Docker-Distribution-API-Version"))
	})
}

// TestManifestByDigestWhateverAccept: a Docker schema 2 manifest asked for
// by digest with only the OCI manifest type in Accept is served, as the
// registry itself serves it, with the registry's Content-Type: through the
// registry-cache (as dfdaemon runs) and straight from the upstream.
func TestManifestByDigestWhateverAccept(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 1000)
	require.NoError(t, err)
	sn := startSupernode(t)
	mc, err := manifestcache.New(manifestcache.Config{}, registrysource.New(registrysource.WithHTTPClient(upstreamClient(t))))
	require.NoError(t, err)
	cached := startNode(t, sn, mirror.Config{Registry: reg.URL.String()}, mirror.WithManifests(mc))
	plain := startNode(t, sn, mirror.Config{Registry: reg.URL.String()})
	path := "/v2/team/app/manifests/" + img.Manifest.String()
	oci := hdr("Accept", "application/vnd.oci.image.manifest.v1+json")

	direct := do(t, http.MethodGet, reg.URL.String()+path, oci)
	require.Equal(t, http.StatusOK, direct.status, "the registry answers")
	for _, n := range []*node{cached, plain} {
		for i := range 2 {
			r := do(t, http.MethodGet, n.url+path, oci)
			require.Equal(t, http.StatusOK, r.status, "attempt %d: %s", i, r.body)
			require.Equal(t, img.ManifestBody, r.body)
			require.Equal(t, direct.header.Get("Content-Type"), r.header.Get("Content-Type"))
		}
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 1000)
	require.NoError(t, err)
	other := registrytest.New(t)
	otherImg, err := other.PushRandomImage(t.Context(), "x/y", "v1", 1000)
	require.NoError(t, err)
	sn := startSupernode(t)
	n := startNode(t, sn, mirror.Config{Registry: reg.URL.String()})
	listed := startNode(t, sn, mirror.Config{Registry: reg.URL.String(),
		Upstreams: []mirror.Upstream{{Host: other.Host, Insecure: true}}})

	missing := digest.FromString("nobody pushed this")
	tests := []struct {
		name   string
		method string
		url    string
		status int
		code   string
	}{
		{"unknown blob", http.MethodGet, n.url + "/v2/team/app/blobs/" + missing.String(), 404, "BLOB_UNKNOWN"},
		{"unknown blob head", http.MethodHead, n.url + "/v2/team/app/blobs/" + missing.String(), 404, ""},
		{"blob of another repo", http.MethodGet, n.url + "/v2/other/repo/blobs/" + img.Layers[0].Digest.String(), 404, "BLOB_UNKNOWN"},
		{"bad digest", http.MethodGet, n.url + "/v2/team/app/blobs/sha256:1234", 400, "DIGEST_INVALID"},
		{"not sha256", http.MethodGet, n.url + "/v2/team/app/blobs/sha512:" + strings.Repeat("a", 128), 400, "DIGEST_INVALID"},
		{"unknown manifest", http.MethodGet, n.url + "/v2/team/app/manifests/nope", 404, "MANIFEST_UNKNOWN"},
		{"unknown manifest digest", http.MethodGet, n.url + "/v2/team/app/manifests/" + missing.String(), 404, "MANIFEST_UNKNOWN"},
		{"ns not allowed", http.MethodGet, n.url + "/v2/team/app/manifests/v1?ns=" + other.Host, 403, "DENIED"},
		{"ns not allowed blob", http.MethodGet, n.url + "/v2/x/y/blobs/" + otherImg.Layers[0].Digest.String() + "?ns=" + other.Host, 403, "DENIED"},
		{"ns garbage", http.MethodGet, n.url + "/v2/team/app/manifests/v1?ns=" + "a%20b", 403, "DENIED"},
		{"write", http.MethodPut, n.url + "/v2/team/app/manifests/v2", 405, "UNSUPPORTED"},
		{"upload", http.MethodPost, n.url + "/v2/team/app/blobs/uploads/", 405, "UNSUPPORTED"},
		{"catalog", http.MethodGet, n.url + "/v2/_catalog", 200, ""}, // the upstream's, passed through
		{"listed ns", http.MethodGet, listed.url + "/v2/x/y/blobs/" + otherImg.Layers[0].Digest.String() + "?ns=" + other.Host, 200, ""},
		{"listed ns manifest", http.MethodGet, listed.url + "/v2/x/y/manifests/v1?ns=" + other.Host, 200, ""},
		{"default by ns", http.MethodGet, listed.url + "/v2/team/app/manifests/v1?ns=" + reg.Host, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, tt.method, tt.url, hdr("Accept", registrytest.MediaTypeManifest))
			require.Equal(t, tt.status, r.status, "%s", r.body)
			if tt.code != "" {
				require.Equal(t, "application/json", r.header.Get("Content-Type"))
				require.Equal(t, []string{tt.code}, errorCodes(t, r.body))
			}
			if tt.method == http.MethodHead {
				require.Empty(t, r.body)
			}
		})
	}
}

func TestTokenAuthPassesThrough(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "s3cret"}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "v1", 200_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	n := startNode(t, sn, mirror.Config{Registry: reg.URL.String()})
	tok, err := reg.Token(t.Context(), "alice", "s3cret", "repository:private/app:pull")
	require.NoError(t, err)
	anon, err := reg.Token(t.Context(), "", "", "repository:private/app:pull")
	require.NoError(t, err)
	alice := hdr("Authorization", "Bearer "+tok, "Accept", registrytest.MediaTypeManifest)
	layer := n.url + "/v2/private/app/blobs/" + img.Layers[0].Digest.String()

	// No credentials: the upstream's challenge, untouched.
	for _, u := range []string{n.url + "/v2/", n.url + "/v2/private/app/manifests/v1", layer} {
		r := do(t, http.MethodGet, u, nil)
		require.Equal(t, http.StatusUnauthorized, r.status, u)
		require.Contains(t, r.header.Get("WWW-Authenticate"), `Bearer realm="`+reg.Realm()+`"`, u)
		require.Equal(t, []string{"UNAUTHORIZED"}, errorCodes(t, r.body), u)
	}
	h := do(t, http.MethodHead, layer, nil)
	require.Equal(t, http.StatusUnauthorized, h.status)
	require.Contains(t, h.header.Get("WWW-Authenticate"), reg.Realm())

	// With the client's own token everything works.
	r := do(t, http.MethodGet, n.url+"/v2/", alice)
	require.Equal(t, http.StatusOK, r.status)
	r = do(t, http.MethodGet, n.url+"/v2/private/app/manifests/v1", alice)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, img.ManifestBody, r.body)
	r = do(t, http.MethodGet, layer, alice)
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, img.Layers[0].Digest, digest.FromBytes(r.body))
	_, err = n.store.Info(t.Context(), img.Layers[0].Digest)
	require.NoError(t, err, "the blob is in the node's cache now")

	// Another client, without credentials or with a token that grants
	// nothing, does not get the cached blob.
	for name, h := range map[string]http.Header{
		"none":      nil,
		"anonymous": hdr("Authorization", "Bearer "+anon),
		"garbage":   hdr("Authorization", "Bearer not-a-token"),
		"basic":     hdr("Authorization", "Basic YWxpY2U6czNjcmV0"),
	} {
		for _, rng := range []string{"", "bytes=0-10"} {
			hh := h.Clone()
			if hh == nil {
				hh = http.Header{}
			}
			if rng != "" {
				hh.Set("Range", rng)
			}
			r := do(t, http.MethodGet, layer, hh)
			require.Equal(t, http.StatusUnauthorized, r.status, "%s %s", name, rng)
			require.Equal(t, []string{"UNAUTHORIZED"}, errorCodes(t, r.body))
		}
	}
}

// brokenBlobs serves size bytes of data and then fails instead of
// confirming the digest.
type brokenBlobs struct {
	data  []byte
	after int // bytes before the failure
}

func (b brokenBlobs) Open(_ context.Context, _ peer.Request, off int64) (io.ReadCloser, error) {
	end := min(int64(b.after), int64(len(b.data)))
	return io.NopCloser(io.MultiReader(
		strings.NewReader(string(b.data[min(off, end):end])),
		errReader{errors.New("piece source vanished")},
	)), nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestBrokenDownloadNeverEndsCleanly(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 500_000)
	require.NoError(t, err)
	layer := img.Layers[0]
	// Fetch the real bytes for the fake to serve.
	body := do(t, http.MethodGet, reg.URL.String()+"/v2/team/app/blobs/"+layer.Digest.String(), nil).body
	require.Len(t, body, int(layer.Size))

	tests := []struct {
		name  string
		after int
		rng   string
	}{
		{"fails midway", len(body) / 2, ""},
		{"all bytes but no verification", len(body), ""},
		{"range to the end, no verification", len(body), "bytes=100-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, err := mirror.New(mirror.Config{Registry: reg.URL.String()}, brokenBlobs{data: body, after: tt.after},
				mirror.WithHTTPClient(upstreamClient(t)))
			require.NoError(t, err)
			srv := httptest.NewServer(m)
			defer srv.Close()
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/v2/team/app/blobs/"+layer.Digest.String(), nil)
			require.NoError(t, err)
			if tt.rng != "" {
				req.Header.Set("Range", tt.rng)
			}
			resp, err := testClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			require.Error(t, err, "the body must not end cleanly")
			require.Less(t, len(got), len(body))
		})
	}

	t.Run("fails before the first byte", func(t *testing.T) {
		t.Parallel()
		m, err := mirror.New(mirror.Config{Registry: reg.URL.String()}, brokenBlobs{data: body, after: 0},
			mirror.WithHTTPClient(upstreamClient(t)))
		require.NoError(t, err)
		srv := httptest.NewServer(m)
		defer srv.Close()
		r := do(t, http.MethodGet, srv.URL+"/v2/team/app/blobs/"+layer.Digest.String(), nil)
		require.Equal(t, http.StatusServiceUnavailable, r.status)
		require.Equal(t, []string{"UNAVAILABLE"}, errorCodes(t, r.body))
	})
}

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

func TestManyNodesOneUpstreamFetch(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 3_000_000, 100_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	var nodes []*node
	for range 3 {
		nodes = append(nodes, startNode(t, sn, mirror.Config{Registry: reg.URL.String()}))
	}
	reg.ResetStats()
	errs := make(chan error, len(nodes)*len(img.Blobs()))
	for _, n := range nodes {
		for _, b := range img.Blobs() {
			go func() {
				r := do(t, http.MethodGet, n.url+"/v2/team/app/blobs/"+b.Digest.String(), nil)
				switch {
				case r.err != nil:
					errs <- r.err
				case r.status != http.StatusOK || digest.FromBytes(r.body) != b.Digest:
					errs <- fmt.Errorf("%s: status %d, %d bytes", b.Digest, r.status, len(r.body))
				default:
					errs <- nil
				}
			}()
		}
	}
	for range cap(errs) {
		require.NoError(t, <-errs)
	}
	s := reg.Stats()
	for _, b := range img.Blobs() {
		require.Equal(t, 1, s.BlobGETs[b.Digest], "%s", b.Digest)
	}
}

// An upstream that answers blob requests with a redirect to blob storage
// on another host, as registries backed by object stores do. The storage
// refuses requests carrying Authorization (as S3 does with a signed URL).
func TestBlobRedirectToStorage(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 700_000)
	require.NoError(t, err)
	layer := img.Layers[0]

	var storageAuth, storageHits atomic.Int32
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageHits.Add(1)
		if r.Header.Get("Authorization") != "" {
			storageAuth.Add(1)
			http.Error(w, "only one auth mechanism allowed", http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("sig") != "ok" {
			http.Error(w, "unsigned", http.StatusForbidden)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, reg.URL.String()+"/v2/team/app/blobs/"+strings.TrimPrefix(r.URL.Path, "/blob/"), nil)
		if rg := r.Header.Get("Range"); rg != "" {
			req.Header.Set("Range", rg)
		}
		resp, err := testClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for _, k := range []string{"Content-Length", "Content-Range", "Content-Type"} {
			if v := resp.Header.Get(k); v != "" {
				w.Header().Set(k, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(storage.Close)
	// Another host name for the same machine: Go drops Authorization on
	// a redirect to a different host.
	storageURL := strings.Replace(storage.URL, "127.0.0.1", "localhost", 1)

	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			if r.Header.Get("Authorization") != "Bearer good" {
				w.Header().Set("WWW-Authenticate", `Basic realm="front"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			http.Redirect(w, r, storageURL+"/blob/"+d+"?sig=ok", http.StatusTemporaryRedirect)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, reg.URL.String()+r.URL.RequestURI(), nil)
		req.Header = r.Header.Clone()
		resp, err := testClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(front.Close)

	sn := startSupernode(t)
	n := startNode(t, sn, mirror.Config{Registry: front.URL})
	u := n.url + "/v2/team/app/blobs/" + layer.Digest.String()

	r := do(t, http.MethodGet, u, nil)
	require.Equal(t, http.StatusUnauthorized, r.status)
	require.Equal(t, `Basic realm="front"`, r.header.Get("WWW-Authenticate"))

	h := do(t, http.MethodHead, u, hdr("Authorization", "Bearer good"))
	require.Equal(t, http.StatusOK, h.status)
	require.Equal(t, fmt.Sprint(layer.Size), h.header.Get("Content-Length"))
	r = do(t, http.MethodGet, u, hdr("Authorization", "Bearer good"))
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.status, "%s", r.body)
	require.Equal(t, layer.Digest, digest.FromBytes(r.body))
	require.Positive(t, storageHits.Load())
	require.Zero(t, storageAuth.Load(), "Authorization never reached the storage host")
}
