package cdn

import (
	"bytes"
	"context"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// sourceServer is a real HTTP source on 127.0.0.1 whose behaviour a test
// picks. It records the Range of every GET.
type sourceServer struct {
	*httptest.Server
	mu     sync.Mutex
	ranges []string
	gets   atomic.Int32
	sent   atomic.Int64
}

func (s *sourceServer) rangesSeen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ranges)
}

func newSourceServer(t *testing.T, serve func(s *sourceServer, w http.ResponseWriter, r *http.Request)) *sourceServer {
	t.Helper()
	s := &sourceServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.gets.Add(1)
		s.mu.Lock()
		s.ranges = append(s.ranges, r.Header.Get("Range"))
		s.mu.Unlock()
		serve(s, w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// honestSource serves body with Range support and a strong ETag.
func honestSource(t *testing.T, body []byte) *sourceServer {
	return newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"`+digest.FromBytes(body).Encoded()[:16]+`"`)
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(body))
	})
}

// noRangeSource serves all of body to every GET, ignoring Range.
func noRangeSource(t *testing.T, body []byte) *sourceServer {
	return newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
}

// squatter announces the right Content-Length, sends the first fast bytes
// of body at once, then one byte every 100ms.
func squatter(t *testing.T, body []byte, fast int) *sourceServer {
	return newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("ETag", `"squat"`)
		_, _ = w.Write(body[:fast])
		w.(http.Flusher).Flush()
		for i := fast; i < len(body); i++ {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := w.Write(body[i : i+1]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
}

// endless sends bytes without a Content-Length until the client goes.
func endless(t *testing.T) *sourceServer {
	return newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("endless!"), 8<<10)
		for r.Context().Err() == nil {
			n, err := w.Write(chunk)
			s.sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
}

// newSourceFixture is a CDN fetching with the real httpsource client, a
// short rate window and few retries.
func newSourceFixture(t *testing.T, cfg Config, store content.Store) *fixture {
	t.Helper()
	if store == nil {
		store = contenttest.NewMemory()
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.MinSourceRate == 0 {
		cfg.MinSourceRate = 256 << 10
	}
	if cfg.MinSourceRateWindow == 0 {
		cfg.MinSourceRateWindow = 300 * time.Millisecond
	}
	src := httpsource.New(httpsource.WithRetries(1), httpsource.WithBackoff(10*time.Millisecond, 20*time.Millisecond), httpsource.WithIdleTimeout(5*time.Second))
	f := &fixture{sched: newFakeSched(), store: store, dir: cfg.Dir, reg: prometheus.NewRegistry()}
	c, err := New(cfg, store, src, f.sched, WithMetrics(f.reg))
	require.NoError(t, err)
	f.cdn = c
	// Stop whatever still fetches before the sources close: a source
	// waits for its client to go.
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
	})
	return f
}

// candidateCount returns how many sources the running fetch of a task holds.
func (f *fixture) candidateCount(id taskid.ID) int {
	f.cdn.mu.Lock()
	defer f.cdn.mu.Unlock()
	fe := f.cdn.fetches[id]
	if fe == nil {
		return 0
	}
	fe.cands.mu.Lock()
	defer fe.cands.mu.Unlock()
	return len(fe.cands.list)
}

func TestSquattingSourceGivesWayToHonestOne(t *testing.T) {
	t.Parallel()
	body := blob(21, 9<<20+123) // three pieces
	for _, tt := range []struct {
		name   string
		honest func(*testing.T, []byte) *sourceServer
		// wantRange is the Range of the honest source's first GET.
		wantRange string
	}{
		{"resumes with a range", honestSource, "bytes=4194304-"},
		{"source without ranges, prefix checked again", noRangeSource, "bytes=4194304-"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// The squatter sends piece 0 honestly, then trickles.
			squat := squatter(t, body, 4<<20+10)
			honest := tt.honest(t, body)
			f := newSourceFixture(t, Config{}, nil)
			d := digest.FromBytes(body)
			id, err := taskid.ForDigest(d)
			require.NoError(t, err)

			start := time.Now()
			info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: squat.URL + "/blob", Digest: d})
			require.NoError(t, err)
			require.Equal(t, schedapi.TaskRunning, info.State)
			_, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return len(t.pieces) > 0 && t.pieces[0] != "" })
			require.True(t, ok, "piece 0 was not published from the squatter")

			_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: honest.URL + "/v2/r/blobs/" + d.String(), Digest: d, Size: int64(len(body))})
			require.NoError(t, err)
			task := f.settle(t, id)
			require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
			require.Less(t, time.Since(start), 5*time.Second)
			requirePieces(t, task, body)
			require.Equal(t, body, readBlob(t, f.store, d))
			require.Equal(t, tt.wantRange, honest.rangesSeen()[0], "the honest source is asked for the rest first")
			require.EqualValues(t, 1, metricValue(t, f.reg, "damselfly_cdn_sources_given_up_total"))
		})
	}
}

func TestSlowOnlySourceIsKept(t *testing.T) {
	t.Parallel()
	body := blob(22, 200<<10)
	// About 200 KiB/s, under the minimum rate: with no other candidate
	// the fetch goes on with it. The window is long enough (three of it
	// in the second the body takes) that a loaded machine pausing the
	// source's writes does not make it look stalled (it was 100 ms, and
	// the source was asked twice in a loaded run of the package).
	slow := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		for off := 0; off < len(body); off += 10 << 10 {
			time.Sleep(50 * time.Millisecond)
			_, _ = w.Write(body[off:min(off+10<<10, len(body))])
			w.(http.Flusher).Flush()
		}
	})
	f := newSourceFixture(t, Config{MinSourceRate: ratelimit.Rate(1 << 20), MinSourceRateWindow: 300 * time.Millisecond}, nil)
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: slow.URL + "/blob", Digest: d})
	require.NoError(t, err)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.EqualValues(t, 1, slow.gets.Load())
}

func TestSourceLyingAboutSizeIsSkipped(t *testing.T) {
	t.Parallel()
	body := blob(23, 5<<20)
	release := make(chan struct{})
	// The liar answers once the honest source is offered, announcing more
	// bytes than the content has.
	liar := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		padded := append(slices.Clone(body), make([]byte, 4096)...)
		w.Header().Set("Content-Length", strconv.Itoa(len(padded)))
		_, _ = w.Write(padded)
	})
	honest := honestSource(t, body)
	f := newSourceFixture(t, Config{}, nil)
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)

	first := make(chan error, 1)
	go func() {
		_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: liar.URL + "/blob", Digest: d})
		first <- err
	}()
	require.Eventually(t, func() bool { return liar.gets.Load() == 1 }, wait, time.Millisecond)
	// The honest member knows the size (from the registry's HEAD).
	second := make(chan error, 1)
	go func() {
		_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: honest.URL + "/blob", Digest: d, Size: int64(len(body))})
		second <- err
	}()
	require.Eventually(t, func() bool { return f.candidateCount(id) == 2 }, wait, time.Millisecond)
	close(release)
	require.NoError(t, <-first)
	require.NoError(t, <-second)

	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.Equal(t, int64(len(body)), task.spec.Size, "the task never had the lied size")
	requirePieces(t, task, body)
	require.EqualValues(t, 1, honest.gets.Load())
}

func TestSourceContradictingItsMembersSize(t *testing.T) {
	t.Parallel()
	body := blob(24, 1<<20)
	src := honestSource(t, body)
	f := newSourceFixture(t, Config{}, nil)
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: src.URL + "/blob", Digest: d, Size: int64(len(body)) - 1})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskFailed, info.State)
	require.Contains(t, info.Error, "the member that offered it knows 1048575")
}

func TestAllSourcesFailing(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	notFound := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		http.NotFound(w, r)
	})
	broken := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
	})
	f := newSourceFixture(t, Config{}, nil)
	d := digest.FromBytes([]byte("nobody has it"))
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)

	first := make(chan schedapi.TaskInfo, 1)
	go func() {
		info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: notFound.URL + "/a?token=hunter2", Digest: d})
		if err != nil {
			info.Error = err.Error()
		}
		first <- info
	}()
	require.Eventually(t, func() bool { return notFound.gets.Load() == 1 }, wait, time.Millisecond)
	go func() {
		_, _ = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: broken.URL + "/b?sig=hunter2", Digest: d})
	}()
	require.Eventually(t, func() bool { return f.candidateCount(id) == 2 }, wait, time.Millisecond)
	close(release)
	info := <-first
	require.Equal(t, schedapi.TaskFailed, info.State, info.Error)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskFailed, task.info.State)
	require.Contains(t, task.info.Error, "all 2 sources failed")
	require.Contains(t, task.info.Error, notFound.URL+"/a: source: content not found")
	require.Contains(t, task.info.Error, broken.URL+"/b: source answered 403")
	require.NotContains(t, task.info.Error, "hunter2")
}

func TestEndlessSourceCutAtMaxSourceSize(t *testing.T) {
	t.Parallel()
	const limit = 6<<20 + 17
	src := endless(t)
	dir := t.TempDir()
	store := newLocal(t, filepath.Join(dir, "content"))
	f := newSourceFixture(t, Config{MaxSourceSize: limit, Dir: filepath.Join(dir, "cdn")}, store)
	url := src.URL + "/forever"
	id, err := taskid.ForURL(url, nil, "")
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: url})
	require.NoError(t, err)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskFailed, task.info.State)
	require.Contains(t, task.info.Error, "cdn.maxSourceSize")
	require.LessOrEqual(t, f.cdn.SourceBytes(id), int64(limit))
	require.Empty(t, filesUnder(t, filepath.Join(dir, "content", "ingest")), "the cut body left nothing behind")
}

func TestAnnouncedSizeOverMaxSourceSizeRefused(t *testing.T) {
	t.Parallel()
	body := blob(25, 64<<10)
	src := honestSource(t, body)
	f := newSourceFixture(t, Config{MaxSourceSize: 32 << 10}, nil)
	url := src.URL + "/big"
	id, err := taskid.ForURL(url, nil, "")
	require.NoError(t, err)
	info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: url})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskFailed, info.State)
	require.Contains(t, info.Error, "more than cdn.maxSourceSize (32KiB)")
}

// filesUnder lists the regular files under dir (none when it is missing).
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !e.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	require.NoError(t, err)
	return out
}

func TestForgetRemovesLeftovers(t *testing.T) {
	t.Parallel()
	body := blob(26, 9<<20)
	// Piece 0 and a bit, then nothing until the client goes.
	stuck := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body[:4<<20+1])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	dir := t.TempDir()
	store := newLocal(t, filepath.Join(dir, "content"))
	f := newSourceFixture(t, Config{Dir: filepath.Join(dir, "cdn")}, store)
	before := filesUnder(t, dir)

	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: stuck.URL + "/blob", Digest: d, Header: http.Header{"Authorization": {"Bearer secret"}}})
	require.NoError(t, err)
	_, ok := f.sched.waitFor(id, wait, func(t fakeTask) bool { return len(t.pieces) > 0 && t.pieces[0] != "" })
	require.True(t, ok)
	require.NotEmpty(t, filesUnder(t, filepath.Join(dir, "content", "ingest")), "the fetch writes an ingest")

	require.NoError(t, f.cdn.Forget(t.Context(), id))
	require.Equal(t, before, filesUnder(t, dir), "a forgotten task leaves no file behind")
	f.cdn.mu.Lock()
	require.Empty(t, f.cdn.fetches)
	require.Empty(t, f.cdn.pending)
	require.NotContains(t, f.cdn.sourceBytes, id)
	f.cdn.mu.Unlock()
	task, _ := f.sched.snapshot(id)
	require.Equal(t, schedapi.TaskFailed, task.info.State, "the cancelled fetch settled its task")

	// Forgetting again, or a task never seen, is not an error.
	require.NoError(t, f.cdn.Forget(t.Context(), id))
	// A path is not a task ID: it never gets past the edge.
	_, err = taskid.Parse("../etc")
	require.ErrorIs(t, err, taskid.ErrInvalid)
}

func TestForgetKeepsCommittedContent(t *testing.T) {
	t.Parallel()
	body := blob(27, 1<<20)
	src := honestSource(t, body)
	dir := t.TempDir()
	store := newLocal(t, filepath.Join(dir, "content"))
	f := newSourceFixture(t, Config{Dir: filepath.Join(dir, "cdn")}, store)
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: src.URL + "/blob", Digest: d})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, f.settle(t, id).info.State)
	require.NoError(t, f.cdn.Forget(t.Context(), id))
	require.Equal(t, body, readBlob(t, store, d), "verified content stays as the cache")
	_, err = os.Stat(filepath.Join(dir, "cdn", "meta", d.Encoded()+".json"))
	require.NoError(t, err)

	// URL tasks of the same content each leave a record until forgotten.
	var ids []taskid.ID
	for i := range 5 {
		url := src.URL + "/copy/" + strconv.Itoa(i)
		uid, err := taskid.ForURL(url, nil, "")
		require.NoError(t, err)
		_, err = f.cdn.Ensure(t.Context(), Request{TaskID: uid, URL: url})
		require.NoError(t, err)
		require.Equal(t, schedapi.TaskSucceeded, f.settle(t, uid).info.State)
		ids = append(ids, uid)
	}
	require.Len(t, filesUnder(t, filepath.Join(dir, "cdn", "tasks")), 5)
	for _, uid := range ids {
		require.NoError(t, f.cdn.Forget(t.Context(), uid))
	}
	require.Empty(t, filesUnder(t, filepath.Join(dir, "cdn", "tasks")), "forgotten URL tasks leave no record")
	require.Equal(t, body, readBlob(t, store, d))
}

func TestCandidatesBounded(t *testing.T) {
	t.Parallel()
	cs := newCandidates(Request{URL: "http://a/0"})
	require.False(t, cs.offer(Request{URL: "http://a/0"}), "the same source is offered once")
	require.True(t, cs.offer(Request{URL: "http://a/0", Header: http.Header{"Authorization": {"x"}}}), "other credentials are another candidate")
	for i := 1; i < 20; i++ {
		cs.offer(Request{URL: "http://a/" + strconv.Itoa(i)})
	}
	require.Len(t, cs.list, maxCandidates)
	require.Equal(t, "http://a/19", cs.list[len(cs.list)-1].url, "a new offer makes room")
	c := cs.next()
	cs.fail(c, errTooSlow)
	require.True(t, cs.offer(Request{URL: "http://b"}))
	require.NotContains(t, cs.list, c, "a failed candidate makes room first")
}

func TestFetchKeepsMinFreeSpace(t *testing.T) {
	t.Parallel()
	body := blob(28, 1<<20)
	known := honestSource(t, body)
	chunked := endless(t)
	dir := t.TempDir()
	store := newLocal(t, filepath.Join(dir, "content"))
	// More free space than any disk has: nothing may be written.
	f := newSourceFixture(t, Config{MinFreeSpace: 1 << 62, Dir: filepath.Join(dir, "cdn")}, store)
	for _, url := range []string{known.URL + "/known", chunked.URL + "/unknown"} {
		id, err := taskid.ForURL(url, nil, "")
		require.NoError(t, err)
		_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: url})
		require.NoError(t, err)
		task := f.settle(t, id)
		require.Equal(t, schedapi.TaskFailed, task.info.State, url)
		require.Contains(t, task.info.Error, "cdn.minFreeSpace", url)
		require.Empty(t, task.pieces, url)
	}
	require.Empty(t, filesUnder(t, filepath.Join(dir, "content", "ingest")))
}

func TestSourceFailingTheDigestIsNotTriedAgain(t *testing.T) {
	t.Parallel()
	body := blob(29, 2<<20)
	wrong := blob(30, len(body))
	liar := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(wrong)))
		_, _ = w.Write(wrong)
	})
	honest := honestSource(t, body)
	f := newSourceFixture(t, Config{}, nil)
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)

	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: liar.URL + "/blob", Digest: d})
	require.NoError(t, err)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskFailed, task.info.State)
	require.Contains(t, task.info.Error, "digest mismatch")

	// The liar registers first again: its source is not asked again.
	info, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: liar.URL + "/blob", Digest: d})
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskFailed, info.State)
	require.Contains(t, info.Error, "did not match the task's digest before")
	require.EqualValues(t, 1, liar.gets.Load())

	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: honest.URL + "/blob", Digest: d})
	require.NoError(t, err)
	task = f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.Equal(t, body, readBlob(t, f.store, d))

	// Forgetting the task forgets the blame.
	require.NoError(t, f.cdn.Forget(t.Context(), id))
	f.cdn.mu.Lock()
	require.Empty(t, f.cdn.blamed)
	f.cdn.mu.Unlock()
}

func TestSourceNotAnsweringGivesWay(t *testing.T) {
	t.Parallel()
	body := blob(31, 1<<20)
	mute := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never a header
	})
	honest := honestSource(t, body)
	f := newSourceFixture(t, Config{}, nil)
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)

	start := time.Now()
	first := make(chan error, 1)
	go func() {
		_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: mute.URL + "/blob", Digest: d})
		first <- err
	}()
	require.Eventually(t, func() bool { return mute.gets.Load() == 1 }, wait, time.Millisecond)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: honest.URL + "/blob", Digest: d})
	require.NoError(t, err)
	require.NoError(t, <-first)
	task := f.settle(t, id)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.Less(t, time.Since(start), 3*time.Second)
	require.Equal(t, body, readBlob(t, f.store, d))
}

// A source that trickles, even the only one, is cut at cdn.stallRate and
// asked again from the stored pieces a few times; one that keeps trickling
// fails its task in seconds, not at cdn.fetchTimeout, saying why.
func TestLoneStalledSource(t *testing.T) {
	t.Parallel()
	cfg := Config{MinSourceRate: ratelimit.Rate(1 << 20), StallRate: ratelimit.Rate(4 << 10), StallRetries: 2,
		MinSourceRateWindow: 200 * time.Millisecond}
	t.Run("keeps trickling", func(t *testing.T) {
		t.Parallel()
		body := blob(31, 64<<10)
		trickle := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			for _, b := range body {
				if _, err := w.Write([]byte{b}); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-time.After(100 * time.Millisecond):
				case <-r.Context().Done():
					return
				}
			}
		})
		f := newSourceFixture(t, cfg, nil)
		d := digest.FromBytes(body)
		id, err := taskid.ForDigest(d)
		require.NoError(t, err)
		start := time.Now()
		_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: trickle.URL + "/blob", Digest: d})
		require.NoError(t, err)
		task := f.settle(t, id)
		require.Equal(t, schedapi.TaskFailed, task.info.State)
		require.Contains(t, task.info.Error, "stalled")
		require.EqualValues(t, 1+cfg.StallRetries, trickle.gets.Load(), "asked once, then again StallRetries times")
		require.Less(t, time.Since(start), 10*time.Second)
	})
	t.Run("stalls once, then serves", func(t *testing.T) {
		t.Parallel()
		body := blob(32, 9<<20)
		var first atomic.Bool
		first.Store(true)
		src := newSourceServer(t, func(s *sourceServer, w http.ResponseWriter, r *http.Request) {
			if first.CompareAndSwap(true, false) {
				// One whole piece, then nothing.
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				_, _ = w.Write(body[:4<<20])
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				return
			}
			http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(body))
		})
		f := newSourceFixture(t, cfg, nil)
		d := digest.FromBytes(body)
		id, err := taskid.ForDigest(d)
		require.NoError(t, err)
		_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: src.URL + "/blob", Digest: d})
		require.NoError(t, err)
		task := f.settle(t, id)
		require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
		require.EqualValues(t, 2, src.gets.Load())
		require.True(t, strings.HasPrefix(src.rangesSeen()[1], "bytes=4194304-"), "resumed after the stored piece: %q", src.rangesSeen())
	})
}
