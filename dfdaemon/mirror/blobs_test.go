package mirror_test

// Tests of the P2P blob backend: streams that break, many nodes, redirects.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// brokenBlobs serves size bytes of data and then fails instead of
// confirming the digest.
type brokenBlobs struct {
	data  []byte
	after int // bytes before the failure
}

func (b brokenBlobs) Open(_ context.Context, _ peer.Request, off, n int64) (io.ReadCloser, error) {
	end := min(int64(b.after), int64(len(b.data)))
	if n >= 0 {
		end = min(end, off+n)
	}
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
		{"whole as a range, no verification", len(body), "bytes=0-"},
		{"range fails midway", len(body) / 2, "bytes=100-"},
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
