package mirror_test

// The request patterns of lazy and parallel pullers against a real node
// (engine, supernode, registry): stargz-snapshotter, nydus, SOCI and
// containerd 2.1's parallel layer fetch.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/dfdaemon/proxy"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// rangeSetup pushes one layer of about size bytes and returns its bytes and a
// function starting a fresh node (nothing of the blob cached yet) that
// returns the blob's URL on it.
func rangeSetup(t *testing.T, size int64) (ocispec.Descriptor, []byte, func(t *testing.T) string) {
	t.Helper()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "lazy/app", "v1", size)
	require.NoError(t, err)
	layer := img.Layers[0]
	data := do(t, http.MethodGet, reg.URL.String()+"/v2/lazy/app/blobs/"+layer.Digest.String(), nil).body
	require.Equal(t, layer.Size, int64(len(data)))
	sn := startSupernode(t)
	return layer, data, func(t *testing.T) string {
		n := startNode(t, sn, mirror.Config{Registry: reg.URL.String()})
		return n.url + "/v2/lazy/app/blobs/" + layer.Digest.String()
	}
}

// requireRange checks a single-range 206 against data.
func requireRange(t *testing.T, r response, data []byte, start, end int64) {
	t.Helper()
	require.NoError(t, r.err)
	require.Equal(t, http.StatusPartialContent, r.status, "%s", r.body)
	require.Equal(t, rangeOf(start, end, int64(len(data))), r.header.Get("Content-Range"))
	require.Equal(t, strconv.FormatInt(end-start+1, 10), r.header.Get("Content-Length"))
	require.Empty(t, r.header.Get("Content-Encoding"))
	require.Equal(t, data[start:end+1], r.body)
}

// parts parses a multipart/byteranges answer with Go's reader, checks each
// part's bytes against data and returns the parts' ranges in order.
func parts(t *testing.T, r response, data []byte) []httpx.Range {
	t.Helper()
	require.NoError(t, r.err)
	require.Equal(t, http.StatusPartialContent, r.status, "%s", r.body)
	require.Equal(t, strconv.Itoa(len(r.body)), r.header.Get("Content-Length"), "exact Content-Length")
	require.Empty(t, r.header.Get("Content-Range"), "a multipart answer has Content-Range in its parts")
	mt, params, err := mime.ParseMediaType(r.header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/byteranges", mt)
	mr := multipart.NewReader(bytes.NewReader(r.body), params["boundary"])
	var got []httpx.Range
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return got
		}
		require.NoError(t, err)
		require.Equal(t, "application/octet-stream", p.Header.Get("Content-Type"))
		rg, total, err := httpx.ParseContentRange(p.Header.Get("Content-Range"))
		require.NoError(t, err)
		require.Equal(t, int64(len(data)), total)
		b, err := io.ReadAll(p)
		require.NoError(t, err)
		require.Equal(t, data[rg.Start:rg.Start+rg.Length], b, "part %s", p.Header.Get("Content-Range"))
		got = append(got, rg)
	}
}

