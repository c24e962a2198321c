package local

import (
	"context"
	"crypto/rand"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	t.Parallel()
	contenttest.Suite(t, func(t *testing.T) content.Store { return newStore(t, t.TempDir()) })
}

func newStore(t *testing.T, root string) *Store {
	t.Helper()
	s, err := New(root)
	require.NoError(t, err)
	return s
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// listFiles returns every path under root, relative to it.
func listFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		require.NoError(t, err)
		out = append(out, rel)
		return nil
	}))
	return out
}

func TestAddSpan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []span
		s, e int64
		want []span
	}{
		{"empty", nil, 0, 5, []span{{0, 5}}},
		{"zero length", []span{{0, 5}}, 7, 7, []span{{0, 5}}},
		{"before", []span{{10, 20}}, 0, 5, []span{{0, 5}, {10, 20}}},
		{"after", []span{{0, 5}}, 10, 20, []span{{0, 5}, {10, 20}}},
		{"touch left", []span{{10, 20}}, 5, 10, []span{{5, 20}}},
		{"touch right", []span{{0, 5}}, 5, 10, []span{{0, 10}}},
		{"bridge", []span{{0, 5}, {10, 20}}, 5, 10, []span{{0, 20}}},
		{"overlap many", []span{{0, 2}, {4, 6}, {8, 10}, {20, 30}}, 1, 9, []span{{0, 10}, {20, 30}}},
		{"inside", []span{{0, 10}}, 2, 3, []span{{0, 10}}},
		{"cover", []span{{2, 3}, {5, 6}}, 0, 10, []span{{0, 10}}},
		{"between", []span{{0, 2}, {10, 12}}, 4, 6, []span{{0, 2}, {4, 6}, {10, 12}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := addSpan(append([]span(nil), tt.in...), tt.s, tt.e)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestNewRemovesLeftoverIngests(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newStore(t, root)
	w, err := s.Writer(t.Context(), "crashed")
	require.NoError(t, err)
	_, err = w.Write([]byte("half a blob"))
	require.NoError(t, err)
	d := digest.SHA256.FromBytes([]byte("kept"))
	c, err := s.Writer(t.Context(), "done")
	require.NoError(t, err)
	_, err = c.Write([]byte("kept"))
	require.NoError(t, err)
	require.NoError(t, c.Commit(t.Context(), 4, d))
	require.FileExists(t, filepath.Join(root, "ingest", "crashed", "data"))
	// A stray file left by an older run, too.
	require.NoError(t, os.WriteFile(filepath.Join(root, "ingest", "stray"), []byte("x"), 0o644))

	// A restart (the old writer is never closed: the process "crashed").
	s2 := newStore(t, root)
	entries, err := os.ReadDir(filepath.Join(root, "ingest"))
	require.NoError(t, err)
	require.Empty(t, entries)
	_, err = s2.Status(t.Context(), "crashed")
	require.ErrorIs(t, err, content.ErrNotFound)
	info, err := s2.Info(t.Context(), d)
	require.NoError(t, err, "committed blobs survive")
	require.Equal(t, int64(4), info.Size)
	w2, err := s2.Writer(t.Context(), "crashed")
	require.NoError(t, err)
	st, err := w2.Status()
	require.NoError(t, err)
	require.Zero(t, st.Written)
	require.NoError(t, w2.Close())
}

func TestPathEscapesRejected(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	root := filepath.Join(parent, "store")
	s := newStore(t, root)
	ctx := t.Context()
	before := listFiles(t, parent)

	for _, ref := range []string{"..", "../x", "../../etc", "a/../../b", "/tmp/x", ".", "x/y"} {
		_, err := s.Writer(ctx, ref)
		require.ErrorIs(t, err, content.ErrInvalid, ref)
		require.ErrorIs(t, s.Abort(ctx, ref), content.ErrInvalid, ref)
	}
	for _, d := range []digest.Digest{
		"sha256:../../../../x", "sha256:/etc/passwd", "../sha256",
		digest.Digest("sha256:../" + digest.SHA256.FromString("x").Encoded()[3:]),
	} {
		_, err := s.ReaderAt(ctx, d)
		require.ErrorIs(t, err, content.ErrInvalid, d)
		require.ErrorIs(t, s.Delete(ctx, d), content.ErrInvalid, d)
		require.ErrorIs(t, s.Export(ctx, d, filepath.Join(parent, "out"), false), content.ErrInvalid, d)
	}
	require.Equal(t, before, listFiles(t, parent), "nothing created or removed")
}

// TestOutOfOrderConcurrentPieces writes 64 pieces from several goroutines in
// a shuffled order, as a downloader does, and checks the committed digest.
func TestOutOfOrderConcurrentPieces(t *testing.T) {
	t.Parallel()
	s := newStore(t, t.TempDir())
	const pieces, pieceSize = 64, 16 << 10
	data := randomBytes(t, pieces*pieceSize-1000)
	want := digest.SHA256.FromBytes(data)
	order := mrand.Perm(pieces)

	w, err := s.Writer(t.Context(), "pieces")
	require.NoError(t, err)
	defer w.Close()
	work := make(chan int)
	var wg sync.WaitGroup
	errs := make(chan error, pieces)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				off := i * pieceSize
				end := min(off+pieceSize, len(data))
				if _, err := w.WriteAt(data[off:end], int64(off)); err != nil {
					errs <- err
				}
				if _, err := w.Status(); err != nil {
					errs <- err
				}
			}
		})
	}
	for _, i := range order {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	st, err := w.Status()
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), st.Offset)
	require.Equal(t, int64(len(data)), st.Written)
	// The prefix hash is already complete: Commit only checks it.
	lw := w.(*writer)
	require.Equal(t, int64(len(data)), lw.hashed)
	require.NoError(t, w.Commit(t.Context(), int64(len(data)), want))
	require.Equal(t, want, w.Digest())

	got, err := os.ReadFile(filepath.Join(s.Root(), "blobs", "sha256", want.Encoded()))
	require.NoError(t, err)
	require.Equal(t, data, got)
}

