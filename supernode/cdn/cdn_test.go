package cdn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const wait = 10 * time.Second

// blob returns n deterministic pseudo-random bytes.
func blob(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// origin is a test source: it serves body at any path, counts GETs, and can
// hold the response before the headers or in the middle of the body.
type origin struct {
	srv  *httptest.Server
	gets atomic.Int32
	body []byte

	// holdHeaders, when set, is waited on before answering.
	holdHeaders chan struct{}
	// holdAt and holdBody, when set, pause the body after holdAt bytes.
	holdAt   int
	holdBody chan struct{}
	// noLength sends the body chunked, without Content-Length.
	noLength bool
	// status, when set, is answered instead of the body.
	status int

	mu       sync.Mutex
	lastAuth string
}

func newOrigin(t *testing.T, o *origin) *origin {
	t.Helper()
	o.srv = httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) serve(w http.ResponseWriter, r *http.Request) {
	o.gets.Add(1)
	o.mu.Lock()
	o.lastAuth = r.Header.Get("Authorization")
	o.mu.Unlock()
	if o.holdHeaders != nil {
		select {
		case <-o.holdHeaders:
		case <-r.Context().Done():
			return
		}
	}
	if o.status != 0 {
		w.WriteHeader(o.status)
		return
	}
	if !o.noLength {
		w.Header().Set("Content-Length", strconv.Itoa(len(o.body)))
	}
	w.WriteHeader(http.StatusOK)
	rest := o.body
	if o.holdBody != nil {
		_, _ = w.Write(o.body[:o.holdAt])
		w.(http.Flusher).Flush()
		select {
		case <-o.holdBody:
		case <-r.Context().Done():
			return
		}
		rest = o.body[o.holdAt:]
	}
	_, _ = w.Write(rest)
}

func (o *origin) url(path string) string { return o.srv.URL + path }

type fixture struct {
	cdn   *CDN
	sched *fakeSched
	store content.Store
	dir   string
	reg   *prometheus.Registry
}

func newFixture(t *testing.T, o *origin, store content.Store, dir string) *fixture {
	t.Helper()
	if store == nil {
		store = contenttest.NewMemory()
	}
	if dir == "" {
		dir = t.TempDir()
	}
	f := &fixture{sched: newFakeSched(), store: store, dir: dir, reg: prometheus.NewRegistry()}
	c, err := New(Config{Dir: dir}, store, httpSource{client: o.srv.Client()}, f.sched, WithMetrics(f.reg))
	require.NoError(t, err)
	f.cdn = c
	return f
}

// settle waits until the task succeeds or fails and returns it.
func (f *fixture) settle(t *testing.T, id taskid.ID) fakeTask {
	t.Helper()
	task, ok := f.sched.waitFor(id, wait, settled)
	require.True(t, ok, "task %s did not settle: %+v", id, task.info)
	// The fetch settles the task, then lets go of it: until then the CDN
	// still counts it as running (and, say, does not drop it).
	require.Eventually(t, func() bool {
		f.cdn.mu.Lock()
		defer f.cdn.mu.Unlock()
		_, running := f.cdn.fetches[id]
		return !running
	}, wait, time.Millisecond, "the fetch of task %s did not end after it settled", id)
	return task
}

// requirePieces checks the published piece digests against body.
func requirePieces(t *testing.T, task fakeTask, body []byte) {
	t.Helper()
	ps := piece.SizeFor(int64(len(body)))
	require.Len(t, task.pieces, piece.Count(int64(len(body)), ps))
	for n := range task.pieces {
		off, ln := piece.Bounds(n, int64(len(body)), ps)
		require.Equal(t, piece.Digest(body[off:off+ln]), task.pieces[n], "piece %d", n)
	}
}

// metricValue sums the values of a counter family gathered from reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		return sum
	}
	return 0
}

func newLocal(t *testing.T, dir string) content.Store {
	t.Helper()
	s, err := local.New(dir)
	require.NoError(t, err)
	return s
}

func readBlob(t *testing.T, s content.Store, d digest.Digest) []byte {
	t.Helper()
	ra, err := s.ReaderAt(t.Context(), d)
	require.NoError(t, err)
	defer ra.Close()
	b := make([]byte, ra.Size())
	if len(b) > 0 {
		_, err = ra.ReadAt(b, 0)
		require.NoError(t, err)
	}
	return b
}

