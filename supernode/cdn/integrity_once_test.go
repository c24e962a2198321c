package cdn

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// trustingStore is a local store whose ReaderAt hands out the blob's file
// without checking it again: only the CDN's own check stands between a
// changed file and a peer.
type trustingStore struct {
	content.Store
	root string // the local store's directory
}

type osReader struct {
	*os.File
	size int64
}

func (r *osReader) Size() int64 { return r.size }

func (s trustingStore) ReaderAt(ctx context.Context, d digest.Digest) (content.ReaderAt, error) {
	f, err := os.Open(filepath.Join(s.root, "blobs", "sha256", d.Encoded()))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("content %s: %w", d, content.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &osReader{File: f, size: fi.Size()}, nil
}

// fetchServed fetches body through a CDN over store and serves piece 1 once,
// so that the CDN has hashed it in the committed file.
func fetchServed(t *testing.T, o *origin, store content.Store, root string) (*fixture, taskid.ID, digest.Digest) {
	t.Helper()
	d := digest.FromBytes(o.body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	f := newFixture(t, o, store, filepath.Join(root, "cdn"))
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	got := uploadGet(t, f.cdn, id, fmt.Sprintf("bytes=%d-%d", 4<<20, 8<<20-1))
	require.Equal(t, http.StatusPartialContent, got.status)
	require.Equal(t, o.body[4<<20:8<<20], got.body)
	e, ok := f.cdn.checkedEntry(d)
	require.True(t, ok)
	require.True(t, f.cdn.pieceHashed(e, e.st, 1), "a piece served is remembered as hashed in its file")
	return f, id, d
}

// A piece is hashed once per file: serving it again from the same file
// hashes nothing. A byte changed on disk after that, the file's stamp
// changing with it, is never served: the store or the CDN hashes the piece
// again first.
func TestOnceCheckedPieceChangedOnDiskNeverServed(t *testing.T) {
	t.Parallel()
	body := blob(31, 9<<20+77)
	for _, trusting := range []bool{false, true} {
		t.Run(fmt.Sprintf("store checks too: %v", !trusting), func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, &origin{body: body})
			root := t.TempDir()
			var store content.Store = newLocal(t, filepath.Join(root, "content"))
			if trusting {
				store = trustingStore{Store: store, root: filepath.Join(root, "content")}
			}
			f, id, d := fetchServed(t, o, store, root)

			// Served again from the same file: not hashed again.
			hashed := metricValue(t, f.reg, "damselfly_cdn_upload_checked_bytes_total")
			require.EqualValues(t, 4<<20, hashed)
			again := uploadGet(t, f.cdn, id, fmt.Sprintf("bytes=%d-%d", 4<<20+10, 8<<20-1))
			require.Equal(t, body[4<<20+10:8<<20], again.body)
			require.Equal(t, hashed, metricValue(t, f.reg, "damselfly_cdn_upload_checked_bytes_total"))

			path := blobFile(root, d)
			flipByte(t, path, 5<<20+3, false)
			later := time.Now().Add(time.Second)
			require.NoError(t, os.Chtimes(path, later, later)) // whatever the clock's grain
			bad := uploadGet(t, f.cdn, id, fmt.Sprintf("bytes=%d-%d", 4<<20, 8<<20-1))
			require.NotEqual(t, http.StatusPartialContent, bad.status, "a changed file is hashed again before it is served")
			require.NotEqual(t, body[4<<20:8<<20], bad.body)
			whole := uploadGet(t, f.cdn, id, "")
			require.True(t, whole.status != http.StatusOK || whole.err != nil, "a response reaching a bad piece never ends cleanly")
			require.Eventually(t, func() bool {
				_, ok := f.sched.snapshot(id)
				return !ok
			}, wait, 5*time.Millisecond, "the task is dropped")
			f.cdn.bg.Wait()
			require.NoFileExists(t, path)
		})
	}
}

// A peer's corrupt report makes the next upload of every piece hash it
// again, even within the report cooldown that holds the whole check back.
func TestCorruptReportForgetsHashedPieces(t *testing.T) {
	t.Parallel()
	body := blob(32, 9<<20+5)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	f, id, d := fetchServed(t, o, newLocal(t, filepath.Join(root, "content")), root)

	// A change the file's stamp does not show, after the piece was hashed.
	flipByte(t, blobFile(root, d), 4<<20+99, true)
	f.cdn.mu.Lock()
	f.cdn.reportedAt[d] = time.Now() // in the cooldown: no whole check
	f.cdn.mu.Unlock()
	f.cdn.ReportCorrupt(id, 1)
	f.cdn.bg.Wait()
	require.Zero(t, metricValue(t, f.reg, "damselfly_cdn_corrupt_reports_checked_total"), "no whole check within the cooldown")

	bad := uploadGet(t, f.cdn, id, fmt.Sprintf("bytes=%d-%d", 4<<20, 8<<20-1))
	require.NotEqual(t, http.StatusPartialContent, bad.status, "the reported piece is hashed again before it is served")
	require.Eventually(t, func() bool {
		return metricValue(t, f.reg, "damselfly_cdn_corrupt_content_total") == 1
	}, wait, 5*time.Millisecond)
	f.cdn.bg.Wait()
	require.NoFileExists(t, blobFile(root, d))
}

// The check before first use after a start hashes every piece: serving
// them afterwards from the same file hashes none again.
func TestCheckBeforeFirstUseCountsAsHashed(t *testing.T) {
	t.Parallel()
	body := blob(33, 9<<20+1)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	id, d := fetchOnce(t, o, root)
	again := newFixture(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"))
	_, err := again.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, again.settle(t, id).info.State)
	h, err := again.cdn.Open(t.Context(), id)
	require.NoError(t, err)
	defer h.Close()
	e, ok := again.cdn.checkedEntry(d)
	require.True(t, ok)
	for i := range 3 {
		require.True(t, again.cdn.pieceHashed(e, h.(*handle).check.st, i), "piece %d", i)
	}
	whole := uploadGet(t, again.cdn, id, "")
	require.Equal(t, body, whole.body)
	require.Zero(t, metricValue(t, again.reg, "damselfly_cdn_upload_checked_bytes_total"), "nothing hashed twice")
}
