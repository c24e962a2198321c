package cdn

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// arrivingGet asks srv for piece n of id, marked arriving (or not).
func arrivingGet(t *testing.T, srv *httptest.Server, keys clusterauth.Keys, id taskid.ID, n int, size int64, marked bool) *http.Response {
	t.Helper()
	off, length := piece.Bounds(n, size, piece.DefaultSize)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+upload.Path(id), nil)
	require.NoError(t, err)
	keys.Set(req.Header)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+length-1))
	req.Header.Set(schedapi.HeaderPeer, "p1")
	if marked {
		req.Header.Set(schedapi.HeaderArriving, "1")
	}
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// A piece still arriving from the source is served to a marked request as
// it arrives: the first bytes before the piece is complete, the digest in
// the trailer once it is published. An unmarked request gets nothing of it.
func TestArrivingPieceServedAsItArrives(t *testing.T) {
	t.Parallel()
	body := blob(40, 2*int(piece.DefaultSize)+10)
	release := make(chan struct{})
	held := int(piece.DefaultSize) + 100 // 100 bytes of piece 1
	o := newOrigin(t, &origin{body: body, holdAt: held, holdBody: release})
	f := newFixture(t, o, nil, "")
	_, id, keys, srv := servedTask(t, f.cdn, body)
	size := int64(len(body))

	_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob")})
	require.NoError(t, err)
	_, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return slices.Contains(t.arriving, 1) && len(t.pieces) == 1 })
	require.True(t, ok, "piece 1 is arriving")

	require.Equal(t, http.StatusNotFound, arrivingGet(t, srv, keys, id, 1, size, false).StatusCode, "unverified, unmarked")
	resp := arrivingGet(t, srv, keys, id, 1, size, true)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	first := make([]byte, 100)
	_, err = io.ReadFull(resp.Body, first)
	require.NoError(t, err)
	require.Equal(t, body[piece.DefaultSize:held], first)
	task, _ := f.sched.snapshot(id)
	require.Len(t, task.pieces, 1, "piece 1 was served before it was complete")

	close(release)
	rest, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, body[held:2*piece.DefaultSize], rest)
	require.Equal(t, piece.Digest(body[piece.DefaultSize:2*piece.DefaultSize]).String(), resp.Trailer.Get(schedapi.TrailerPieceDigest))
	task, _ = f.sched.snapshot(id)
	require.Equal(t, piece.Digest(body[piece.DefaultSize:2*piece.DefaultSize]), task.pieces[1], "published before the trailer")

	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	task, _ = f.sched.snapshot(id)
	require.Equal(t, -1, task.arriving[len(task.arriving)-1], "nothing arrives once the fetch ended")
	// A published piece asked for marked gets its digest too.
	resp = arrivingGet(t, srv, keys, id, 2, size, true)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, body[2*piece.DefaultSize:], b)
	require.Equal(t, piece.Digest(b).String(), resp.Trailer.Get(schedapi.TrailerPieceDigest))
	// A range that is not one piece is served as before: verified only.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+upload.Path(id), nil)
	require.NoError(t, err)
	keys.Set(req.Header)
	req.Header.Set("Range", "bytes=10-19")
	req.Header.Set(schedapi.HeaderArriving, "1")
	r2, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer r2.Body.Close()
	require.Equal(t, http.StatusPartialContent, r2.StatusCode)
	require.EqualValues(t, 10, r2.ContentLength)
}

// A source that fails in the middle of a piece cuts the marked responses
// following it: the client sees a broken body, never a complete one.
func TestArrivingPieceCutWhenSourceFails(t *testing.T) {
	t.Parallel()
	body := blob(41, 2*int(piece.DefaultSize))
	release := make(chan struct{})
	src := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = w.Write(body[:1<<20])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		panic(http.ErrAbortHandler)
	})
	f := newSourceFixture(t, Config{}, nil)
	d, id, keys, srv := servedTask(t, f.cdn, body)

	_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: src.URL + "/blob", Digest: d})
	require.NoError(t, err)
	_, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return slices.Contains(t.arriving, 0) })
	require.True(t, ok, "piece 0 is arriving")
	resp := arrivingGet(t, srv, keys, id, 0, int64(len(body)), true)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	got := make([]byte, 1<<20)
	_, err = io.ReadFull(resp.Body, got)
	require.NoError(t, err)
	close(release)
	_, err = io.ReadAll(resp.Body)
	require.Error(t, err, "the response is cut")
	require.Empty(t, resp.Trailer.Get(schedapi.TrailerPieceDigest))
	task := f.settle(t, id)
	require.Empty(t, task.pieces, "nothing was published")
	require.Equal(t, -1, task.arriving[len(task.arriving)-1], "the piece no longer arrives")
}

// servedTask returns body's digest, its task ID, the cluster keys and an
// upload server over c's tasks (closed with the test).
func servedTask(t *testing.T, c *CDN, body []byte) (digest.Digest, taskid.ID, clusterauth.Keys, *httptest.Server) {
	t.Helper()
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	keys := clusterauth.MustParse("cdn-test-cluster-token-0123456789")
	srv := httptest.NewServer(upload.New(c, keys).Handler())
	t.Cleanup(srv.Close)
	return d, id, keys, srv
}

