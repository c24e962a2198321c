package peer

import (
	"context"
	"sync/atomic"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// commitCounter is a store whose writers count plain and vouched commits.
type commitCounter struct {
	content.Store
	plain, vouched atomic.Int32
}

func (c *commitCounter) Writer(ctx context.Context, ref string) (content.Writer, error) {
	w, err := c.Store.Writer(ctx, ref)
	if err != nil {
		return nil, err
	}
	return &countingWriter{VouchedWriter: w.(content.VouchedWriter), c: c}, nil
}

type countingWriter struct {
	content.VouchedWriter
	c *commitCounter
}

func (w *countingWriter) Commit(ctx context.Context, size int64, expected digest.Digest) error {
	w.c.plain.Add(1)
	return w.VouchedWriter.Commit(ctx, size, expected)
}

func (w *countingWriter) CommitVouched(ctx context.Context, size int64, d digest.Digest) error {
	w.c.vouched.Add(1)
	return w.VouchedWriter.CommitVouched(ctx, size, d)
}

// A peer whose pieces the supernode vouches for commits without hashing
// the content again; one whose piece list differs from the supernode's
// hashes it (and still commits right content).
func TestVouchedCommit(t *testing.T) {
	t.Parallel()
	for _, bad := range []bool{false, true} {
		data := randomData(t, 5*testPieceSize+3)
		h := newHolder(t, "good", data, good)
		f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
		f.late = true
		f.badVouch = bad
		ls, err := local.New(t.TempDir(), local.WithDirectIO())
		require.NoError(t, err)
		store := &commitCounter{Store: ls}
		e := newTestEngine(t, f.addr, engineSetup{store: store})
		d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
		require.NoError(t, err)
		res, err := d.Wait(t.Context())
		require.NoError(t, err)
		require.Equal(t, digest.FromBytes(data), res.Digest)
		require.Equal(t, data, readBlob(t, ls, res.Digest))
		require.NoError(t, d.Close())
		if bad {
			require.Equal(t, int32(1), store.plain.Load(), "a piece list the supernode does not vouch for is hashed")
			require.Zero(t, store.vouched.Load())
		} else {
			require.Equal(t, int32(1), store.vouched.Load(), "vouched content is not hashed again")
			require.Zero(t, store.plain.Load())
		}
	}
}