func TestMismatchPublishesNothing(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := newStore(t, root)
	data := randomBytes(t, 5000)
	w, err := s.Writer(t.Context(), "bad")
	require.NoError(t, err)
	_, err = w.WriteAt(data[2500:], 2500)
	require.NoError(t, err)
	_, err = w.WriteAt(data[:2500], 0)
	require.NoError(t, err)
	err = w.Commit(t.Context(), 5000, digest.SHA256.FromString("something else"))
	require.ErrorIs(t, err, content.ErrDigestMismatch)
	require.NoError(t, w.Close())

	blobs, err := os.ReadDir(filepath.Join(root, "blobs", "sha256"))
	require.NoError(t, err)
	require.Empty(t, blobs)
	ingests, err := os.ReadDir(filepath.Join(root, "ingest"))
	require.NoError(t, err)
	require.Empty(t, ingests)
	usage, err := s.Usage(t.Context())
	require.NoError(t, err)
	require.Zero(t, usage)
}

func TestExport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		move     bool
		existing bool // dst exists before the export
	}{
		{"copy", false, false},
		{"copy over existing", false, true},
		{"move", true, false},
		{"move over existing", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t, t.TempDir())
			ctx := t.Context()
			data := randomBytes(t, 100_000)
			d := digest.SHA256.FromBytes(data)
			w, err := s.Writer(ctx, "export")
			require.NoError(t, err)
			_, err = w.Write(data)
			require.NoError(t, err)
			require.NoError(t, w.Commit(ctx, int64(len(data)), d))
			require.NoError(t, w.Close())

			outDir := t.TempDir()
			dst := filepath.Join(outDir, "file.bin")
			if tt.existing {
				require.NoError(t, os.WriteFile(dst, []byte("old"), 0o644))
			}
			require.NoError(t, s.Export(ctx, d, dst, tt.move))
			got, err := os.ReadFile(dst)
			require.NoError(t, err)
			require.Equal(t, data, got)
			entries, err := os.ReadDir(outDir)
			require.NoError(t, err)
			require.Len(t, entries, 1, "no temp file left")

			_, err = s.Info(ctx, d)
			if tt.move {
				require.ErrorIs(t, err, content.ErrNotFound, "moved out of the store")
			} else {
				require.NoError(t, err, "copy keeps the blob")
			}
		})
	}
}

