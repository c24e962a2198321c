package local

import (
	"bytes"
	"context"
	"io"
	mrand "math/rand/v2"
	"os"
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

// TestReadAtDirect reads a committed blob of a WithDirectWrites store
// around the page cache: aligned memory at aligned offsets straight into
// the caller's buffer, unaligned ranges and the file's end through the
// bounce buffers; and a blob whose path was renamed over after it was
// opened is still read from the file opened.
func TestReadAtDirect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := New(t.TempDir(), WithDirectWrites())
	require.NoError(t, err)
	data := randomBytes(t, 3<<20+1234)
	d := digest.FromBytes(data)
	w, err := s.Writer(ctx, "direct-writes")
	require.NoError(t, err)
	require.NoError(t, contenttest.WritePieces(w, data, 1<<20, mrand.Perm(4)))
	require.NoError(t, w.Commit(ctx, int64(len(data)), d))

	ra, err := s.ReaderAt(ctx, d)
	require.NoError(t, err)
	defer ra.Close()
	fr, ok := ra.(*fileReader)
	require.True(t, ok, "a WithDirectWrites store reads blobs through the page cache, from a file sendfile can send")
	for _, r := range []struct {
		off, n  int
		aligned bool
	}{
		{0, 1 << 20, true},
		{1 << 20, 2<<20 + 1234, true}, // to the end: an unaligned tail
		{4096, 8192 + 17, true},
		{5, 4096, false},
		{len(data) - 100, 100, false},
	} {
		buf := piece.Buffer(r.n)
		if !r.aligned {
			buf = make([]byte, r.n+1)[1:]
		}
		n, err := fr.ReadAtDirect(buf, int64(r.off))
		require.NoError(t, err, "range %+v", r)
		require.Equal(t, r.n, n)
		require.True(t, bytes.Equal(data[r.off:r.off+r.n], buf), "range %+v", r)
	}
	if fr.direct == nil {
		t.Log("the filesystem refused O_DIRECT: ReadAtDirect read through the page cache")
	}
	past := piece.Buffer(8192)
	n, err := fr.ReadAtDirect(past, int64(len(data)-1234))
	require.Equal(t, 1234, n)
	require.ErrorIs(t, err, io.EOF)
	require.True(t, bytes.Equal(data[len(data)-1234:], past[:1234]))

	// A file renamed over the blob's path after the reader opened it.
	ra2, err := s.ReaderAt(ctx, d)
	require.NoError(t, err)
	defer ra2.Close()
	other := randomBytes(t, len(data))
	tmp := s.blobPath(d) + ".other"
	require.NoError(t, os.WriteFile(tmp, other, 0o600))
	require.NoError(t, os.Rename(tmp, s.blobPath(d)))
	got := piece.Buffer(1 << 20)
	n, err = ra2.(*fileReader).ReadAtDirect(got, 0)
	require.NoError(t, err)
	require.Equal(t, 1<<20, n)
	require.True(t, bytes.Equal(data[:1<<20], got), "the file opened is read, not the one now at its path")
}
