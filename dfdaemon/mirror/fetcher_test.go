package mirror_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/dfdaemon/proxy"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

var _ proxy.Fetcher = (*mirror.Fetcher)(nil)

// fakeAuth is an authoriser that answers err (nil: yes, with size) and
// counts the questions.
type fakeAuth struct {
	asked atomic.Int64
	size  int64
	err   error
}

func (a *fakeAuth) Authorize(context.Context, *url.URL, string, digest.Digest, http.Header) (int64, error) {
	a.asked.Add(1)
	return a.size, a.err
}

func readAll(t *testing.T, f *mirror.Fetcher, u string, h http.Header) ([]byte, int64, error) {
	t.Helper()
	rc, size, err := f.Fetch(t.Context(), u, h)
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return b, size, err
}

// A blob URL of a configured registry is the digest task, opened only
// after the registry confirmed the client's read; a refusal fails the
// fetch (the proxy then forwards the request to the registry).
func TestFetcherConfiguredRegistryBlob(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 100_000)
	require.NoError(t, err)
	layer := img.Layers[0]
	cfg := mirror.Config{Registry: reg.URL.String()}
	n := startNode(t, startSupernode(t), cfg)
	u := reg.URL.String() + "/v2/team/app/blobs/" + layer.Digest.String()

	denied := &fakeAuth{err: errors.New("no")}
	_, _, err = readAll(t, mirror.NewFetcher(n.cache, denied, cfg.Registries()), u, nil)
	require.Error(t, err)
	require.Equal(t, int64(1), denied.asked.Load())

	yes := &fakeAuth{size: layer.Size}
	body, size, err := readAll(t, mirror.NewFetcher(n.cache, yes, cfg.Registries()), u, nil)
	require.NoError(t, err)
	require.Equal(t, layer.Size, size)
	require.Equal(t, layer.Digest, digest.FromBytes(body))
	require.Equal(t, int64(1), yes.asked.Load())
}

// A blob URL of any other host is never authorised by that host: a URL task
// whose content is checked against the digest in its path.
func TestFetcherOtherHostBlobIsChecked(t *testing.T) {
	t.Parallel()
	blob := make([]byte, 50_000)
	_, _ = rand.Read(blob)
	d := digest.FromBytes(blob)
	lie := make([]byte, len(blob))
	_, _ = rand.Read(lie)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := blob
		if r.URL.Path == "/v2/liar/app/blobs/"+d.String() {
			body = lie
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	t.Cleanup(origin.Close)
	reg := registrytest.New(t)
	cfg := mirror.Config{Registry: reg.URL.String()}
	n := startNode(t, startSupernode(t), cfg)
	auth := &fakeAuth{}
	f := mirror.NewFetcher(n.cache, auth, cfg.Registries())

	body, _, err := readAll(t, f, origin.URL+"/v2/pub/app/blobs/"+d.String(), nil)
	require.NoError(t, err)
	require.Equal(t, blob, body)
	_, _, err = readAll(t, f, origin.URL+"/v2/liar/app/blobs/"+d.String(), nil)
	require.Error(t, err, "content that does not match the digest never ends cleanly")
	require.Zero(t, auth.asked.Load(), "an unconfigured host is never asked")
}

// Any other URL fetched with credentials is a task per credential.
func TestFetcherCredentialPartition(t *testing.T) {
	t.Parallel()
	var gets atomic.Int64
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		body := []byte("content for " + r.Header.Get("Authorization"))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	t.Cleanup(origin.Close)
	reg := registrytest.New(t)
	cfg := mirror.Config{Registry: reg.URL.String()}
	n := startNode(t, startSupernode(t), cfg)
	f := mirror.NewFetcher(n.cache, &fakeAuth{}, cfg.Registries())

	for _, tc := range []struct {
		auth string
		gets int64
	}{{"Bearer a", 1}, {"Bearer a", 1}, {"Bearer b", 2}} {
		body, _, err := readAll(t, f, origin.URL+"/file.tar", http.Header{"Authorization": {tc.auth}})
		require.NoError(t, err)
		require.Equal(t, "content for "+tc.auth, string(body), "never another credential's content")
		require.Equal(t, tc.gets, gets.Load(), tc.auth)
	}
}

// readRange writes what FetchRange returns as a server would.
func readRange(t *testing.T, f *mirror.Fetcher, u, rng string) (*httpx.Body, []byte, int64, error) {
	t.Helper()
	b, size, err := f.FetchRange(t.Context(), u, nil, rng)
	if err != nil {
		return nil, nil, size, err
	}
	defer b.Close()
	var out bytes.Buffer
	_, err = b.WriteTo(&out)
	return b, out.Bytes(), size, err
}

// FetchRange on a real node: a configured registry's blob (size from the
// registry), another host's blob (checked against its digest) and a plain
// URL (size from the engine), each answered with exactly the range's bytes;
// a range past the end is unsatisfiable, with the size.
func TestFetcherRange(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 3_000_000)
	require.NoError(t, err)
	layer := img.Layers[0]
	data := do(t, http.MethodGet, reg.URL.String()+"/v2/team/app/blobs/"+layer.Digest.String(), nil).body
	size := int64(len(data))
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(origin.Close)
	cfg := mirror.Config{Registry: reg.URL.String()}
	n := startNode(t, startSupernode(t), cfg)
	f := mirror.NewFetcher(n.cache, &fakeAuth{size: size}, cfg.Registries())

	for _, u := range []string{
		reg.URL.String() + "/v2/team/app/blobs/" + layer.Digest.String(),
		origin.URL + "/v2/other/app/blobs/" + layer.Digest.String(),
		origin.URL + "/file.tar.gz",
	} {
		b, got, gotSize, err := readRange(t, f, u, "bytes=1000000-1999999")
		require.NoError(t, err, u)
		require.Equal(t, size, gotSize)
		require.Equal(t, http.StatusPartialContent, b.Status)
		require.Equal(t, data[1_000_000:2_000_000], got, u)

		b, got, _, err = readRange(t, f, u, "bytes=-100,0-1")
		require.NoError(t, err, u)
		require.True(t, b.Multipart())
		require.Equal(t, b.ContentLength(), int64(len(got)))
		require.True(t, bytes.Contains(got, data[size-100:]))

		_, got, _, err = readRange(t, f, u, "bytes=0-")
		require.NoError(t, err, u)
		require.Equal(t, layer.Digest, digest.FromBytes(got))

		_, _, gotSize, err = readRange(t, f, u, fmt.Sprintf("bytes=%d-", size))
		require.ErrorIs(t, err, httpx.ErrRangeUnsatisfiable, u)
		require.Equal(t, size, gotSize)
	}
}