func TestExportFailureLeavesNoPartialFile(t *testing.T) {
	t.Parallel()
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	outDir := t.TempDir()
	dst := filepath.Join(outDir, "out")

	// Unknown blob: nothing written.
	err := s.Export(ctx, digest.SHA256.FromString("missing"), dst, false)
	require.ErrorIs(t, err, content.ErrNotFound)
	require.NoFileExists(t, dst)

	// Cancelled context during a copy: dst keeps its old state.
	data := randomBytes(t, 3<<20)
	d := digest.SHA256.FromBytes(data)
	w, err := s.Writer(ctx, "x")
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	require.NoError(t, w.Commit(ctx, int64(len(data)), d))
	require.NoError(t, w.Close())
	require.NoError(t, os.WriteFile(dst, []byte("old"), 0o644))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, s.Export(cctx, d, dst, false), context.Canceled)
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.Equal(t, []byte("old"), got)
	entries, err := os.ReadDir(outDir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "temp file removed")

	// A directory as destination is refused.
	require.Error(t, s.Export(ctx, d, outDir, false))
}

func TestUsageAndAccessTime(t *testing.T) {
	t.Parallel()
	s := newStore(t, t.TempDir())
	ctx := t.Context()
	var total int64
	var last digest.Digest
	for i, n := range []int{10, 2000, 0, 12345} {
		data := randomBytes(t, n)
		w, err := s.Writer(ctx, "u"+string(rune('a'+i)))
		require.NoError(t, err)
		_, err = w.Write(data)
		require.NoError(t, err)
		require.NoError(t, w.Commit(ctx, int64(n), ""))
		last = w.Digest()
		require.NoError(t, w.Close())
		total += int64(n)
	}
	usage, err := s.Usage(ctx)
	require.NoError(t, err)
	require.Equal(t, total, usage)

	p := filepath.Join(s.Root(), "blobs", "sha256", last.Encoded())
	old := time.Now().Add(-48 * time.Hour)
	require.NoError(t, os.Chtimes(p, old, old))
	ra, err := s.ReaderAt(ctx, last)
	require.NoError(t, err)
	require.NoError(t, ra.Close())
	info, err := s.Info(ctx, last)
	require.NoError(t, err)
	require.True(t, info.AccessedAt.After(old.Add(time.Hour)), "ReaderAt touches the access time")
	require.WithinDuration(t, old, info.CreatedAt, time.Second, "and keeps the creation time")
}

// TestWriteBehind writes more than writebackEvery, out of order and
// concurrently, so that writeback starts while pieces are still written and
// hashed: the committed blob is exactly the bytes, and a writer closed while
// its writeback may still be starting leaves nothing behind.
func TestWriteBehind(t *testing.T) {
	t.Parallel()
	const pieceSize = 1 << 20
	pieces := writebackEvery/pieceSize + 8
	data := randomBytes(t, pieces*pieceSize-5)
	d := digest.FromBytes(data)
	root := t.TempDir()
	s := newStore(t, root)
	ctx := t.Context()

	w, err := s.Writer(ctx, "write-behind")
	require.NoError(t, err)
	require.NoError(t, contenttest.WritePieces(w, data, pieceSize, mrand.Perm(pieces)))
	require.NoError(t, w.Commit(ctx, int64(len(data)), d))
	require.NoError(t, w.Close())
	ra, err := s.ReaderAt(ctx, d)
	require.NoError(t, err)
	got := make([]byte, len(data))
	_, err = ra.ReadAt(got, 0)
	require.NoError(t, err)
	require.NoError(t, ra.Close())
	require.Equal(t, d, digest.FromBytes(got))

	aborted, err := s.Writer(ctx, "write-behind-aborted")
	require.NoError(t, err)
	_, err = aborted.Write(data[:writebackEvery+1])
	require.NoError(t, err)
	require.NoError(t, aborted.Close())
	_, err = s.Status(ctx, "write-behind-aborted")
	require.ErrorIs(t, err, content.ErrNotFound)
}
