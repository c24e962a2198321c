package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/registrytest"
)

// faultyUpstream is a registry behind a proxy that injects faults into the
// responses it picks, and counts what reaches it.
type faultyUpstream struct {
	*httptest.Server
	reg   *registrytest.Registry
	img   registrytest.Image
	layer []byte // the image's only layer

	mu     sync.Mutex
	fault  func(w http.ResponseWriter, r *http.Request) bool // true: answered
	counts map[string]int                                    // "METHOD path" -> requests
	ranges []string                                          // Range headers of layer GETs
}

func newFaultyUpstream(t *testing.T) *faultyUpstream {
	t.Helper()
	reg := registrytest.New(t)
	l, err := registrytest.RandomLayer(6*mib + 4321)
	require.NoError(t, err)
	img, err := reg.PushImage(t.Context(), "faults/app", "v1", []registrytest.Layer{l})
	require.NoError(t, err)
	u := &faultyUpstream{reg: reg, img: img, layer: l.Blob, counts: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(reg.URL)
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.counts[r.Method+" "+r.URL.Path]++
		if r.Method == http.MethodGet && r.URL.Path == u.layerPath() {
			u.ranges = append(u.ranges, r.Header.Get("Range"))
		}
		fault := u.fault
		u.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *faultyUpstream) layerDigest() digest.Digest { return u.img.Layers[0].Digest }
func (u *faultyUpstream) layerPath() string {
	return "/v2/" + u.img.Repo + "/blobs/" + u.layerDigest().String()
}

func (u *faultyUpstream) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.fault = f
}

func (u *faultyUpstream) count(method, path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[method+" "+path]
}

func (u *faultyUpstream) layerRanges() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.ranges...)
}

// firstLayerGETs answers the first n GETs of the layer with answer, then
// lets them through.
func (u *faultyUpstream) firstLayerGETs(n int32, answer func(w http.ResponseWriter, r *http.Request)) {
	var left atomic.Int32
	left.Store(n)
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.URL.Path != u.layerPath() || left.Add(-1) < 0 {
			return false
		}
		answer(w, r)
		return true
	})
}

// cutLayerOnce lets the first GET of the layer through to the registry but
// drops the connection after n bytes of its body.
func (u *faultyUpstream) cutLayerOnce(n int) {
	rp := httputil.NewSingleHostReverseProxy(u.reg.URL)
	var done atomic.Bool
	u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.URL.Path != u.layerPath() || done.Swap(true) {
			return false
		}
		rp.ServeHTTP(&cutWriter{ResponseWriter: w, left: n}, r)
		return true
	})
}

// cutWriter fails writes after left bytes: the reverse proxy then aborts
// the response, dropping the connection mid-body.
type cutWriter struct {
	http.ResponseWriter
	left int
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if len(p) > c.left {
		n, _ := c.ResponseWriter.Write(p[:c.left])
		c.left = 0
		_ = http.NewResponseController(c.ResponseWriter).Flush()
		return n, errors.New("cut")
	}
	c.left -= len(p)
	return c.ResponseWriter.Write(p)
}

// mirrorGet is one GET through the mirror, body read whole.
func mirrorGet(t *testing.T, ctx context.Context, url string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", registrytest.MediaTypeManifest)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err, "the mirror cut the body short")
	return resp.StatusCode, resp.Header, body
}

func ociErrorCodes(t *testing.T, body []byte) []string {
	t.Helper()
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	require.NoError(t, json.Unmarshal(body, &e), "not an OCI error: %.200q", body)
	var codes []string
	for _, c := range e.Errors {
		codes = append(codes, c.Code)
	}
	require.NotEmpty(t, codes, "not an OCI error: %.200q", body)
	return codes
}

