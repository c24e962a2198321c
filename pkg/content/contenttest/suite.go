// The conformance suite is one file on purpose: Suite and its cases are one
// contract read top to bottom, each case a short function of the lifecycle
// in pkg/content.

package contenttest

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content"
)

// WritePieces writes data into w as pieces of pieceSize (the last one
// shorter), each on its own goroutine, started in the order of the piece
// indexes in order, and returns every write's error.
func WritePieces(w io.WriterAt, data []byte, pieceSize int, order []int) error {
	var wg sync.WaitGroup
	errs := make([]error, len(order))
	for k, i := range order {
		wg.Go(func() {
			off := i * pieceSize
			_, errs[k] = w.WriteAt(data[off:min(off+pieceSize, len(data))], int64(off))
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Suite runs the conformance tests of the content.Store contract against
// stores made by newStore, one fresh store per subtest.
func Suite(t *testing.T, newStore func(t *testing.T) content.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s content.Store)
	}{
		{"WriteCommitRead", testWriteCommitRead},
		{"CommitWithoutExpected", testCommitWithoutExpected},
		{"EmptyBlob", testEmptyBlob},
		{"DigestMismatch", testDigestMismatch},
		{"SizeMismatch", testSizeMismatch},
		{"AlreadyExists", testAlreadyExists},
		{"RefInUse", testRefInUse},
		{"AbortOnClose", testAbortOnClose},
		{"AbortHeldRef", testAbortHeldRef},
		{"WriteAtOutOfOrder", testWriteAtOutOfOrder},
		{"ConcurrentWriteAt", testConcurrentWriteAt},
		{"ReadAtDuringIngest", testReadAtDuringIngest},
		{"SyncDuringIngest", testSyncDuringIngest},
		{"WriteAfterCommit", testWriteAfterCommit},
		{"ListStatuses", testListStatuses},
		{"Walk", testWalk},
		{"Delete", testDelete},
		{"Info", testInfo},
		{"InvalidRefs", testInvalidRefs},
		{"InvalidDigests", testInvalidDigests},
		{"NotFound", testNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore(t))
		})
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// commit writes data under ref in one go and commits it with its digest.
func commit(t *testing.T, s content.Store, ref string, data []byte) digest.Digest {
	t.Helper()
	w, err := s.Writer(t.Context(), ref)
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	d := digest.SHA256.FromBytes(data)
	require.NoError(t, w.Commit(t.Context(), int64(len(data)), d))
	return d
}

func readAll(t *testing.T, s content.Store, d digest.Digest) []byte {
	t.Helper()
	ra, err := s.ReaderAt(t.Context(), d)
	require.NoError(t, err)
	defer ra.Close()
	buf := make([]byte, ra.Size())
	n, err := ra.ReadAt(buf, 0)
	if err != nil {
		require.ErrorIs(t, err, io.EOF)
	}
	require.Equal(t, len(buf), n)
	return buf
}

func requireNoBlob(t *testing.T, s content.Store, d digest.Digest) {
	t.Helper()
	_, err := s.Info(t.Context(), d)
	require.ErrorIs(t, err, content.ErrNotFound)
	_, err = s.ReaderAt(t.Context(), d)
	require.ErrorIs(t, err, content.ErrNotFound)
}

func testWriteCommitRead(t *testing.T, s content.Store) {
	ctx := t.Context()
	data := randomBytes(t, 300_000)
	d := digest.SHA256.FromBytes(data)
	w, err := s.Writer(ctx, "write-commit")
	require.NoError(t, err)
	defer w.Close()
	for off := 0; off < len(data); off += 70_000 {
		_, err := w.Write(data[off:min(off+70_000, len(data))])
		require.NoError(t, err)
		st, err := w.Status()
		require.NoError(t, err)
		require.Equal(t, int64(min(off+70_000, len(data))), st.Offset)
		require.Equal(t, st.Offset, st.Written)
		require.Equal(t, "write-commit", st.Ref)
	}
	require.Empty(t, w.Digest())
	require.NoError(t, w.Commit(ctx, int64(len(data)), d))
	require.Equal(t, d, w.Digest())
	require.NoError(t, w.Close())

	ra, err := s.ReaderAt(ctx, d)
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), ra.Size())
	mid := make([]byte, 1000)
	_, err = ra.ReadAt(mid, 123_456)
	require.NoError(t, err)
	require.Equal(t, data[123_456:124_456], mid)
	require.NoError(t, ra.Close())
	require.Equal(t, data, readAll(t, s, d))

	_, err = s.Status(ctx, "write-commit")
	require.ErrorIs(t, err, content.ErrNotFound, "a committed ingest is gone")
}

