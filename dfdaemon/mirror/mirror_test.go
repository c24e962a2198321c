package mirror_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
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
		for _, bad := range []string{fmt.Sprintf("bytes=%d-", size), "bytes=5-1", "pages=1-2", fmt.Sprintf("bytes=%d-,-0", size)} {
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
