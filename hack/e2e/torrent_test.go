package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/supernode/bt/bttest"
)

func randomFile(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestTorrentMagnetSwarm: several dfgets download a magnet link at once
// through the supernode, whose BitTorrent client fetches it once from a
// real seeder (aria2c): every copy is verified, and the seeder uploaded
// about one copy. A torrent file by URL works the same.
func TestTorrentMagnetSwarm(t *testing.T) {
	skipShort(t)
	bttest.Require(t)
	t.Parallel()
	data := randomFile(t, 24<<20)
	// A tracker for the torrent file; the magnet link names the seeder
	// itself (x.pe).
	tracker := bttest.NewTracker(t)
	seeder := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "weights.bin", Announce: tracker.URL})
	tracker.SetPeers(seeder.Addr)
	sn := startSupernode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	const n = 4
	dir := t.TempDir()
	var ds []*dfget
	for i := range n {
		ds = append(ds, startDfget(t, ctx, seeder.Magnet, filepath.Join(dir, "w"+string(rune('0'+i))), "--node", sn.addr))
	}
	for _, d := range ds {
		require.NoError(t, d.wait(t, 2*time.Minute), "dfget: %s", d.stderr.String())
		require.Equal(t, sha256Hex(data), fileSHA256(t, d.out))
	}
	up, err := seeder.UploadLength(ctx)
	require.NoError(t, err)
	t.Logf("%d dfgets of a %d-byte magnet: the seeder uploaded %d bytes (%.3f copies)", n, len(data), up, float64(up)/float64(len(data)))
	require.LessOrEqual(t, float64(up), 1.1*float64(len(data)), "the seeder uploads about one copy")

	// The same torrent by its file's URL (peers from its tracker): another
	// task, fetched again.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write(seeder.Torrent)
	}))
	defer srv.Close()
	d := startDfget(t, ctx, "torrent+"+srv.URL+"/weights.torrent", filepath.Join(dir, "by-url"), "--node", sn.addr)
	require.NoError(t, d.wait(t, 2*time.Minute), "dfget: %s", d.stderr.String())
	require.Equal(t, sha256Hex(data), fileSHA256(t, d.out))
	require.Positive(t, tracker.Announces())
}

// TestTorrentMultiFile: a torrent of several files fails at once without
// --bt-file, naming its files; with it, only that file is downloaded.
func TestTorrentMultiFile(t *testing.T) {
	skipShort(t)
	bttest.Require(t)
	t.Parallel()
	a, b := randomFile(t, 3<<20+17), randomFile(t, 5<<20+3)
	seeder := bttest.Seed(t, map[string][]byte{"a.bin": a, "dir/b.bin": b}, bttest.SeedOptions{Name: "set"})
	sn := startSupernode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()

	d := startDfget(t, ctx, seeder.Magnet, filepath.Join(dir, "none"), "--node", sn.addr)
	require.Error(t, d.wait(t, time.Minute))
	require.Contains(t, d.stderr.String(), "a.bin")
	require.Contains(t, d.stderr.String(), "dir/b.bin")

	d = startDfget(t, ctx, seeder.Magnet, filepath.Join(dir, "b"), "--node", sn.addr, "--bt-file", "dir/b.bin")
	require.NoError(t, d.wait(t, time.Minute), "dfget: %s", d.stderr.String())
	require.Equal(t, sha256Hex(b), fileSHA256(t, d.out))
}

// TestTorrentHostileSources: a seeder that serves corrupt pieces fails the
// download with a clear error and nothing written; a peer outside the
// supernode's outbound policy is never dialled.
func TestTorrentHostileSources(t *testing.T) {
	skipShort(t)
	bttest.Require(t)
	t.Parallel()
	data := randomFile(t, 4<<20)
	liar := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "liar.bin", Corrupt: true})
	cfg := writeConfig(t, "cdn:\n  bt:\n    stallTimeout: 5s\n    metadataTimeout: 10s\n")
	sn := startSupernode(t, "--config", cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()

	d := startDfget(t, ctx, liar.Magnet, filepath.Join(dir, "liar"), "--node", sn.addr)
	require.Error(t, d.wait(t, time.Minute))
	require.NoFileExists(t, filepath.Join(dir, "liar"))
	t.Logf("lying seeder: %s", lastLine(d.stderr.String()))

	// 127.0.0.2 is loopback, which the supernode's policy denies (only
	// 127.0.0.1 is allowed here): the peer is never dialled.
	honest := bttest.Seed(t, map[string][]byte{"": data}, bttest.SeedOptions{Name: "honest.bin"})
	_, port, _ := strings.Cut(honest.Addr, ":")
	magnet := strings.Replace(honest.Magnet, "127.0.0.1%3A"+port, "127.0.0.2%3A"+port, 1)
	magnet = strings.Replace(magnet, "127.0.0.1:"+port, "127.0.0.2:"+port, 1)
	require.Contains(t, magnet, "127.0.0.2")
	d = startDfget(t, ctx, magnet, filepath.Join(dir, "denied"), "--node", sn.addr)
	require.Error(t, d.wait(t, time.Minute))
	require.Contains(t, d.stderr.String(), "policy")
	up, err := honest.UploadLength(ctx)
	require.NoError(t, err)
	require.Zero(t, up)
}