func testCommitWithoutExpected(t *testing.T, s content.Store) {
	data := []byte("no expected digest")
	w, err := s.Writer(t.Context(), "no-expected")
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	require.NoError(t, w.Commit(t.Context(), int64(len(data)), ""))
	require.Equal(t, digest.SHA256.FromBytes(data), w.Digest())
	require.Equal(t, data, readAll(t, s, w.Digest()))
}

func testEmptyBlob(t *testing.T, s content.Store) {
	w, err := s.Writer(t.Context(), "empty")
	require.NoError(t, err)
	defer w.Close()
	d := digest.SHA256.FromBytes(nil)
	require.NoError(t, w.Commit(t.Context(), 0, d))
	info, err := s.Info(t.Context(), d)
	require.NoError(t, err)
	require.Zero(t, info.Size)
}

func testDigestMismatch(t *testing.T, s content.Store) {
	ctx := t.Context()
	data := []byte("the real bytes")
	wrong := digest.SHA256.FromBytes([]byte("other bytes"))
	w, err := s.Writer(ctx, "mismatch")
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	err = w.Commit(ctx, int64(len(data)), wrong)
	require.ErrorIs(t, err, content.ErrDigestMismatch)
	require.Contains(t, err.Error(), wrong.String())
	require.Contains(t, err.Error(), digest.SHA256.FromBytes(data).String())
	require.Empty(t, w.Digest())
	require.NoError(t, w.Close())

	requireNoBlob(t, s, wrong)
	requireNoBlob(t, s, digest.SHA256.FromBytes(data))
	_, err = s.Status(ctx, "mismatch")
	require.ErrorIs(t, err, content.ErrNotFound)
	n := 0
	require.NoError(t, s.Walk(ctx, func(content.Info) error { n++; return nil }))
	require.Zero(t, n, "nothing published")

	// The ref is free again and starts empty.
	w2, err := s.Writer(ctx, "mismatch")
	require.NoError(t, err)
	defer w2.Close()
	st, err := w2.Status()
	require.NoError(t, err)
	require.Zero(t, st.Written)
}

func testSizeMismatch(t *testing.T, s content.Store) {
	data := []byte("0123456789")
	tests := []struct {
		name  string
		write func(w content.Writer) error
		size  int64
	}{
		{"short", func(w content.Writer) error { _, err := w.Write(data[:5]); return err }, 10},
		{"long", func(w content.Writer) error { _, err := w.Write(data); return err }, 5},
		{"gap", func(w content.Writer) error {
			if _, err := w.WriteAt(data[:3], 0); err != nil {
				return err
			}
			_, err := w.WriteAt(data[5:], 5)
			return err
		}, 10},
		{"nothing", func(content.Writer) error { return nil }, 10},
		{"negative", func(content.Writer) error { return nil }, -1},
	}
	for _, tt := range tests {
		w, err := s.Writer(t.Context(), "size-"+tt.name)
		require.NoError(t, err, tt.name)
		require.NoError(t, tt.write(w), tt.name)
		err = w.Commit(t.Context(), tt.size, "")
		require.ErrorIs(t, err, content.ErrSizeMismatch, tt.name)
		require.NoError(t, w.Close(), tt.name)
		_, err = s.Status(t.Context(), "size-"+tt.name)
		require.ErrorIs(t, err, content.ErrNotFound, tt.name)
	}
	n := 0
	require.NoError(t, s.Walk(t.Context(), func(content.Info) error { n++; return nil }))
	require.Zero(t, n, "nothing published")
}

func testAlreadyExists(t *testing.T, s content.Store) {
	ctx := t.Context()
	data := []byte("same bytes twice")
	d := commit(t, s, "first", data)
	w, err := s.Writer(ctx, "second")
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	err = w.Commit(ctx, int64(len(data)), d)
	require.ErrorIs(t, err, content.ErrAlreadyExists)
	require.Equal(t, d, w.Digest())
	require.Equal(t, data, readAll(t, s, d))
	_, err = s.Status(ctx, "second")
	require.ErrorIs(t, err, content.ErrNotFound)
}

