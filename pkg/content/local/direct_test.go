package local

import (
	"bytes"
	"context"
	"io"
	mrand "math/rand/v2"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/piece"
)

func TestConformanceDirectIO(t *testing.T) {
	t.Parallel()
	contenttest.Suite(t, func(t *testing.T) content.Store {
		s, err := New(t.TempDir(), WithDirectIO())
		require.NoError(t, err)
		return s
	})
}

// TestDirectIOPieces writes aligned pieces (around the page cache), an
// unaligned last piece and unaligned buffers, reads every range back while
// the ingest is open, and commits.
func TestDirectIOPieces(t *testing.T) {
	t.Parallel()
	s, err := New(t.TempDir(), WithDirectIO())
	require.NoError(t, err)
	const pieceSize = 64 << 10
	data := randomBytes(t, 5*pieceSize+1234)
	w, err := s.Writer(context.Background(), "direct")
	require.NoError(t, err)
	defer w.Close()
	if w.(*writer).direct.Load() == nil {
		t.Log("the filesystem refused O_DIRECT: buffered I/O only")
	}
	for _, i := range mrand.Perm(6) {
		off := i * pieceSize
		chunk := data[off:min(off+pieceSize, len(data))]
		buf := piece.Buffer(len(chunk))
		if i == 2 {
			buf = make([]byte, len(chunk)+1)[1:] // not aligned in memory
		}
		copy(buf, chunk)
		n, err := w.WriteAt(buf, int64(off))
		require.NoError(t, err)
		require.Equal(t, len(chunk), n)
	}
	for _, r := range [][2]int{{0, len(data)}, {1, 4095}, {4095, 2}, {pieceSize - 7, pieceSize + 14}, {len(data) - 10, 10}, {len(data) - 5000, 5000}} {
		got := make([]byte, r[1])
		n, err := w.ReadAt(got, int64(r[0]))
		require.NoError(t, err, "range %v", r)
		require.Equal(t, r[1], n)
		require.True(t, bytes.Equal(data[r[0]:r[0]+r[1]], got), "range %v", r)
	}
	past := make([]byte, 100)
	n, err := w.ReadAt(past, int64(len(data)-40))
	require.Equal(t, 40, n)
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, w.Commit(context.Background(), int64(len(data)), digest.FromBytes(data)))
	require.Equal(t, data, readBlob(t, s, digest.FromBytes(data)))
}

// TestSkipHash: after SkipHash a plain Commit still hashes everything (and
// refuses a wrong digest); CommitVouched publishes without hashing but
// still refuses an incomplete ingest.
func TestSkipHash(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, direct := range []bool{false, true} {
		var opts []Option
		if direct {
			opts = append(opts, WithDirectIO())
		}
		s, err := New(t.TempDir(), opts...)
		require.NoError(t, err)
		data := randomBytes(t, 3<<20+17)
		d := digest.FromBytes(data)
		write := func(ref string, data []byte) content.VouchedWriter {
			w, err := s.Writer(ctx, ref)
			require.NoError(t, err)
			vw := w.(content.VouchedWriter)
			vw.SkipHash()
			require.NoError(t, contenttest.WritePieces(w, data, 1<<20, mrand.Perm((len(data)+1<<20-1)>>20)))
			return vw
		}

		w := write("wrong", data)
		require.ErrorIs(t, w.Commit(ctx, int64(len(data)), digest.FromString("other")), content.ErrDigestMismatch)
		_, err = s.Info(ctx, d)
		require.ErrorIs(t, err, content.ErrNotFound)

		w = write("plain", data)
		require.NoError(t, w.Commit(ctx, int64(len(data)), d))
		require.Equal(t, d, w.Digest())
		require.NoError(t, s.Delete(ctx, d))

		w = write("short", data[:2<<20])
		require.ErrorIs(t, w.CommitVouched(ctx, int64(len(data)), d), content.ErrSizeMismatch)
		_, err = s.Info(ctx, d)
		require.ErrorIs(t, err, content.ErrNotFound)

		w = write("vouched", data)
		require.NoError(t, w.CommitVouched(ctx, int64(len(data)), d))
		require.Equal(t, d, w.Digest())
		require.Equal(t, data, readBlob(t, s, d))
	}
}

func readBlob(t *testing.T, s *Store, d digest.Digest) []byte {
	t.Helper()
	ra, err := s.ReaderAt(context.Background(), d)
	require.NoError(t, err)
	defer ra.Close()
	got := make([]byte, ra.Size())
	_, err = ra.ReadAt(got, 0)
	require.NoError(t, err)
	return got
}