// heldOrigin serves body, pausing after published pieces and 100 bytes
// until release is closed.
func heldOrigin(t *testing.T, body []byte, published int) (o *origin, release chan struct{}) {
	release = make(chan struct{})
	return newOrigin(t, &origin{body: body, holdAt: published*int(piece.DefaultSize) + 100, holdBody: release}), release
}

// fetchHeldAfter starts f's fetch from o (a heldOrigin), waits until the
// pieces before the pause are published and opens an upload handle on the
// fetch.
func fetchHeldAfter(t *testing.T, o *origin, f *fixture, published int) (taskid.ID, *handle) {
	t.Helper()
	id, err := taskid.ForDigest(digest.FromBytes(o.body))
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob")})
	require.NoError(t, err)
	_, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return len(t.pieces) == published })
	require.True(t, ok, "%d pieces published, the next arriving", published)
	tk, err := f.cdn.Open(t.Context(), id)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tk.Close() })
	h := tk.(*handle)
	require.NotNil(t, h.f, "the fetch in progress")
	return id, h
}

// The stream keeps its last two published pieces in the buffers they were
// read into, and uploads of them are served from there: a reader behind
// the read (a follower of the arrival, a peer assigned a piece just
// published) does not go to the ingest file, which the CDN writes around
// the page cache. Older pieces come from the file.
func TestRecentPiecesServedFromMemory(t *testing.T) {
	t.Parallel()
	ps := int(piece.DefaultSize)
	body := blob(43, 4*ps+10)
	o, release := heldOrigin(t, body, 3)
	root := t.TempDir()
	store, err := local.New(filepath.Join(root, "content"), local.WithDirectWrites())
	require.NoError(t, err)
	f := newFixture(t, o, store, filepath.Join(root, "cdn"))
	id, h := fetchHeldAfter(t, o, f, 3)
	h.f.mu.RLock()
	var kept []int64
	for _, r := range h.f.recent {
		kept = append(kept, r.off)
	}
	h.f.mu.RUnlock()
	require.Equal(t, []int64{int64(ps), 2 * int64(ps)}, kept, "the last two published pieces")

	// Zero pieces 0 and 1 in the ingest file: piece 1 is still served
	// whole (from memory), piece 0 as the file now has it.
	ingests, err := filepath.Glob(filepath.Join(root, "content", "ingest", "*", "data"))
	require.NoError(t, err)
	require.Len(t, ingests, 1)
	file, err := os.OpenFile(ingests[0], os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = file.WriteAt(make([]byte, 2*ps), 0)
	require.NoError(t, err)
	require.NoError(t, file.Close())
	got := make([]byte, ps)
	n, err := h.ReadAt(got, int64(ps))
	require.NoError(t, err)
	require.Equal(t, ps, n)
	require.True(t, bytes.Equal(body[ps:2*ps], got), "piece 1 from memory")
	_, err = h.ReadAt(got[:100], 0)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 100), got[:100], "piece 0 from the file")
	// A read across a kept piece's end continues in the file.
	across := make([]byte, 200)
	n, err = h.ReadAt(across, 3*int64(ps)-100)
	require.Equal(t, 100, n)
	require.True(t, bytes.Equal(body[3*ps-100:3*ps], across[:100]))
	require.ErrorIs(t, err, io.EOF, "piece 3 is not stored yet: the file ends there")
	close(release)
	f.settle(t, id)
	h.f.mu.RLock()
	defer h.f.mu.RUnlock()
	require.Empty(t, h.f.recent, "a finished fetch keeps no piece")
	require.Zero(t, f.cdn.recentBytes.Load(), "the kept pieces' budget is given back")
}

// With the CDN-wide budget for kept pieces spent, a fetch keeps none: its
// published pieces are read from the ingest, whole and right.
func TestRecentPiecesBudget(t *testing.T) {
	t.Parallel()
	ps := int(piece.DefaultSize)
	body := blob(44, 3*ps+10)
	o, release := heldOrigin(t, body, 2)
	f := newFixture(t, o, nil, "")
	f.cdn.recentBytes.Store(maxRecentBytes - int64(ps) + 1) // no piece fits
	id, h := fetchHeldAfter(t, o, f, 2)
	h.f.mu.RLock()
	require.Empty(t, h.f.recent, "over the budget, nothing is kept")
	h.f.mu.RUnlock()
	got := make([]byte, ps)
	_, err := h.ReadAt(got, int64(ps))
	require.NoError(t, err)
	require.True(t, bytes.Equal(body[ps:2*ps], got))
	close(release)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	require.Equal(t, body, readBlob(t, f.store, digest.FromBytes(body)))
	require.Equal(t, maxRecentBytes-int64(ps)+1, f.cdn.recentBytes.Load())
}
