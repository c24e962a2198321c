package local

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content"
)

// commit writes data as a blob and returns its digest.
func commit(t *testing.T, s *Store, data []byte) digest.Digest {
	t.Helper()
	w, err := s.Writer(t.Context(), "ref-"+digest.FromBytes(data).Encoded()[:12])
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	require.NoError(t, w.Commit(t.Context(), int64(len(data)), digest.FromBytes(data)))
	return digest.FromBytes(data)
}

func readAll(t *testing.T, s *Store, d digest.Digest) ([]byte, error) {
	t.Helper()
	ra, err := s.ReaderAt(t.Context(), d)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	return io.ReadAll(io.NewSectionReader(ra, 0, ra.Size()))
}

// A committed blob changed on disk is never read back: the next open hashes
// it, removes it and says it is not found, whether a byte was flipped, the
// file truncated or grown, during the run or before a restart. A blob that
// is intact after a restart is hashed once, then served without hashing.
func TestCorruptBlobNeverRead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		restart bool
		damage  func(t *testing.T, path string)
	}{
		{"flipped byte", false, flipByte},
		{"flipped byte before a restart", true, flipByte},
		{"truncated", false, func(t *testing.T, p string) { require.NoError(t, os.Truncate(p, 1000)) }},
		{"truncated before a restart", true, func(t *testing.T, p string) { require.NoError(t, os.Truncate(p, 0)) }},
		{"grown", false, func(t *testing.T, p string) {
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.Write([]byte("tail"))
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}},
		{"replaced by another file", false, func(t *testing.T, p string) {
			require.NoError(t, os.Remove(p))
			require.NoError(t, os.WriteFile(p, make([]byte, 4096), 0o644))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			s := newStore(t, root)
			data := randomBytes(t, 3<<20+5)
			d := commit(t, s, data)
			got, err := readAll(t, s, d)
			require.NoError(t, err)
			require.Equal(t, data, got)
			require.Zero(t, s.Stats().Bytes, "a blob this store committed is not hashed again")

			tt.damage(t, s.blobPath(d))
			if tt.restart {
				s = newStore(t, root)
			}
			_, err = readAll(t, s, d)
			require.ErrorIs(t, err, content.ErrNotFound)
			require.ErrorIs(t, err, content.ErrCorrupt)
			require.NoFileExists(t, s.blobPath(d), "the corrupt blob is removed")
			require.EqualValues(t, 1, s.Stats().Failed)
			_, err = s.Info(t.Context(), d)
			require.ErrorIs(t, err, content.ErrNotFound)

			// Fetched again, it is served again.
			require.Equal(t, d, commit(t, s, data))
			got, err = readAll(t, s, d)
			require.NoError(t, err)
			require.Equal(t, data, got)
		})
	}
}

func flipByte(t *testing.T, p string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	require.NoError(t, err)
	var b [1]byte
	_, err = f.ReadAt(b[:], 12345)
	require.NoError(t, err)
	b[0] ^= 0x40
	_, err = f.WriteAt(b[:], 12345)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

func TestIntactBlobAfterRestartHashedOnce(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := randomBytes(t, 1<<20)
	d := commit(t, newStore(t, root), data)

	s := newStore(t, root)
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() {
			got, err := readAll(t, s, d)
			if err == nil && string(got) != string(data) {
				err = errors.New("wrong bytes")
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		require.NoError(t, <-errs)
	}
	st := s.Stats()
	require.EqualValues(t, 1, st.Verified, "eight readers at once, one hash")
	require.EqualValues(t, len(data), st.Bytes)
	_, err := readAll(t, s, d)
	require.NoError(t, err)
	require.EqualValues(t, 1, s.Stats().Verified, "verified once per run")
}

// Verify finds damage the file's metadata does not show (the modification
// time put back), which only a scrub can; a pace function bounds it.
func TestVerifyFindsHiddenDamage(t *testing.T) {
	t.Parallel()
	s := newStore(t, t.TempDir())
	data := randomBytes(t, 2<<20)
	d := commit(t, s, data)
	p := s.blobPath(d)
	fi, err := os.Stat(p)
	require.NoError(t, err)
	flipByte(t, p)
	require.NoError(t, os.Chtimes(p, time.Now(), fi.ModTime()))

	var paced int
	pace := func(ctx context.Context, n int) error { paced += n; return ctx.Err() }
	require.NoError(t, s.Verify(t.Context(), commit(t, s, randomBytes(t, 100)), pace), "an intact blob passes")
	err = s.Verify(t.Context(), d, pace)
	require.ErrorIs(t, err, content.ErrCorrupt)
	require.NoFileExists(t, p)
	require.Positive(t, paced)
	require.ErrorIs(t, s.Verify(t.Context(), d, nil), content.ErrNotFound)
}

// A commit of verified bytes over a blob file this store never verified
// (left by an earlier run, maybe damaged) replaces it instead of keeping it.
func TestCommitReplacesUnverifiedBlob(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	data := randomBytes(t, 1<<20)
	d := commit(t, newStore(t, root), data)
	s := newStore(t, root)
	flipByte(t, s.blobPath(d))
	require.Equal(t, d, commit(t, s, data), "no ErrAlreadyExists for a blob not known good")
	got, err := readAll(t, s, d)
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Zero(t, s.Stats().Failed)

	w, err := s.Writer(t.Context(), "again")
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Write(data)
	require.NoError(t, err)
	require.ErrorIs(t, w.Commit(t.Context(), int64(len(data)), d), content.ErrAlreadyExists, "a verified blob stays")
}