// Upstream faults seen through a dfdaemon: transient ones are retried or
// resumed and the client gets the right blob; bodies that are not the blob
// or manifest asked for are never served nor cached; missing content is
// the registry's error, and a missing manifest is remembered briefly.
func TestUpstreamFaultsThroughMirror(t *testing.T) {
	skipShort(t)
	t.Parallel()
	tests := []struct {
		name string
		run  func(t *testing.T, ctx context.Context, u *faultyUpstream, mirror string)
	}{
		{"5xx then success", func(t *testing.T, ctx context.Context, u *faultyUpstream, mirror string) {
			u.firstLayerGETs(2, func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "try again", http.StatusServiceUnavailable)
			})
			st, _, body := mirrorGet(t, ctx, "http://"+mirror+u.layerPath())
			require.Equal(t, http.StatusOK, st, "%.200q", body)
			require.Equal(t, u.layer, body)
			require.Equal(t, 3, u.count(http.MethodGet, u.layerPath()))
		}},
		{"429 with Retry-After", func(t *testing.T, ctx context.Context, u *faultyUpstream, mirror string) {
			var first time.Time
			u.firstLayerGETs(1, func(w http.ResponseWriter, _ *http.Request) {
				first = time.Now()
				w.Header().Set("Retry-After", "1")
				http.Error(w, "slow down", http.StatusTooManyRequests)
			})
			st, _, body := mirrorGet(t, ctx, "http://"+mirror+u.layerPath())
			require.Equal(t, http.StatusOK, st, "%.200q", body)
			require.Equal(t, u.layer, body)
			require.Equal(t, 2, u.count(http.MethodGet, u.layerPath()))
			require.GreaterOrEqual(t, time.Since(first), time.Second, "Retry-After was not honoured")
		}},
		{"reset mid-body", func(t *testing.T, ctx context.Context, u *faultyUpstream, mirror string) {
			// The registry's own answer, headers and validators included,
			// cut off half way through the body.
			u.cutLayerOnce(len(u.layer) / 2)
			st, _, body := mirrorGet(t, ctx, "http://"+mirror+u.layerPath())
			require.Equal(t, http.StatusOK, st, "%.200q", body)
			require.Equal(t, u.layer, body)
			ranges := u.layerRanges()
			require.Len(t, ranges, 2)
			require.True(t, strings.HasPrefix(ranges[1], "bytes="), "the second GET resumes: %q", ranges[1])
			require.NotEqual(t, "bytes=0-", ranges[1], "the second GET resumes where the first broke")
		}},
		{"200 error page instead of the blob", func(t *testing.T, ctx context.Context, u *faultyUpstream, mirror string) {
			page := []byte("<html><body><h1>502 Bad Gateway</h1></body></html>")
			var broken atomic.Bool
			broken.Store(true)
			u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if !broken.Load() || r.Method != http.MethodGet || r.URL.Path != u.layerPath() {
					return false
				}
				w.Header().Set("Content-Type", "text/html")
				_, _ = w.Write(page)
				return true
			})
			// The page is not the blob: its size is not the size the
			// registry's HEAD announced, so the download fails before any
			// byte and the client gets an OCI error, never the page.
			st, _, body := mirrorGet(t, ctx, "http://"+mirror+u.layerPath())
			require.Equal(t, http.StatusBadGateway, st, "%.200q", body)
			require.NotContains(t, string(body), "Bad Gateway</h1>")
			ociErrorCodes(t, body)
			require.GreaterOrEqual(t, u.count(http.MethodGet, u.layerPath()), 1, "the upstream was never asked")

			// Nothing was cached: once the upstream is fixed, the blob is right.
			broken.Store(false)
			st, _, body = mirrorGet(t, ctx, "http://"+mirror+u.layerPath())
			require.Equal(t, http.StatusOK, st, "%.200q", body)
			require.Equal(t, u.layer, body)
		}},
		{"lying Docker-Content-Digest", func(t *testing.T, ctx context.Context, u *faultyUpstream, mirror string) {
			lie := digest.FromString("not this manifest")
			manifestPath := "/v2/" + u.img.Repo + "/manifests/" + u.img.Tag
			u.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.Path != manifestPath {
					return false
				}
				w.Header().Set("Content-Type", u.img.MediaType)
				w.Header().Set("Docker-Content-Digest", lie.String())
				w.Header().Set("Content-Length", strconv.Itoa(len(u.img.ManifestBody)))
				if r.Method == http.MethodGet {
					_, _ = w.Write(u.img.ManifestBody)
				}
				return true
			})
			st, h, body := mirrorGet(t, ctx, "http://"+mirror+manifestPath)
			require.GreaterOrEqual(t, st, 400, "a manifest under a false digest was served: %.200q", body)
			require.NotEqual(t, lie.String(), h.Get("Docker-Content-Digest"))
			ociErrorCodes(t, body)
			// Nor is it served by the digest the registry claimed.
			st, _, body = mirrorGet(t, ctx, "http://"+mirror+"/v2/"+u.img.Repo+"/manifests/"+lie.String())
			require.GreaterOrEqual(t, st, 400, "%.200q", body)
		}},
		{"404 blob and manifest", func(t *testing.T, ctx context.Context, u *faultyUpstream, mirror string) {
			missing := digest.FromString("nobody pushed this")
			st, _, body := mirrorGet(t, ctx, "http://"+mirror+"/v2/"+u.img.Repo+"/blobs/"+missing.String())
			require.Equal(t, http.StatusNotFound, st)
			require.Equal(t, []string{"BLOB_UNKNOWN"}, ociErrorCodes(t, body))

			path := "/v2/" + u.img.Repo + "/manifests/nope"
			for range 2 {
				st, _, body = mirrorGet(t, ctx, "http://"+mirror+path)
				require.Equal(t, http.StatusNotFound, st)
				require.Equal(t, []string{"MANIFEST_UNKNOWN"}, ociErrorCodes(t, body))
			}
			require.Equal(t, 1, u.count(http.MethodGet, path)+u.count(http.MethodHead, path),
				"the second request within the negative-cache window reached the upstream")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newFaultyUpstream(t)
			sn := startSupernode(t)
			mirror := startDfdaemon(t, sn.addr, u.URL)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			tt.run(t, ctx, u, mirror)
		})
	}
}