func TestEnsureFetchesOnce(t *testing.T) {
	t.Parallel()
	body := blob(1, 9<<20+123)
	o := newOrigin(t, &origin{body: body, holdHeaders: make(chan struct{})})
	f := newFixture(t, o, nil, "")
	id, err := taskid.ForURL(o.url("/file?sig=secret"), []string{"sig"}, "")
	require.NoError(t, err)

	const callers = 20
	var wg sync.WaitGroup
	infos := make([]schedapi.TaskInfo, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			infos[i], errs[i] = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/file?sig=secret")})
		})
	}
	// Every caller is waiting on the one fetch whose headers are held.
	require.Eventually(t, func() bool { return o.gets.Load() == 1 }, wait, time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	close(o.holdHeaders)
	wg.Wait()
	for i := range callers {
		require.NoError(t, errs[i])
		require.Equal(t, id.String(), infos[i].TaskID)
		require.NotEqual(t, schedapi.TaskFailed, infos[i].State)
		require.Equal(t, int64(len(body)), infos[i].Size)
	}

	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.EqualValues(t, 1, o.gets.Load())
	require.Equal(t, 1, f.sched.adds)
	requirePieces(t, task, body)
	require.Equal(t, digest.FromBytes(body).String(), task.info.ContentDigest)
	require.Equal(t, o.url("/file"), task.spec.URL, "the query is not kept")
	require.Equal(t, body, readBlob(t, f.store, digest.FromBytes(body)))
	require.Equal(t, int64(len(body)), f.cdn.SourceBytes(id))
	require.InDelta(t, float64(len(body)), metricValue(t, f.reg, "damselfly_cdn_source_bytes_total"), 0)
	require.InDelta(t, 1, metricValue(t, f.reg, "damselfly_cdn_tasks_fetched_total"), 0)

	// Once the task exists, Ensure answers from the scheduler.
	info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/file")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, info.State)
	require.EqualValues(t, 1, o.gets.Load())
}

func TestPiecesPublishedWhileStreaming(t *testing.T) {
	t.Parallel()
	body := blob(2, 3*int(piece.DefaultSize)+5)
	release := make(chan struct{})
	o := newOrigin(t, &origin{body: body, holdAt: int(piece.DefaultSize) + 100, holdBody: release})
	f := newFixture(t, o, nil, "")
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)

	info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob"), Digest: d})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskRunning, info.State)
	require.Equal(t, 4, info.PieceCount)

	// Piece 0 is published while the body is still held mid-stream.
	task, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return len(t.pieces) >= 1 })
	require.True(t, ok)
	require.Equal(t, piece.Digest(body[:piece.DefaultSize]), task.pieces[0])
	time.Sleep(20 * time.Millisecond)
	task, _ = f.sched.snapshot(id)
	require.Len(t, task.pieces, 1, "piece 1 is not complete yet")
	require.Equal(t, schedapi.TaskRunning, task.info.State)

	// The CDN serves piece 0 already, and refuses piece 1 as unverified.
	h, err := f.cdn.Open(t.Context(), id)
	require.NoError(t, err)
	require.True(t, h.Verified(0, piece.DefaultSize))
	require.False(t, h.Verified(0, piece.DefaultSize+1))
	require.False(t, h.Verified(piece.DefaultSize, 10))
	buf := make([]byte, 1000)
	_, err = h.ReadAt(buf, 500)
	require.NoError(t, err)
	require.Equal(t, body[500:1500], buf)

	close(release)
	task = f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	requirePieces(t, task, body)

	// A handle opened during the fetch reads the committed blob now.
	require.True(t, h.Verified(int64(len(body))-5, 5))
	_, err = h.ReadAt(buf, int64(len(body))-1000)
	require.NoError(t, err)
	require.Equal(t, body[len(body)-1000:], buf)
	require.NoError(t, h.Close())
	require.Equal(t, body, readBlob(t, f.store, d))
}

func TestDigestMismatchCachesNothing(t *testing.T) {
	t.Parallel()
	body := blob(3, 5<<20)
	o := newOrigin(t, &origin{body: body})
	f := newFixture(t, o, nil, "")
	want := digest.FromBytes([]byte("something else"))
	id, err := taskid.ForDigest(want)
	require.NoError(t, err)

	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob")})
	require.NoError(t, err)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskFailed, task.info.State)
	require.Contains(t, task.info.Error, "content digest mismatch")

	n := 0
	require.NoError(t, f.store.Walk(t.Context(), func(content.Info) error { n++; return nil }))
	require.Zero(t, n, "nothing is committed")
	st, err := f.store.ListStatuses(t.Context())
	require.NoError(t, err)
	require.Empty(t, st, "the ingest is gone")
	metas, err := os.ReadDir(filepath.Join(f.dir, "meta"))
	require.NoError(t, err)
	require.Empty(t, metas)
	_, err = f.cdn.Open(t.Context(), id)
	require.Error(t, err)
}