func testRefInUse(t *testing.T, s content.Store) {
	ctx := t.Context()
	w, err := s.Writer(ctx, "busy")
	require.NoError(t, err)
	_, err = s.Writer(ctx, "busy")
	require.ErrorIs(t, err, content.ErrUnavailable)
	other, err := s.Writer(ctx, "other")
	require.NoError(t, err, "another ref is independent")
	require.NoError(t, other.Close())
	require.NoError(t, w.Close())
	w, err = s.Writer(ctx, "busy")
	require.NoError(t, err, "closing releases the ref")
	require.NoError(t, w.Close())
}

func testAbortOnClose(t *testing.T, s content.Store) {
	ctx := t.Context()
	data := []byte("never committed")
	w, err := s.Writer(ctx, "abort")
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	st, err := s.Status(ctx, "abort")
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), st.Offset)
	require.NoError(t, w.Close())
	require.NoError(t, w.Close(), "Close is idempotent")

	_, err = s.Status(ctx, "abort")
	require.ErrorIs(t, err, content.ErrNotFound)
	requireNoBlob(t, s, digest.SHA256.FromBytes(data))
	_, err = w.Write(data)
	require.Error(t, err, "a closed writer takes no bytes")
	require.Error(t, w.Commit(ctx, int64(len(data)), ""), "a closed writer cannot commit")
	requireNoBlob(t, s, digest.SHA256.FromBytes(data))

	w, err = s.Writer(ctx, "abort")
	require.NoError(t, err)
	defer w.Close()
	st, err = w.Status()
	require.NoError(t, err)
	require.Zero(t, st.Offset, "a new ingest starts empty")
	require.Zero(t, st.Written)
}

func testAbortHeldRef(t *testing.T, s content.Store) {
	ctx := t.Context()
	w, err := s.Writer(ctx, "held")
	require.NoError(t, err)
	require.ErrorIs(t, s.Abort(ctx, "held"), content.ErrUnavailable)
	_, err = w.Write([]byte("still here"))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.ErrorIs(t, s.Abort(ctx, "held"), content.ErrNotFound)
}

func testWriteAtOutOfOrder(t *testing.T, s content.Store) {
	ctx := t.Context()
	const pieceSize = 1000
	data := randomBytes(t, 10*pieceSize+123)
	d := digest.SHA256.FromBytes(data)
	w, err := s.Writer(ctx, "out-of-order")
	require.NoError(t, err)
	defer w.Close()
	order := []int{3, 1, 10, 2, 0, 5, 4, 9, 7, 8, 6}
	wantOffset := []int64{0, 0, 0, 0, 4000, 4000, 6000, 6000, 6000, 6000, int64(len(data))}
	var written int64
	for i, p := range order {
		off := int64(p * pieceSize)
		end := min(off+pieceSize, int64(len(data)))
		n, err := w.WriteAt(data[off:end], off)
		require.NoError(t, err)
		require.Equal(t, int(end-off), n)
		written += end - off
		st, err := w.Status()
		require.NoError(t, err)
		require.Equal(t, wantOffset[i], st.Offset, "after piece %d", p)
		require.Equal(t, written, st.Written)
	}
	// Writing a piece again (same bytes) changes nothing.
	_, err = w.WriteAt(data[2000:3000], 2000)
	require.NoError(t, err)
	st, err := w.Status()
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), st.Written)
	require.NoError(t, w.Commit(ctx, int64(len(data)), d))
	require.Equal(t, data, readAll(t, s, d))
}

func testConcurrentWriteAt(t *testing.T, s content.Store) {
	ctx := t.Context()
	const pieces, pieceSize = 32, 4096
	data := randomBytes(t, pieces*pieceSize-7)
	d := digest.SHA256.FromBytes(data)
	w, err := s.Writer(ctx, "concurrent")
	require.NoError(t, err)
	defer w.Close()
	order := make([]int, pieces)
	for i := range order {
		order[i] = pieces - 1 - i
	}
	require.NoError(t, WritePieces(w, data, pieceSize, order))
	require.NoError(t, w.Commit(ctx, int64(len(data)), d))
	require.Equal(t, data, readAll(t, s, d))
}