func TestLazyPullers(t *testing.T) {
	t.Parallel()
	layer, data, newNode := rangeSetup(t, 9_000_000)
	size := int64(len(data))

	t.Run("stargz", func(t *testing.T) {
		t.Parallel()
		u := newNode(t)
		h := do(t, http.MethodHead, u, nil)
		require.Equal(t, http.StatusOK, h.status)
		require.Equal(t, strconv.FormatInt(size, 10), h.header.Get("Content-Length"))
		require.Equal(t, "bytes", h.header.Get("Accept-Ranges"))

		requireRange(t, do(t, http.MethodGet, u, hdr("Range", "bytes=0-1")), data, 0, 1)
		// The footer first: a suffix range.
		requireRange(t, do(t, http.MethodGet, u, hdr("Range", "bytes=-51", "Accept-Encoding", "identity")), data, size-51, size-1)

		// Chunks a read misses, in one request: 50,000-byte chunks, some
		// adjacent (coalesced by stargz or by us), the last one short.
		const chunk = 50_000
		var specs []string
		for _, i := range []int64{3, 40, 41, 42, 100, 7, size / chunk} {
			specs = append(specs, fmt.Sprintf("%d-%d", i*chunk, min(i*chunk+chunk, size)-1))
		}
		r := do(t, http.MethodGet, u, hdr("Range", "bytes="+strings.Join(specs, ","), "Accept-Encoding", "identity"))
		require.Empty(t, r.header.Get("Content-Encoding"))
		require.Equal(t, []httpx.Range{
			{Start: 3 * chunk, Length: chunk},
			{Start: 40 * chunk, Length: 3 * chunk},
			{Start: 100 * chunk, Length: chunk},
			{Start: 7 * chunk, Length: chunk},
			{Start: size / chunk * chunk, Length: size % chunk},
		}, parts(t, r, data))
	})

	t.Run("nydus", func(t *testing.T) {
		t.Parallel()
		u := newNode(t)
		for _, start := range []int64{5 << 20, 0, 1 << 20, size - 1<<20} {
			end := min(start+1<<20, size) - 1
			requireRange(t, do(t, http.MethodGet, u, hdr("Range", fmt.Sprintf("bytes=%d-%d", start, end))), data, start, end)
		}
		full := do(t, http.MethodGet, u, nil)
		require.NoError(t, full.err)
		require.Equal(t, http.StatusOK, full.status)
		require.Empty(t, full.header.Get("Content-Range"))
		require.Equal(t, layer.Digest, digest.FromBytes(full.body))
	})

	t.Run("soci", func(t *testing.T) {
		t.Parallel()
		u := newNode(t)
		var got []byte
		for start := int64(0); start < size; start += 4 << 20 {
			end := min(start+4<<20, size) - 1
			r := do(t, http.MethodGet, u, hdr("Range", fmt.Sprintf("bytes=%d-%d", start, end)))
			requireRange(t, r, data, start, end)
			got = append(got, r.body...)
		}
		require.Equal(t, layer.Digest, digest.FromBytes(got))
	})

	t.Run("containerd parallel fetch", func(t *testing.T) {
		t.Parallel()
		u := newNode(t)
		const n = 4
		span := int64(size/n + 1)
		bodies := make([][]byte, n)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Go(func() {
				start := int64(i) * span
				end := min(start+span, size) - 1
				r := do(t, http.MethodGet, u, hdr("Range", fmt.Sprintf("bytes=%d-%d", start, end)))
				switch {
				case r.err != nil:
					errs <- r.err
				case r.status != http.StatusPartialContent:
					errs <- fmt.Errorf("range %d: status %d", i, r.status)
				case r.header.Get("Content-Range") != rangeOf(start, end, size):
					errs <- fmt.Errorf("range %d: Content-Range %q", i, r.header.Get("Content-Range"))
				default:
					bodies[i] = r.body
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, layer.Digest, digest.FromBytes(bytes.Join(bodies, nil)))
	})

	t.Run("416 and HEAD", func(t *testing.T) {
		t.Parallel()
		u := newNode(t)
		for _, rng := range []string{fmt.Sprintf("bytes=%d-", size), fmt.Sprintf("bytes=%d-%d,%d-", size+10, size+20, size)} {
			r := do(t, http.MethodGet, u, hdr("Range", rng))
			require.Equal(t, http.StatusRequestedRangeNotSatisfiable, r.status)
			require.Equal(t, fmt.Sprintf("bytes */%d", size), r.header.Get("Content-Range"))
			require.Equal(t, []string{"RANGE_INVALID"}, errorCodes(t, r.body))
		}
		h := do(t, http.MethodHead, u, hdr("Range", "bytes=100-199"))
		require.Equal(t, http.StatusPartialContent, h.status)
		require.Equal(t, rangeOf(100, 199, size), h.header.Get("Content-Range"))
		require.Equal(t, "100", h.header.Get("Content-Length"))
		h = do(t, http.MethodHead, u, hdr("Range", "bytes=0-9,100-199"))
		require.Equal(t, http.StatusPartialContent, h.status)
		require.True(t, strings.HasPrefix(h.header.Get("Content-Type"), "multipart/byteranges; boundary="))
		require.NotEmpty(t, h.header.Get("Content-Length"))
	})

	t.Run("never re-encoded", func(t *testing.T) {
		t.Parallel()
		u := newNode(t)
		// With Accept-Encoding set, Go's client decompresses nothing.
		r := do(t, http.MethodGet, u, hdr("Accept-Encoding", "gzip, br", "Range", "bytes=1000-2999"))
		requireRange(t, r, data, 1000, 2999)
		r = do(t, http.MethodGet, u, hdr("Accept-Encoding", "gzip"))
		require.Equal(t, http.StatusOK, r.status)
		require.Empty(t, r.header.Get("Content-Encoding"))
		require.Equal(t, data, r.body)
	})
}

// openCall is one call of recordBlobs.Open.
type openCall struct{ off, n int64 }

// recordBlobs serves data and records each Open; whole-content readers
// (n < 0) end with the error fail instead of io.EOF when fail is set.
type recordBlobs struct {
	data []byte
	fail error

	mu    sync.Mutex
	calls []openCall
}

func (b *recordBlobs) Open(_ context.Context, _ peer.Request, off, n int64) (io.ReadCloser, error) {
	b.mu.Lock()
	b.calls = append(b.calls, openCall{off, n})
	b.mu.Unlock()
	if n >= 0 {
		return io.NopCloser(bytes.NewReader(b.data[off : off+n])), nil
	}
	var tail io.Reader = strings.NewReader("")
	if b.fail != nil {
		tail = errReader{b.fail}
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(b.data[off:]), tail)), nil
}

func (b *recordBlobs) Calls() []openCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]openCall(nil), b.calls...)
}