func TestServedFromCacheAfterRestart(t *testing.T) {
	t.Parallel()
	body := blob(4, 6<<20+7)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	newStore := func() content.Store { return newLocal(t, filepath.Join(root, "content")) }
	d := digest.FromBytes(body)
	byDigest, err := taskid.ForDigest(d)
	require.NoError(t, err)
	byURL, err := taskid.ForURL(o.url("/blob"), nil, "")
	require.NoError(t, err)

	first := newFixture(t, o, newStore(), filepath.Join(root, "cdn"))
	for _, id := range []taskid.ID{byDigest, byURL} {
		_, err = first.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob")})
		require.NoError(t, err)
		require.Equal(t, schedapi.TaskSucceeded, first.settle(t, id).info.State)
	}
	require.EqualValues(t, 2, o.gets.Load())

	tests := []struct {
		name      string
		id        taskid.ID
		dropMeta  bool
		wantStore bool
	}{
		{"digest task", byDigest, false, true},
		{"url task", byURL, false, true},
		{"metadata rebuilt from blob", byDigest, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Subtests share the origin counter, so they run in order.
			if tt.dropMeta {
				require.NoError(t, os.Remove(filepath.Join(root, "cdn", "meta", d.Encoded()+".json")))
			}
			again := newFixture(t, o, newStore(), filepath.Join(root, "cdn"))
			info, err := again.cdn.Ensure(t.Context(), Request{TaskID: tt.id, URL: o.url("/blob")})
			require.NoError(t, err)
			require.Equal(t, schedapi.TaskSucceeded, info.State)
			task, ok := again.sched.snapshot(tt.id)
			require.True(t, ok)
			requirePieces(t, task, body)
			require.Equal(t, d.String(), task.info.ContentDigest)
			require.EqualValues(t, 2, o.gets.Load(), "no source request")
			require.InDelta(t, 1, metricValue(t, again.reg, "damselfly_cdn_cache_hits_total"), 0)
			require.FileExists(t, filepath.Join(root, "cdn", "meta", d.Encoded()+".json"))

			h, err := again.cdn.Open(t.Context(), tt.id)
			require.NoError(t, err)
			defer h.Close()
			require.Equal(t, int64(len(body)), h.Size())
			require.True(t, h.Verified(0, int64(len(body))))
			buf := make([]byte, 100)
			_, err = h.ReadAt(buf, 4<<20)
			require.NoError(t, err)
			require.Equal(t, body[4<<20:4<<20+100], buf)
		})
	}
}

func TestEnsureOutlivesCaller(t *testing.T) {
	t.Parallel()
	body := blob(5, 1<<20)
	hold := make(chan struct{})
	o := newOrigin(t, &origin{body: body, holdHeaders: hold})
	f := newFixture(t, o, nil, "")
	id, err := taskid.ForURL(o.url("/slow"), nil, "")
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := f.cdn.Ensure(ctx, Request{TaskID: id, URL: o.url("/slow")})
		errc <- err
	}()
	require.Eventually(t, func() bool { return o.gets.Load() == 1 }, wait, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	close(hold)

	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.Equal(t, body, readBlob(t, f.store, digest.FromBytes(body)))
	require.EqualValues(t, 1, o.gets.Load())
}

func TestSourceErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		status  int
		wantErr string
	}{
		{"not found", http.StatusNotFound, "not found"},
		{"forbidden", http.StatusForbidden, "403"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, &origin{status: tt.status})
			f := newFixture(t, o, nil, "")
			url := o.url("/missing?token=hunter2")
			id, err := taskid.ForURL(url, nil, "")
			require.NoError(t, err)
			info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: url})
			require.NoError(t, err, "a source error is a failed task, not an error")
			require.Equal(t, schedapi.TaskFailed, info.State)
			require.Contains(t, info.Error, tt.wantErr)
			require.NotContains(t, info.Error, "hunter2")

			// A failed task is retried by the next Ensure.
			info, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: url})
			require.NoError(t, err)
			require.Equal(t, schedapi.TaskFailed, info.State)
			require.EqualValues(t, 2, o.gets.Load())
		})
	}
}

func TestUnknownSize(t *testing.T) {
	t.Parallel()
	body := blob(6, 5<<20+1)
	o := newOrigin(t, &origin{body: body, noLength: true})
	f := newFixture(t, o, nil, "")
	id, err := taskid.ForURL(o.url("/chunked"), nil, "")
	require.NoError(t, err)
	info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/chunked")})
	require.NoError(t, err)
	require.Equal(t, int64(-1), info.Size)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.True(t, task.setSize)
	require.Equal(t, int64(len(body)), task.info.Size)
	requirePieces(t, task, body)
}

