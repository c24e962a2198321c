package cdn

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// newFixtureConfig is newFixture with a config (Dir is set from dir).
func newFixtureConfig(t *testing.T, o *origin, store content.Store, dir string, cfg Config) *fixture {
	t.Helper()
	f := &fixture{sched: newFakeSched(), store: store, dir: dir, reg: prometheus.NewRegistry()}
	cfg.Dir = dir
	c, err := New(cfg, store, httpSource{client: o.srv.Client()}, f.sched, WithMetrics(f.reg))
	require.NoError(t, err)
	f.cdn = c
	return f
}

// blobFile is the file of committed blob d in a local store under root.
func blobFile(root string, d digest.Digest) string {
	return filepath.Join(root, "content", "blobs", "sha256", d.Encoded())
}

// flipByte changes one byte of a file in place. With keepStamp, the
// modification time is restored, so the store's file stamp does not tell:
// only a hash does.
func flipByte(t *testing.T, path string, off int64, keepStamp bool) {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0xff
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	if keepStamp {
		require.NoError(t, os.Chtimes(path, fi.ModTime(), fi.ModTime()))
	}
}

// fetchOnce fetches body into a CDN over a local store under root and
// returns the digest task's ID.
func fetchOnce(t *testing.T, o *origin, root string) (taskid.ID, digest.Digest) {
	t.Helper()
	d := digest.FromBytes(o.body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	f := newFixture(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"))
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	return id, d
}

// After a restart, a committed copy with a flipped byte, a truncated one or
// piece metadata that does not match is never served: the registration
// fetches the content from the origin again (once) and publishes the right
// piece digests.
func TestDamagedCopyAfterRestartFetchedAgain(t *testing.T) {
	t.Parallel()
	body := blob(21, 9<<20+333)
	tests := []struct {
		name      string
		damage    func(t *testing.T, root string, d digest.Digest)
		wantGets  int32
		wantCheck bool
	}{
		{"flipped byte", func(t *testing.T, root string, d digest.Digest) {
			flipByte(t, blobFile(root, d), 5<<20+17, true)
		}, 2, true},
		{"truncated", func(t *testing.T, root string, d digest.Digest) {
			require.NoError(t, os.Truncate(blobFile(root, d), 6<<20))
		}, 2, true},
		{"wrong piece metadata", func(t *testing.T, root string, d digest.Digest) {
			c := &cache{metaDir: filepath.Join(root, "cdn", "meta")}
			m, err := c.readMeta(d)
			require.NoError(t, err)
			m.Pieces[1] = piece.Digest([]byte("not piece 1"))
			require.NoError(t, c.writeMeta(m))
		}, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, &origin{body: body})
			root := t.TempDir()
			id, d := fetchOnce(t, o, root)
			tt.damage(t, root, d)

			again := newFixture(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"))
			_, err := again.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
			require.NoError(t, err)
			task := again.settle(t, id)
			require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
			requirePieces(t, task, body)
			require.Equal(t, tt.wantGets, o.gets.Load())
			require.Equal(t, body, readBlob(t, again.store, d))
			served := uploadGet(t, again.cdn, id, "")
			require.Equal(t, http.StatusOK, served.status)
			require.Equal(t, body, served.body)
		})
	}
}

type served struct {
	status int
	body   []byte
	err    error
}

// uploadGet asks the CDN's upload server (a real one on 127.0.0.1:0) for a
// range of a task.
func uploadGet(t *testing.T, c *CDN, id taskid.ID, rng string) served {
	t.Helper()
	keys := clusterauth.MustParse("cdn-test-cluster-token-0123456789")
	srv := httptest.NewServer(upload.New(c, keys).Handler())
	defer srv.Close()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+upload.Path(id), nil)
	require.NoError(t, err)
	keys.Set(req.Header)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return served{status: resp.StatusCode, body: b, err: err}
}