// How ranges reach the engine: every part opened with its exact length
// before the first byte; the whole content (no Range, or bytes=0-) with
// n = -1 and held back until verified; a partial range reaching the end
// served without waiting for the whole blob.
func TestRangeOpens(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 200_000)
	require.NoError(t, err)
	layer := img.Layers[0]
	data := do(t, http.MethodGet, reg.URL.String()+"/v2/team/app/blobs/"+layer.Digest.String(), nil).body
	size := int64(len(data))

	tests := []struct {
		name  string
		rng   string
		calls []openCall
	}{
		{"whole", "", []openCall{{0, -1}}},
		{"whole as a range", "bytes=0-", []openCall{{0, -1}}},
		{"probe", "bytes=0-1", []openCall{{0, 2}}},
		{"footer", "bytes=-100", []openCall{{size - 100, 100}}},
		{"parts", "bytes=50000-99999,0-9,150000-", []openCall{{50_000, 50_000}, {0, 10}, {150_000, size - 150_000}}},
		{"too many ranges: ignored, the whole blob", "bytes=" + strings.Repeat("0-0,2-2,", httpx.MaxRanges/2+1), []openCall{{0, -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, fail := range []error{nil, errors.New("whole digest mismatch")} {
				blobs := &recordBlobs{data: data, fail: fail}
				m, err := mirror.New(mirror.Config{Registry: reg.URL.String()}, blobs, mirror.WithHTTPClient(upstreamClient(t)))
				require.NoError(t, err)
				srv := httptest.NewServer(m)
				r := do(t, http.MethodGet, srv.URL+"/v2/team/app/blobs/"+layer.Digest.String(), hdr("Range", tt.rng))
				srv.Close()
				require.Equal(t, tt.calls, blobs.Calls())
				whole := tt.calls[0].n < 0
				if fail != nil && whole {
					require.Error(t, r.err, "an unverified whole blob never ends cleanly")
					require.Less(t, len(r.body), len(data))
					continue
				}
				require.NoError(t, r.err, "a partial range does not wait for the whole blob")
				require.Contains(t, []int{http.StatusOK, http.StatusPartialContent}, r.status)
			}
		})
	}
}

// The forward proxy over a real node's Fetcher: Ranges of a registry blob
// answered from the P2P network, as the mirror answers them; the registry
// sends the blob once.
func TestProxyRangesOverRealFetcher(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "lazy/app", "v1", 6_000_000)
	require.NoError(t, err)
	layer := img.Layers[0]
	u := reg.URL.String() + "/v2/lazy/app/blobs/" + layer.Digest.String()
	data := do(t, http.MethodGet, u, nil).body
	size := int64(len(data))
	cfg := mirror.Config{Registry: reg.URL.String()}
	n := startNode(t, startSupernode(t), cfg)
	prx, err := proxy.New(proxy.Config{Rules: []proxy.Rule{{Regex: `/blobs/sha256:`, UseP2P: true}}},
		mirror.NewFetcher(n.cache, &fakeAuth{size: size}, cfg.Registries()))
	require.NoError(t, err)
	srv := httptest.NewServer(prx)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { _ = prx.Close() })
	pu, err := url.Parse(srv.URL)
	require.NoError(t, err)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), DisableKeepAlives: true}}
	reg.ResetStats()

	get := func(rng string) response {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
		require.NoError(t, err)
		req.Header.Set("Range", rng)
		req.Header.Set("Accept-Encoding", "identity")
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, rerr := io.ReadAll(resp.Body)
		require.Equal(t, "p2p", resp.Header.Get(proxy.RouteHeader), rng)
		return response{status: resp.StatusCode, header: resp.Header, body: body, err: rerr}
	}
	requireRange(t, get("bytes=0-1"), data, 0, 1)
	requireRange(t, get("bytes=-51"), data, size-51, size-1)
	require.Equal(t, []httpx.Range{{Start: 4_000_000, Length: 50_000}, {Start: 100_000, Length: 100_000}},
		parts(t, get("bytes=4000000-4049999,100000-149999,150000-199999"), data))

	var wg sync.WaitGroup
	bodies := make([][]byte, 3)
	span := size/3 + 1
	for i := range 3 {
		wg.Go(func() {
			start := int64(i) * span
			r := get(fmt.Sprintf("bytes=%d-%d", start, min(start+span, size)-1))
			if r.err == nil && r.status == http.StatusPartialContent {
				bodies[i] = r.body
			}
		})
	}
	wg.Wait()
	require.Equal(t, layer.Digest, digest.FromBytes(bytes.Join(bodies, nil)))

	r := get(fmt.Sprintf("bytes=%d-", size))
	require.Equal(t, http.StatusRequestedRangeNotSatisfiable, r.status)
	require.Equal(t, fmt.Sprintf("bytes */%d", size), r.header.Get("Content-Range"))
	require.Equal(t, 1, reg.Stats().BlobGETs[layer.Digest], "the registry sent the blob once")
}