func TestHeadersStayInMemory(t *testing.T) {
	t.Parallel()
	body := blob(7, 1000)
	o := newOrigin(t, &origin{body: body})
	f := newFixture(t, o, nil, "")
	id, err := taskid.ForURL(o.url("/private"), nil, "")
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{
		TaskID: id, URL: o.url("/private"),
		Header: http.Header{"Authorization": {"Bearer s3cr3t-token"}},
	})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	o.mu.Lock()
	require.Equal(t, "Bearer s3cr3t-token", o.lastAuth)
	o.mu.Unlock()
	require.NoError(t, filepath.WalkDir(f.dir, func(p string, de os.DirEntry, err error) error {
		require.NoError(t, err)
		if de.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		require.NotContains(t, string(b), "s3cr3t")
		return nil
	}))
}

func TestDelete(t *testing.T) {
	t.Parallel()
	body := blob(8, 5<<20)
	release := make(chan struct{})
	o := newOrigin(t, &origin{body: body, holdAt: 1 << 20, holdBody: release})
	defer close(release)
	f := newFixture(t, o, nil, "")
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)

	// Delete cancels a running fetch.
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob")})
	require.NoError(t, err)
	require.NoError(t, f.cdn.Delete(t.Context(), id))
	_, ok := f.sched.snapshot(id)
	require.False(t, ok)
	st, err := f.store.ListStatuses(t.Context())
	require.NoError(t, err)
	require.Empty(t, st)
	require.ErrorIs(t, f.cdn.Delete(t.Context(), id), ErrNotFound)

	// Delete removes cached content and metadata.
	o2 := newOrigin(t, &origin{body: body})
	f2 := newFixture(t, o2, nil, "")
	_, err = f2.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o2.url("/blob")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f2.settle(t, id).info.State)
	require.NoError(t, f2.cdn.Delete(t.Context(), id))
	_, err = f2.store.Info(t.Context(), d)
	require.ErrorIs(t, err, content.ErrNotFound)
	require.NoFileExists(t, filepath.Join(f2.dir, "meta", d.Encoded()+".json"))
	_, err = f2.cdn.Open(t.Context(), id)
	require.Error(t, err)

	// The next Ensure fetches again.
	_, err = f2.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o2.url("/blob")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f2.settle(t, id).info.State)
	require.EqualValues(t, 2, o2.gets.Load())
}

func TestEnsureRejectsBadRequests(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, &origin{body: []byte("x")})
	f := newFixture(t, o, nil, "")
	d := digest.FromBytes([]byte("x"))
	urlID, err := taskid.ForURL(o.url("/x"), nil, "")
	require.NoError(t, err)
	tests := []struct {
		name string
		req  Request
	}{
		{"no task id", Request{URL: o.url("/x")}}, // a bad one never gets past taskid.Parse
		{"ftp url", Request{TaskID: urlID, URL: "ftp://example.com/x"}},
		{"no host", Request{TaskID: urlID, URL: "http:///x"}},
		{"digest on url task", Request{TaskID: urlID, URL: o.url("/x"), Digest: d}},
		{"digest of another task", Request{TaskID: taskid.ID("sha256:" + strings.Repeat("a", 64)), URL: o.url("/x"), Digest: d}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := f.cdn.Ensure(t.Context(), tt.req)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
	require.Zero(t, o.gets.Load())
}

func TestEmptyContent(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, &origin{body: []byte{}})
	f := newFixture(t, o, nil, "")
	d := digest.FromBytes(nil)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/empty")})
	require.NoError(t, err)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.Empty(t, task.pieces)
	require.Equal(t, []byte{}, readBlob(t, f.store, d))
}

func TestOpenUnknownTask(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, &origin{body: []byte("x")})
	f := newFixture(t, o, nil, "")
	// "nope" is not a task ID: the upload server refuses it (taskid.Parse).
	for _, id := range []taskid.ID{taskid.ID("sha256:" + strings.Repeat("b", 64)), taskid.ID(strings.Repeat("c", 64))} {
		_, err := f.cdn.Open(t.Context(), id)
		require.Error(t, err)
		require.True(t, errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid), err)
	}
}

