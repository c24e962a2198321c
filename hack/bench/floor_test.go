package main

import (
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
)

// The floor's relays pass the blob on whole (a short last piece included),
// keep it and serve the kept copy the second time. A blob that is not the
// digest its URL names is not kept (its bytes were already sent on, as the
// CDN's are: the client checks the whole).
func TestRelay(t *testing.T) {
	body := make([]byte, 2*relayPieceSize+12345)
	_, err := rand.Read(body)
	require.NoError(t, err)
	d := digest.FromBytes(body)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/blobs/"+d.String() && r.URL.Path != "/blobs/"+digest.FromString("other").String() {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}))
	defer up.Close()

	get := func(url string) ([]byte, error) {
		resp, err := http.Get(url)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	dir := t.TempDir()
	cdn := &relay{upstream: up.URL + "/blobs/" + d.String(), whole: true, want: d, path: filepath.Join(dir, "cdn")}
	cdnSrv := httptest.NewServer(http.HandlerFunc(cdn.serve))
	defer cdnSrv.Close()
	node := &relay{upstream: cdnSrv.URL, path: filepath.Join(dir, "node")}
	nodeSrv := httptest.NewServer(http.HandlerFunc(node.serve))
	defer nodeSrv.Close()

	for range 2 { // relayed, then from the kept copies
		got, err := get(nodeSrv.URL)
		require.NoError(t, err)
		require.Equal(t, d, digest.FromBytes(got))
	}
	kept, err := os.ReadFile(filepath.Join(dir, "cdn"))
	require.NoError(t, err)
	require.Equal(t, body, kept)
	cdn.mu.Lock()
	require.Len(t, cdn.pieces, 3, "the piece digests, recorded as relayed")
	cdn.mu.Unlock()

	// The kept copy checked piece by piece: whole while it is intact; a
	// changed byte cuts the response before that piece.
	got, err := get(cdnSrv.URL + "?check=1")
	require.NoError(t, err)
	require.Equal(t, body, got)
	kept[relayPieceSize+7] ^= 1
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cdn"), kept, 0o644))
	got, err = get(cdnSrv.URL + "?check=1")
	require.Error(t, err, "the response is cut")
	require.Len(t, got, relayPieceSize, "only the intact first piece is sent")

	liar := &relay{upstream: up.URL + "/blobs/" + digest.FromString("other").String(), whole: true,
		want: digest.FromString("other"), path: filepath.Join(dir, "liar")}
	liarSrv := httptest.NewServer(http.HandlerFunc(liar.serve))
	defer liarSrv.Close()
	_, _ = get(liarSrv.URL)
	liar.mu.Lock()
	defer liar.mu.Unlock()
	require.False(t, liar.done, "a blob that is not its digest is not kept")
}
