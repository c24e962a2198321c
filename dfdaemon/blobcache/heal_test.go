package blobcache_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/pkg/peer"
)

// damage flips one byte of the node's committed copy of d; keepMtime puts
// the modification time back, so only a full hash can tell.
func damage(t *testing.T, n *node, d digest.Digest, keepMtime bool) {
	t.Helper()
	p := filepath.Join(n.store.Root(), "blobs", "sha256", d.Encoded())
	fi, err := os.Stat(p)
	require.NoError(t, err)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	require.NoError(t, err)
	var b [1]byte
	_, err = f.ReadAt(b[:], fi.Size()/2)
	require.NoError(t, err)
	b[0] ^= 0x01
	_, err = f.WriteAt(b[:], fi.Size()/2)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	if keepMtime {
		require.NoError(t, os.Chtimes(p, time.Now(), fi.ModTime()))
	}
}

// read reads blob d through the cache, returning what a client got and how
// the response ended.
func read(t *testing.T, n *node, d digest.Digest, url string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := n.cache.Open(ctx, peer.Request{URL: url, Digest: d, BackToSource: true}, 0, -1)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// A byte changed in the node's cached copy is never served as the blob: the
// read that meets it fails (no clean end, no wrong byte), the copy is
// removed, and the next read fetches it again and ends verified.
func TestCorruptCacheHeals(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{CheckInterval: time.Hour})
	d, u, want := o.add(t, 3*mib+7)
	require.Equal(t, want, n.fetch(t, d, u))

	damage(t, n, d, false)
	got, err := read(t, n, d, u)
	require.Error(t, err, "the response does not end cleanly")
	require.Empty(t, got, "no byte of the damaged copy is served")
	require.False(t, has(t, n.store, d), "the damaged copy is removed")

	require.Eventually(t, func() bool {
		got, err := read(t, n, d, u)
		return err == nil && digest.FromBytes(got) == d
	}, 20*time.Second, 50*time.Millisecond, "the next read fetches the blob again")
	require.True(t, has(t, n.store, d))
}

// The scrub finds damage that left the file's metadata as it was, removes
// the copy and stops offering it; the next read fetches it again.
func TestScrubFindsHiddenDamage(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{CheckInterval: time.Hour})
	d, u, want := o.add(t, 2*mib)
	require.Equal(t, want, n.fetch(t, d, u))
	d2, u2, want2 := o.add(t, mib)
	require.Equal(t, want2, n.fetch(t, d2, u2))
	require.Eventually(t, func() bool { return len(taskPeers(t, sn, d.String())) > 0 }, 10*time.Second, 20*time.Millisecond)

	damage(t, n, d, true)
	require.Equal(t, 1, n.cache.Scrub(t.Context()))
	require.False(t, has(t, n.store, d))
	require.True(t, has(t, n.store, d2), "an intact blob stays")
	require.Eventually(t, func() bool { return len(taskPeers(t, sn, d.String())) == 0 }, 10*time.Second, 20*time.Millisecond,
		"the node no longer offers the removed blob")
	require.Equal(t, want, n.fetch(t, d, u))
	require.Equal(t, 0, n.cache.Scrub(t.Context()))
}
