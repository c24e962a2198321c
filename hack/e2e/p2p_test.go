package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const mib = 1 << 20

// Eight peers download one 64 MiB file at once: every copy is right and the
// origin sends the file about once; the rest moves between peers.
func TestConcurrentPeersFetchOnce(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const peers, size = 8, 64 * mib
	o := newOrigin(t, size, 64*mib) // one copy takes about a second
	sn := startSupernode(t)

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var ds []*dfget
	for i := range peers {
		out := filepath.Join(dir, fmt.Sprintf("out-%d", i))
		ds = append(ds, startDfget(t, ctx, o.url("big.bin"), out, "--node", sn.addr, "--notbs"))
	}
	for i, d := range ds {
		require.NoError(t, d.wait(t, 3*time.Minute), "peer %d stderr:\n%s", i, d.stderr.String())
		require.Equal(t, o.sum, fileSHA256(t, d.out), "peer %d", i)
	}

	served := o.served.Load()
	t.Logf("origin served %d bytes for a %d-byte file (%.3fx) in %d requests",
		served, size, float64(served)/float64(size), o.requests.Load())
	require.LessOrEqual(t, float64(served), 1.05*float64(size), "origin egress")

	tasks := sn.tasks(t)
	require.Len(t, tasks, 1)
	require.Equal(t, "succeeded", tasks[0].State)
	t.Logf("bytes to peers: from CDN %d, from peers %d", tasks[0].BytesFromCDN, tasks[0].BytesFromPeers)
	require.Positive(t, tasks[0].BytesFromPeers, "peers must have fetched pieces from each other")
	require.Equal(t, int64(peers*size), tasks[0].BytesFromCDN+tasks[0].BytesFromPeers)
}

// With the supernode unreachable dfget downloads from the source and says
// so; with --notbs it fails with a clear reason and leaves no file.
func TestSupernodeUnreachable(t *testing.T) {
	skipShort(t)
	t.Parallel()
	o := newOrigin(t, 5*mib+123, 0)
	dead := closedAddr(t)
	dir := t.TempDir()

	t.Run("back to source", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(dir, "fallback")
		d := startDfget(t, t.Context(), o.url("f"), out, "--node", dead)
		require.NoError(t, d.wait(t, time.Minute), d.stderr.String())
		require.Equal(t, o.sum, fileSHA256(t, out))
		require.Contains(t, d.stderr.String(), "source")
	})
	t.Run("notbs", func(t *testing.T) {
		t.Parallel()
		out := filepath.Join(dir, "notbs")
		d := startDfget(t, t.Context(), o.url("f"), out, "--node", dead, "--notbs")
		err := d.wait(t, time.Minute)
		require.Error(t, err, "dfget must fail with --notbs and no supernode")
		msg := lastLine(d.stderr.String())
		require.Contains(t, msg, "dfget:")
		require.Contains(t, msg, dead)
		_, statErr := os.Stat(out)
		require.ErrorIs(t, statErr, os.ErrNotExist, "no output file may exist")
	})
}
