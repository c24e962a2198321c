package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// lazyOriginRate is the registry's egress in the lazy-read tests: slow
// enough that the CDN's sequential fetch could not have reached a range in
// the middle of a layer by the time it is served.
const lazyOriginRate = 16 << 20

// getRange GETs one blob range through a mirror and returns the body,
// checking the 206 and its Content-Range.
func getRange(t *testing.T, ctx context.Context, mirror, repo string, d digest.Digest, start, n, size int64) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+mirror+"/v2/"+repo+"/blobs/"+d.String(), nil)
	require.NoError(t, err)
	req.Header.Set("Range", httpx.FormatRange(start, n))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.Equal(t, httpx.Range{Start: start, Length: n}.ContentRange(size), resp.Header.Get("Content-Range"))
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return b
}

// settledBytes waits until the registry has sent no blob byte for a while
// (the background fill is over) and returns the blob bytes it sent.
func settledBytes(t *testing.T, reg *registrytest.Registry, atLeast int64) int64 {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	last, since := int64(-1), time.Now()
	for time.Now().Before(deadline) {
		n := reg.Stats().BlobBytes
		if n != last {
			last, since = n, time.Now()
		} else if n >= atLeast && time.Since(since) > 2*time.Second {
			return n
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the registry's egress did not settle: %d bytes sent", last)
	return 0
}

// TestLazyRangeReads: a range in the middle of a cold layer is served
// through dfdaemon from the pieces covering it, which the CDN fetched out
// of order with a Range request; the background fill completes the layer
// with the registry sending it about once; a second node's range read is
// served without the registry; four parallel ranges covering another cold
// layer reassemble to its digest, again with about one copy from the
// registry; and a multi-range request is answered as multipart/byteranges.
func TestLazyRangeReads(t *testing.T) {
	skipShort(t)
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithEgressRate(lazyOriginRate))
	var layers []registrytest.Layer
	for range 2 {
		l, err := registrytest.RandomLayer(48 * mib)
		require.NoError(t, err)
		layers = append(layers, l)
	}
	img, err := reg.PushImage(t.Context(), "team/lazy", "1", layers)
	require.NoError(t, err)
	reg.ResetStats()
	sn := startSupernode(t)
	nodeA := startDfdaemon(t, sn.addr, reg.URL.String())
	nodeB := startDfdaemon(t, sn.addr, reg.URL.String())
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// 1. One cold range in the middle of the first layer.
	blob, d := layers[0].Blob, img.Layers[0].Digest
	size := int64(len(blob))
	off := size * 3 / 4
	start := time.Now()
	got := getRange(t, ctx, nodeA, img.Repo, d, off, mib, size)
	took := time.Since(start)
	require.Equal(t, blob[off:off+mib], got)
	ranged := false
	for _, rg := range reg.Stats().BlobRanges[d] {
		r, err := httpx.ParseRange(rg, size)
		if err == nil && r.Start > 0 && r.Start <= off && off < r.Start+r.Length {
			ranged = true
		}
	}
	require.True(t, ranged, "the registry got no Range request covering offset %d: %v", off, reg.Stats().BlobRanges[d])
	sent := settledBytes(t, reg, size)
	t.Logf("cold 1 MiB range at %d of %d bytes: %s; registry sent %.3f copies once settled (ranges asked: %v)",
		off, size, took, float64(sent)/float64(size), reg.Stats().BlobRanges[d])
	require.LessOrEqual(t, float64(sent), 1.05*float64(size), "the registry sent the layer about once")

	// 2. Another node: from the swarm.
	got = getRange(t, ctx, nodeB, img.Repo, d, 10*mib+5, 3*mib, size)
	require.Equal(t, blob[10*mib+5:13*mib+5], got)
	require.Equal(t, sent, reg.Stats().BlobBytes, "the second node's range came from the swarm: %+v", reg.Stats())

	// 3. Four parallel ranges covering the second layer, cold.
	blob2, d2 := layers[1].Blob, img.Layers[1].Digest
	size2 := int64(len(blob2))
	quarter := (size2 + 3) / 4
	parts := make([][]byte, 4)
	g, gctx := errgroup.WithContext(ctx)
	for k := range 4 {
		g.Go(func() error {
			s := int64(k) * quarter
			n := min(quarter, size2-s)
			req, err := http.NewRequestWithContext(gctx, http.MethodGet, "http://"+nodeA+"/v2/"+img.Repo+"/blobs/"+d2.String(), nil)
			if err != nil {
				return err
			}
			req.Header.Set("Range", httpx.FormatRange(s, n))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") == "" {
				return fmt.Errorf("range %d: status %d, Content-Range %q", k, resp.StatusCode, resp.Header.Get("Content-Range"))
			}
			parts[k], err = io.ReadAll(resp.Body)
			return err
		})
	}
	require.NoError(t, g.Wait())
	require.Equal(t, d2, digest.FromBytes(bytes.Join(parts, nil)), "the four ranges reassemble to the layer")
	sent2 := settledBytes(t, reg, sent+size2) - sent
	t.Logf("four parallel ranges of a %d-byte layer: registry sent %.3f copies", size2, float64(sent2)/float64(size2))
	require.LessOrEqual(t, float64(sent2), 1.05*float64(size2))

	// 4. A lazy puller's multi-range request, from the second node.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+nodeB+"/v2/"+img.Repo+"/blobs/"+d2.String(), nil)
	require.NoError(t, err)
	req.Header.Set("Range", "bytes=0-49999,5000000-5049999,"+strconv.FormatInt(size2-50000, 10)+"-"+strconv.FormatInt(size2-1, 10))
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/byteranges", mt)
	mr := multipart.NewReader(resp.Body, params["boundary"])
	seen := 0
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		rg, total, err := httpx.ParseContentRange(p.Header.Get("Content-Range"))
		require.NoError(t, err)
		require.Equal(t, size2, total)
		b, err := io.ReadAll(p)
		require.NoError(t, err)
		require.Equal(t, blob2[rg.Start:rg.Start+rg.Length], b, "part %s", p.Header.Get("Content-Range"))
		seen++
	}
	require.Equal(t, 3, seen)
	require.Equal(t, sent+sent2, reg.Stats().BlobBytes, "no more bytes from the registry")
	require.False(t, strings.Contains(resp.Header.Get("Content-Encoding"), "gzip"))
}