// committedFrom has f's CDN fetch o's body as a digest task and waits until
// the task succeeded; it returns the task.
func committedFrom(t *testing.T, f *fixture, o *origin) taskid.ID {
	t.Helper()
	id, err := taskid.ForDigest(digest.FromBytes(o.body))
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	return id
}

// A byte changed on disk under a running CDN, in a way the file's stamp
// does not show, is never sent: the upload of the piece fails before its
// header, the other pieces are still served, the task is dropped and its
// next registration fetches the content again.
func TestCorruptPieceNeverServed(t *testing.T) {
	t.Parallel()
	body := blob(22, 9<<20+5)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	d := digest.FromBytes(body)
	f := newFixture(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"))
	id := committedFrom(t, f, o)

	flipByte(t, blobFile(root, d), 4<<20+99, true)
	ok := uploadGet(t, f.cdn, id, fmt.Sprintf("bytes=0-%d", 4<<20-1))
	require.Equal(t, http.StatusPartialContent, ok.status)
	require.Equal(t, body[:4<<20], ok.body)
	bad := uploadGet(t, f.cdn, id, fmt.Sprintf("bytes=%d-%d", 4<<20, 8<<20-1))
	require.NotEqual(t, http.StatusPartialContent, bad.status, "a piece that fails its digest is not served")
	whole := uploadGet(t, f.cdn, id, "")
	require.True(t, whole.status != http.StatusOK || whole.err != nil, "a response reaching a bad piece never ends cleanly")

	require.Eventually(t, func() bool {
		_, ok := f.sched.snapshot(id)
		return !ok
	}, wait, 5*time.Millisecond, "the task is dropped")
	require.NoFileExists(t, blobFile(root, d))
	require.Eventually(t, func() bool {
		return metricValue(t, f.reg, "damselfly_cdn_corrupt_content_total") == 1
	}, wait, 5*time.Millisecond)
	f.cdn.bg.Wait()

	committedFrom(t, f, o)
	require.EqualValues(t, 2, o.gets.Load(), "fetched again once")
	require.Equal(t, body, uploadGet(t, f.cdn, id, "").body)
}

// The first upload of a piece reads it around the page cache, hashes it and
// sends the bytes it hashed from memory, also in steps within the piece; a
// later upload of a piece hashed in the same file sends it from the file;
// with every buffer lent, an upload hashes the piece and sends it from the
// file. Each piece is hashed once.
func TestFirstUploadOfPieceFromMemory(t *testing.T) {
	t.Parallel()
	body := blob(25, 9<<20+5)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	store, err := local.New(filepath.Join(root, "content"), local.WithDirectWrites())
	require.NoError(t, err)
	f := newFixture(t, o, store, filepath.Join(root, "cdn"))
	id := committedFrom(t, f, o)

	open := func() *handle {
		tk, err := f.cdn.Open(t.Context(), id)
		require.NoError(t, err)
		h := tk.(*handle)
		require.NotNil(t, h.blob, "the committed blob")
		return h
	}
	fileRange := func(h *handle, off, n int) (fromMemory bool) {
		t.Helper()
		r, err := h.FileRange(int64(off), int64(n))
		require.NoError(t, err)
		require.NotNil(t, r)
		_, fromMemory = r.(*bytes.Reader)
		got, err := io.ReadAll(r)
		require.NoError(t, err)
		require.True(t, bytes.Equal(body[off:off+n], got), "bytes %d+%d", off, n)
		return fromMemory
	}
	checked := func() float64 { return metricValue(t, f.reg, "damselfly_cdn_upload_checked_bytes_total") }

	h := open()
	for off := 4 << 20; off < 8<<20; off += 256 << 10 {
		require.True(t, fileRange(h, off, 256<<10), "piece 1 at %d: from memory", off)
	}
	require.Equal(t, float64(4<<20), checked(), "piece 1 hashed once for its 16 steps")
	require.NoError(t, h.Close())

	h = open()
	require.False(t, fileRange(h, 4<<20, 4<<20), "piece 1, hashed in this file: from the file")
	require.True(t, fileRange(h, 8<<20, 1<<20+5), "the short last piece: from memory")
	require.NoError(t, h.Close())

	var lent []*[]byte
	for p := f.cdn.held.get(1); p != nil; p = f.cdn.held.get(1) {
		lent = append(lent, p)
	}
	require.Len(t, lent, maxHeldBufs)
	h = open()
	require.False(t, fileRange(h, 0, 4<<20), "every buffer lent: piece 0 hashed and sent from the file")
	require.NoError(t, h.Close())
	for _, p := range lent {
		f.cdn.held.put(p)
	}
	require.Equal(t, float64(len(body)), checked(), "every piece hashed once")
	f.cdn.held.mu.Lock()
	defer f.cdn.held.mu.Unlock()
	require.Zero(t, f.cdn.held.lent, "closed handles gave their buffers back")
}

// A peer's corrupt report against the CDN makes it check its copy at once:
// a copy that fails is removed and its task dropped; a sound one stays.
func TestCorruptReportChecksCopy(t *testing.T) {
	t.Parallel()
	body := blob(23, 5<<20+1)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	f := newFixture(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"))
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	f.cdn.ReportCorrupt(id, 0) // sound copy: nothing happens
	require.Eventually(t, func() bool {
		return metricValue(t, f.reg, "damselfly_cdn_corrupt_reports_checked_total") == 1
	}, wait, 5*time.Millisecond)
	f.cdn.bg.Wait()
	_, ok := f.sched.snapshot(id)
	require.True(t, ok, "a sound copy's task stays")
	require.FileExists(t, blobFile(root, d))

	flipByte(t, blobFile(root, d), 100, true)
	f.cdn.ReportCorrupt(id, 0)
	f.cdn.bg.Wait()
	require.Equal(t, 1.0, metricValue(t, f.reg, "damselfly_cdn_corrupt_reports_checked_total"), "within the cooldown, no second check")
	f.cdn.mu.Lock()
	f.cdn.reportedAt[d] = time.Now().Add(-time.Hour)
	f.cdn.mu.Unlock()
	f.cdn.ReportCorrupt(id, 0)
	require.Eventually(t, func() bool {
		_, ok := f.sched.snapshot(id)
		return !ok
	}, wait, 5*time.Millisecond, "the task of a copy that fails is dropped")
	f.cdn.bg.Wait()
	require.NoFileExists(t, blobFile(root, d))
}

// The scrub finds a byte changed on disk without a trace in the file's
// stamp, removes the blob and drops its task.
func TestScrubFindsCorruptCopy(t *testing.T) {
	t.Parallel()
	body := blob(24, 3<<20)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	f := newFixtureConfig(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"),
		Config{ScrubInterval: 20 * time.Millisecond, ScrubRate: 1 << 30})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.cdn.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)

	flipByte(t, blobFile(root, d), 3<<20-1, true)
	require.Eventually(t, func() bool {
		_, ok := f.sched.snapshot(id)
		return !ok
	}, wait, 5*time.Millisecond, "the scrub drops the task")
	require.NoFileExists(t, blobFile(root, d))
	require.Positive(t, metricValue(t, f.reg, "damselfly_cdn_scrubbed_bytes_total"))
}

// Temporary files a crash left in the metadata directory are removed at
// start; metadata is kept.
func TestLeftoverTempFilesRemovedAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, p := range []string{"meta", "tasks"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, p), 0o750))
	}
	leftovers := []string{
		filepath.Join(dir, "meta", tempPrefix+"123"),
		filepath.Join(dir, "tasks", tempPrefix+"456"),
		filepath.Join(dir, tempPrefix+"789"),
	}
	kept := filepath.Join(dir, "meta", "0123.json")
	for _, p := range append(leftovers, kept) {
		require.NoError(t, os.WriteFile(p, []byte("x"), 0o600))
	}
	o := newOrigin(t, &origin{body: []byte("x")})
	newFixture(t, o, nil, dir)
	for _, p := range leftovers {
		require.NoFileExists(t, p)
	}
	require.FileExists(t, kept)
}
