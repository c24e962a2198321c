package registrytest

import (
	"io"
	"net/http"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
)

func get(t *testing.T, url, auth string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Accept", MediaTypeManifest)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body, resp.Header
}

func TestPushPullAndCount(t *testing.T) {
	t.Parallel()
	r := New(t)
	img, err := r.PushRandomImage(t.Context(), "library/app", "1", 1000, 50_000)
	require.NoError(t, err)
	require.Len(t, img.Layers, 2)
	r.ResetStats()

	code, body, hdr := get(t, r.URL.JoinPath("v2/library/app/manifests/1").String(), "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, img.ManifestBody, body)
	require.Equal(t, img.Manifest.String(), hdr.Get("Docker-Content-Digest"))

	for _, d := range img.Blobs() {
		code, body, _ := get(t, r.URL.JoinPath("v2/library/app/blobs", d.Digest.String()).String(), "")
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, d.Digest, digest.FromBytes(body))
	}
	s := r.Stats()
	require.Equal(t, 1, s.ManifestGETs["library/app:1"])
	require.Equal(t, 1, s.BlobGETs[img.Layers[1].Digest])
	require.Equal(t, img.Layers[0].Size+img.Layers[1].Size+img.Config.Size, s.BlobBytes)
}

func TestTokenAuth(t *testing.T) {
	t.Parallel()
	r := New(t, WithTokenAuth(map[string]string{"alice": "s3cret"}))
	img, err := r.PushRandomImage(t.Context(), "private/app", "v1", 4096)
	require.NoError(t, err)
	blob := r.URL.JoinPath("v2/private/app/blobs", img.Layers[0].Digest.String()).String()

	code, _, hdr := get(t, blob, "")
	require.Equal(t, http.StatusUnauthorized, code)
	require.Contains(t, hdr.Get("WWW-Authenticate"), r.Realm())

	anon, err := r.Token(t.Context(), "", "", "repository:private/app:pull")
	require.NoError(t, err)
	code, _, _ = get(t, blob, "Bearer "+anon)
	require.Equal(t, http.StatusUnauthorized, code, "an anonymous token grants nothing")

	_, err = r.Token(t.Context(), "alice", "wrong", "repository:private/app:pull")
	require.Error(t, err)

	tok, err := r.Token(t.Context(), "alice", "s3cret", "repository:private/app:pull")
	require.NoError(t, err)
	code, body, _ := get(t, blob, "Bearer "+tok)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, img.Layers[0].Digest, digest.FromBytes(body))
}