func TestConcurrentReadsDuringCommit(t *testing.T) {
	t.Parallel()
	body := blob(9, 2*int(piece.DefaultSize)+3)
	release := make(chan struct{})
	o := newOrigin(t, &origin{body: body, holdAt: int(piece.DefaultSize) + 1, holdBody: release})
	f := newFixture(t, o, newLocal(t, t.TempDir()), "")
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob")})
	require.NoError(t, err)
	_, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return len(t.pieces) >= 1 })
	require.True(t, ok)

	// Readers hammer piece 0 while the rest arrives and the ingest turns
	// into a blob; every read returns the right bytes.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	readErrs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			h, err := f.cdn.Open(t.Context(), id)
			if err != nil {
				readErrs <- err
				return
			}
			defer h.Close()
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64(i*4096) % (piece.DefaultSize - 4096)
				if _, err := h.ReadAt(buf, off); err != nil {
					readErrs <- err
					return
				}
				if !bytes.Equal(buf, body[off:off+4096]) {
					readErrs <- errors.New("wrong bytes")
					return
				}
			}
		})
	}
	close(release)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(readErrs)
	for err := range readErrs {
		require.NoError(t, err)
	}
}

func TestServedByUploadServer(t *testing.T) {
	t.Parallel()
	body := blob(10, 2*int(piece.DefaultSize)+10)
	release := make(chan struct{})
	o := newOrigin(t, &origin{body: body, holdAt: int(piece.DefaultSize) + 1, holdBody: release})
	f := newFixture(t, o, nil, "")
	_, id, keys, srv := servedTask(t, f.cdn, body)
	get := func(rng string) (int, []byte) {
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
		require.NoError(t, err)
		return resp.StatusCode, b
	}

	status, _ := get("bytes=0-99")
	require.Equal(t, http.StatusNotFound, status, "unknown task")

	_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/blob")})
	require.NoError(t, err)
	_, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return len(t.pieces) >= 1 })
	require.True(t, ok)

	p0 := fmt.Sprintf("bytes=0-%d", piece.DefaultSize-1)
	status, b := get(p0)
	require.Equal(t, http.StatusPartialContent, status)
	require.Equal(t, body[:piece.DefaultSize], b)
	status, _ = get(fmt.Sprintf("bytes=%d-%d", piece.DefaultSize, 2*piece.DefaultSize-1))
	require.Equal(t, http.StatusNotFound, status, "piece 1 is not published yet")
	status, _ = get("")
	require.Equal(t, http.StatusNotFound, status, "the whole content is not verified yet")

	close(release)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	status, b = get("")
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, body, b)
}

func TestRunStopsFetches(t *testing.T) {
	t.Parallel()
	body := blob(11, 5<<20)
	release := make(chan struct{})
	defer close(release)
	o := newOrigin(t, &origin{body: body, holdAt: 1 << 20, holdBody: release})
	f := newFixture(t, o, nil, "")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- f.cdn.Run(ctx) }()

	id, err := taskid.ForURL(o.url("/big"), nil, "")
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/big")})
	require.NoError(t, err)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(wait):
		t.Fatal("Run did not stop the running fetch")
	}
	task, _ := f.sched.snapshot(id)
	require.Equal(t, schedapi.TaskFailed, task.info.State)
	st, err := f.store.ListStatuses(t.Context())
	require.NoError(t, err)
	require.Empty(t, st, "the ingest is aborted")

	other, err := taskid.ForURL(o.url("/other"), nil, "")
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: other, URL: o.url("/other")})
	require.ErrorIs(t, err, ErrClosed)
}

func TestDeleteRemovesTasksSharingContent(t *testing.T) {
	t.Parallel()
	body := blob(12, 3000)
	o := newOrigin(t, &origin{body: body})
	f := newFixture(t, o, nil, "")
	d := digest.FromBytes(body)
	byDigest, err := taskid.ForDigest(d)
	require.NoError(t, err)
	byURL, err := taskid.ForURL(o.url("/a"), nil, "")
	require.NoError(t, err)
	for _, id := range []taskid.ID{byURL, byDigest} {
		_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/a")})
		require.NoError(t, err)
		require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	}

	require.NoError(t, f.cdn.Delete(t.Context(), byDigest))
	for _, id := range []taskid.ID{byURL, byDigest} {
		_, ok := f.sched.snapshot(id)
		require.False(t, ok, "task %s is gone with its content", id)
		_, err := f.cdn.Open(t.Context(), id)
		require.ErrorIs(t, err, ErrNotFound)
	}
	// The URL task fetches again instead of pointing at deleted content.
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: byURL, URL: o.url("/a")})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, byURL).info.State)
	// One fetch for the URL task, the digest task from the cache, one
	// fetch again after the delete.
	require.EqualValues(t, 2, o.gets.Load())
	require.InDelta(t, 1, metricValue(t, f.reg, "damselfly_cdn_cache_hits_total"), 0)
}
