package mirror_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/dfdaemon/proxy"
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
