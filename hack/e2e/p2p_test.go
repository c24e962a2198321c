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
// origin sends the file about once. With the CDN as a super-seed
// (cdnPieceFanout 1) every copy but about one moves between peers; with the
// default fanout the CDN may also send a new piece to several of the eight
// at once, but never fetches it twice.
func TestConcurrentPeersFetchOnce(t *testing.T) {
	skipShort(t)
	t.Parallel()
	for _, tt := range []struct {
		name   string
		fanout int
	}{
		{"super-seed", 1},
		{"default fanout", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var args []string
			if tt.fanout > 0 {
				args = []string{"--config", writeConfig(t, fmt.Sprintf("scheduler:\n  cdnPieceFanout: %d\n", tt.fanout))}
			}
			concurrentPeers(t, args, tt.fanout == 1)
		})
	}
}

func concurrentPeers(t *testing.T, supernodeArgs []string, superSeed bool) {
	const peers, size = 8, 64 * mib
	o := newOrigin(t, size, 64*mib) // one copy takes about a second
	sn := startSupernode(t, supernodeArgs...)

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
	require.Equal(t, int64(peers*size), tasks[0].BytesFromCDN+tasks[0].BytesFromPeers)
	if superSeed {
		// Each piece leaves the CDN once, again only when a transfer of it
		// failed: at most two copies in all.
		require.LessOrEqual(t, tasks[0].BytesFromCDN, int64(2*size), "the CDN super-seeds")
		require.GreaterOrEqual(t, tasks[0].BytesFromPeers, int64((peers-2)*size), "peers fetch from each other")
	}
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
		require.Contains(t, d.stderr.String(), "downloading from source")
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