func testReadAtDuringIngest(t *testing.T, s content.Store) {
	ctx := t.Context()
	data := randomBytes(t, 8192)
	w, err := s.Writer(ctx, "read-during")
	require.NoError(t, err)
	defer w.Close()
	_, err = w.WriteAt(data[4096:], 4096)
	require.NoError(t, err)
	buf := make([]byte, 100)
	_, err = w.ReadAt(buf, 5000)
	require.NoError(t, err)
	require.Equal(t, data[5000:5100], buf)
	_, err = w.WriteAt(data[:4096], 0)
	require.NoError(t, err)
	all := make([]byte, len(data))
	n, err := w.ReadAt(all, 0)
	if err != nil {
		require.ErrorIs(t, err, io.EOF)
	}
	require.Equal(t, len(data), n)
	require.Equal(t, data, all)
	// Nothing is readable as committed content yet.
	requireNoBlob(t, s, digest.SHA256.FromBytes(data))
}

// testSyncDuringIngest syncs while pieces are written out of order and read
// back, then commits: Sync changes nothing of the content, and fails once
// the writer has ended.
func testSyncDuringIngest(t *testing.T, s content.Store) {
	ctx := t.Context()
	const pieces, pieceSize = 16, 4096
	data := randomBytes(t, pieces*pieceSize-3)
	d := digest.SHA256.FromBytes(data)
	w, err := s.Writer(ctx, "sync-during")
	require.NoError(t, err)
	defer w.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 2*pieces)
	for i := range pieces {
		wg.Go(func() {
			off := (pieces - 1 - i) * pieceSize
			end := min(off+pieceSize, len(data))
			if _, err := w.WriteAt(data[off:end], int64(off)); err != nil {
				errs <- err
				return
			}
			got := make([]byte, end-off)
			if _, err := w.ReadAt(got, int64(off)); err != nil && !errors.Is(err, io.EOF) {
				errs <- err
			} else if !bytes.Equal(got, data[off:end]) {
				errs <- fmt.Errorf("read back at %d: bytes differ", off)
			}
		})
		wg.Go(func() {
			if err := w.Sync(); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, w.Sync())
	require.NoError(t, w.Commit(ctx, int64(len(data)), d))
	require.Equal(t, data, readAll(t, s, d))
	require.Error(t, w.Sync(), "a committed writer has nothing to sync")
}

func testWriteAfterCommit(t *testing.T, s content.Store) {
	ctx := t.Context()
	data := []byte("final")
	w, err := s.Writer(ctx, "after-commit")
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	require.NoError(t, w.Commit(ctx, int64(len(data)), ""))
	_, err = w.WriteAt([]byte("X"), 0)
	require.Error(t, err)
	require.Error(t, w.Commit(ctx, int64(len(data)), ""))
	require.NoError(t, w.Close())
	require.Equal(t, data, readAll(t, s, digest.SHA256.FromBytes(data)), "a committed blob is unchanged")
}

func testListStatuses(t *testing.T, s content.Store) {
	ctx := t.Context()
	st, err := s.ListStatuses(ctx)
	require.NoError(t, err)
	require.Empty(t, st)
	wb, err := s.Writer(ctx, "b")
	require.NoError(t, err)
	defer wb.Close()
	wa, err := s.Writer(ctx, "a")
	require.NoError(t, err)
	defer wa.Close()
	_, err = wb.Write([]byte("12345"))
	require.NoError(t, err)
	st, err = s.ListStatuses(ctx)
	require.NoError(t, err)
	require.Len(t, st, 2)
	require.Equal(t, "a", st[0].Ref)
	require.Equal(t, "b", st[1].Ref)
	require.Equal(t, int64(5), st[1].Offset)
	require.False(t, st[1].StartedAt.IsZero())
	require.NoError(t, wa.Close())
	st, err = s.ListStatuses(ctx)
	require.NoError(t, err)
	require.Len(t, st, 1)
}

func testWalk(t *testing.T, s content.Store) {
	ctx := t.Context()
	want := map[digest.Digest]int64{}
	for i, ref := range []string{"w1", "w2", "w3"} {
		data := bytes.Repeat([]byte{byte('a' + i)}, 100*(i+1))
		want[commit(t, s, ref, data)] = int64(len(data))
	}
	got := map[digest.Digest]int64{}
	require.NoError(t, s.Walk(ctx, func(i content.Info) error {
		got[i.Digest] = i.Size
		return nil
	}))
	require.Equal(t, want, got)

	stop := errors.New("stop")
	calls := 0
	err := s.Walk(ctx, func(content.Info) error { calls++; return stop })
	require.ErrorIs(t, err, stop)
	require.Equal(t, 1, calls)
}

func testDelete(t *testing.T, s content.Store) {
	ctx := t.Context()
	d := commit(t, s, "del", []byte("delete me"))
	keep := commit(t, s, "keep", []byte("keep me"))
	require.NoError(t, s.Delete(ctx, d))
	requireNoBlob(t, s, d)
	require.ErrorIs(t, s.Delete(ctx, d), content.ErrNotFound)
	require.Equal(t, []byte("keep me"), readAll(t, s, keep))
	// The digest can be committed again.
	require.Equal(t, d, commit(t, s, "again", []byte("delete me")))
}

func testInfo(t *testing.T, s content.Store) {
	data := randomBytes(t, 777)
	d := commit(t, s, "info", data)
	info, err := s.Info(t.Context(), d)
	require.NoError(t, err)
	require.Equal(t, d, info.Digest)
	require.Equal(t, int64(777), info.Size)
	require.False(t, info.CreatedAt.IsZero())
	require.False(t, info.AccessedAt.IsZero())
}

func testInvalidRefs(t *testing.T, s content.Store) {
	ctx := t.Context()
	for _, ref := range []string{
		"", ".", "..", "a/b", "../escape", "/abs", `a\b`, "a b", "a\x00b", "ü",
		strings.Repeat("r", 129), "a:b",
	} {
		_, err := s.Writer(ctx, ref)
		require.ErrorIs(t, err, content.ErrInvalid, "Writer(%q)", ref)
		_, err = s.Status(ctx, ref)
		require.ErrorIs(t, err, content.ErrInvalid, "Status(%q)", ref)
		require.ErrorIs(t, s.Abort(ctx, ref), content.ErrInvalid, "Abort(%q)", ref)
	}
	for _, ref := range []string{"a", "...", "A.b-c_9", strings.Repeat("r", 128)} {
		w, err := s.Writer(ctx, ref)
		require.NoError(t, err, "Writer(%q)", ref)
		require.NoError(t, w.Close())
	}
}

func testInvalidDigests(t *testing.T, s content.Store) {
	ctx := t.Context()
	hex := strings.Repeat("a", 64)
	for _, d := range []digest.Digest{
		"", "sha256:", "sha256:abc", digest.Digest("sha256:" + strings.ToUpper(hex)),
		digest.Digest("sha256:../../" + hex[6:]), digest.Digest("md5:" + hex[:32]),
		digest.Digest("sha512:" + hex + hex), digest.Digest(hex), digest.Digest("sha256:" + hex + "/x"),
	} {
		_, err := s.Info(ctx, d)
		require.ErrorIs(t, err, content.ErrInvalid, "Info(%q)", d)
		_, err = s.ReaderAt(ctx, d)
		require.ErrorIs(t, err, content.ErrInvalid, "ReaderAt(%q)", d)
		require.ErrorIs(t, s.Delete(ctx, d), content.ErrInvalid, "Delete(%q)", d)
		if d == "" {
			continue // "" means "no expected digest" to Commit
		}
		w, err := s.Writer(ctx, "invalid-expected")
		require.NoError(t, err)
		_, err = w.Write([]byte("x"))
		require.NoError(t, err)
		require.ErrorIs(t, w.Commit(ctx, 1, d), content.ErrInvalid, "Commit(%q)", d)
		require.NoError(t, w.Close())
	}
}

func testNotFound(t *testing.T, s content.Store) {
	ctx := t.Context()
	d := digest.SHA256.FromBytes([]byte("absent"))
	requireNoBlob(t, s, d)
	require.ErrorIs(t, s.Delete(ctx, d), content.ErrNotFound)
	_, err := s.Status(ctx, "absent")
	require.ErrorIs(t, err, content.ErrNotFound)
	require.ErrorIs(t, s.Abort(ctx, "absent"), content.ErrNotFound)
}
