package cdn

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
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

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
	"github.com/damselfly/damselfly/pkg/taskid"
)

const mib = 1 << 20

// The demand tests move tens of MiB each through throttled connections:
// they do not run in parallel, so that they neither starve nor are starved
// by the timing-sensitive tests of the package.

// rangeOrigin serves blobs by path with http.ServeContent (ranges, If-Range
// against a strong ETag), each response throttled to rate bytes/s. It
// counts the body bytes it sends and watches the bounded range requests
// (Range: bytes=a-b) in flight, per path and in all.
type rangeOrigin struct {
	srv   *httptest.Server
	blobs map[string][]byte
	rate  int64
	// ignoreRanges answers every request with the whole blob (200);
	// failBounded answers bounded range requests with 500.
	ignoreRanges bool
	failBounded  bool
	// cutAt, when set, drops the connection of a bounded range request
	// holding that offset when the response reaches it.
	cutAt int64
	// noLength sends every blob whole, chunked, without a size.
	noLength bool

	sent atomic.Int64

	mu          sync.Mutex
	ranges      []string
	inflight    map[string]int
	maxInflight map[string]int
	total       int
	maxTotal    int
}

func newRangeOrigin(t *testing.T, o *rangeOrigin) *rangeOrigin {
	t.Helper()
	o.inflight, o.maxInflight = make(map[string]int), make(map[string]int)
	o.srv = httptest.NewServer(http.HandlerFunc(o.serve))
	t.Cleanup(o.srv.Close)
	return o
}

func bounded(rg string) bool {
	return strings.HasPrefix(rg, "bytes=") && !strings.HasSuffix(rg, "-")
}

func (o *rangeOrigin) serve(w http.ResponseWriter, r *http.Request) {
	b, ok := o.blobs[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	rg := r.Header.Get("Range")
	o.mu.Lock()
	o.ranges = append(o.ranges, rg)
	o.mu.Unlock()
	tw := &throttled{w: w, rate: o.rate, sent: &o.sent, start: time.Now(), cut: -1}
	if o.noLength {
		_, _ = tw.Write(b)
		return
	}
	if bounded(rg) {
		if got, err := httpx.ParseRange(rg, int64(len(b))); err == nil && o.cutAt > 0 && got.Start <= o.cutAt && o.cutAt <= got.End() {
			tw.cut = o.cutAt - got.Start
		}
		if o.failBounded {
			http.Error(w, "no", http.StatusInternalServerError)
			return
		}
		o.mu.Lock()
		o.inflight[r.URL.Path]++
		o.total++
		o.maxInflight[r.URL.Path] = max(o.maxInflight[r.URL.Path], o.inflight[r.URL.Path])
		o.maxTotal = max(o.maxTotal, o.total)
		o.mu.Unlock()
		defer func() {
			o.mu.Lock()
			o.inflight[r.URL.Path]--
			o.total--
			o.mu.Unlock()
		}()
	}
	if o.ignoreRanges {
		r.Header.Del("Range")
		r.Header.Del("If-Range")
	}
	w.Header().Set("ETag", `"v1"`)
	http.ServeContent(tw, r, "", time.Time{}, bytes.NewReader(b))
}

// rangesSeen returns the Range headers of the requests so far.
func (o *rangeOrigin) rangesSeen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.ranges...)
}

func (o *rangeOrigin) boundedSeen() []string {
	var b []string
	for _, rg := range o.rangesSeen() {
		if bounded(rg) {
			b = append(b, rg)
		}
	}
	return b
}

// throttled is a response writer sending at most rate bytes/s.
type throttled struct {
	w     http.ResponseWriter
	rate  int64
	sent  *atomic.Int64
	start time.Time
	n     int64
	// cut, when not negative, drops the connection after that many bytes.
	cut int64
}

func (t *throttled) Header() http.Header  { return t.w.Header() }
func (t *throttled) WriteHeader(code int) { t.w.WriteHeader(code) }

func (t *throttled) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), 32<<10)
		if t.cut >= 0 && t.n+int64(k) > t.cut {
			k = int(t.cut - t.n)
			if k == 0 {
				_ = http.NewResponseController(t.w).Flush()
				panic(http.ErrAbortHandler)
			}
		}
		n, err := t.w.Write(p[:k])
		written += n
		t.n += int64(n)
		t.sent.Add(int64(n))
		if err != nil {
			return written, err
		}
		p = p[k:]
		if t.rate > 0 {
			if d := time.Duration(float64(t.n) / float64(t.rate) * float64(time.Second)); d > time.Since(t.start) {
				time.Sleep(d - time.Since(t.start))
			}
		}
	}
	return written, nil
}

// gatedSched is the fake scheduler whose PublishPiece waits while the gate
// is closed (a scheduler busy elsewhere).
type gatedSched struct {
	*fakeSched
	mu   sync.Mutex
	gate chan struct{} // nil: open
}

func (g *gatedSched) PublishPiece(ctx context.Context, id taskid.ID, n int, d digest.Digest) error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.fakeSched.PublishPiece(ctx, id, n, d)
}

type demandFixture struct {
	cdn   *CDN
	sched *fakeSched
	gated *gatedSched
	reg   *prometheus.Registry
	o     *rangeOrigin
}

func newDemandFixture(t *testing.T, o *rangeOrigin) *demandFixture {
	t.Helper()
	root := t.TempDir()
	f := &demandFixture{sched: newFakeSched(), reg: prometheus.NewRegistry(), o: o}
	f.gated = &gatedSched{fakeSched: f.sched}
	src := httpsource.New(httpsource.WithHTTPClient(o.srv.Client()), httpsource.WithRetries(1),
		httpsource.WithBackoff(time.Millisecond, 5*time.Millisecond))
	c, err := New(Config{Dir: filepath.Join(root, "cdn")}, newLocal(t, filepath.Join(root, "content")), src, f.gated, WithMetrics(f.reg))
	require.NoError(t, err)
	f.cdn = c
	return f
}

// start adds a blob at path to the origin's (before the server is used) and
// ensures its digest task.
func (f *demandFixture) start(t *testing.T, path string) taskid.ID {
	t.Helper()
	d := digest.FromBytes(f.o.blobs[path])
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	_, err = f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: f.o.srv.URL + path})
	require.NoError(t, err)
	return id
}

// done waits for the task to succeed and checks what was committed.
func (f *demandFixture) done(t *testing.T, id taskid.ID, body []byte) {
	t.Helper()
	task, ok := f.sched.waitFor(id, 60*time.Second, settled)
	require.True(t, ok, "task did not settle: %+v", task.info)
	require.Equal(t, schedapi.TaskSucceeded, task.info.State, task.info.Error)
	require.Equal(t, digest.FromBytes(body).String(), task.info.ContentDigest)
	requirePieces(t, task, body)
	require.Eventually(t, func() bool {
		f.cdn.mu.Lock()
		defer f.cdn.mu.Unlock()
		_, running := f.cdn.fetches[id]
		return !running
	}, wait, time.Millisecond)
	meta, err := f.cdn.metaFor(t.Context(), digest.FromBytes(body))
	require.NoError(t, err)
	require.Len(t, meta.Pieces, len(task.pieces))
	for n, pd := range meta.Pieces {
		require.Equal(t, task.pieces[n], pd, "piece %d metadata", n)
	}
}

// copies is how many copies of size bytes the origin sent.
func (f *demandFixture) copies(size int) float64 {
	return float64(f.o.sent.Load()) / float64(size)
}

func demandFetches(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "damselfly_cdn_demand_fetches_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A piece demanded far ahead of the stream is fetched with one range
// request and published long before the stream gets there; the stream
// skips it, and the origin sends the blob about once.
func TestDemandPublishesPieceAhead(t *testing.T) {
	const size, rate = 64 * mib, 20 * mib
	body := blob(120, size)
	o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: rate})
	f := newDemandFixture(t, o)
	id := f.start(t, "/blob")
	ps := piece.SizeFor(size)
	const want = 12 // at 48 MiB: three quarters in
	began := time.Now()
	f.cdn.Demand(id, []int{want})
	task, ok := f.sched.waitFor(id, 60*time.Second, func(t fakeTask) bool { _, ok := t.pieces[want]; return ok })
	require.True(t, ok, "piece %d not published", want)
	took := time.Since(began)
	before := 0
	for n := range task.pieces {
		if n < want {
			before++
		}
	}
	sequential := time.Duration(float64(want+1) * float64(ps) / rate * float64(time.Second))
	t.Logf("piece %d published after %s with %d pieces before it; the stream alone needs about %s", want, took, before, sequential)
	require.Less(t, before, want/2, "the demanded piece came long before the stream's")

	f.done(t, id, body)
	t.Logf("origin sent %.3f copies; ranges %q", f.copies(size), o.rangesSeen())
	require.LessOrEqual(t, f.copies(size), 1.05)
	off := int64(want) * ps
	require.Contains(t, o.boundedSeen(), "bytes="+itoa(off)+"-"+itoa(off+ps-1), "one bounded request for the piece")
	require.Len(t, o.boundedSeen(), 1)
	for _, rg := range o.rangesSeen() {
		if from, ok := strings.CutSuffix(strings.TrimPrefix(rg, "bytes="), "-"); ok && rg != "" {
			at, err := strconv.ParseInt(from, 10, 64)
			require.NoError(t, err)
			require.False(t, at >= off && at < off+ps, "the stream skips the demanded piece: %q", rg)
		}
	}
	require.InDelta(t, 1, demandFetches(t, f.reg, "succeeded"), 0)
	require.GreaterOrEqual(t, f.cdn.SourceBytes(id), int64(size))
	require.LessOrEqual(t, f.cdn.SourceBytes(id), int64(size)*105/100)
	require.GreaterOrEqual(t, metricValue(t, f.reg, "damselfly_cdn_demand_bytes_total"), float64(ps))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// Four readers each wanting a quarter of a cold blob at once: the blob
// commits with the right digest and the origin sends it about once.
func TestDemandFourQuarters(t *testing.T) {
	// 10 MiB/s per connection: four of them at once are still less than
	// the race detector lets two cores store and hash. A CDN that cannot
	// keep up lets the stream's socket fill with bytes it then skips when
	// it reaches a run a demand request fetches: the bytes in flight are
	// the only waste, 5% of 64 MiB leaves room for about three pieces.
	const size, rate = 64 * mib, 10 * mib
	body := blob(121, size)
	o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: rate})
	f := newDemandFixture(t, o)
	id := f.start(t, "/blob")
	count := piece.Count(size, piece.SizeFor(size))
	q := count / 4
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ps []int
			for n := i * q; n < (i+1)*q; n++ {
				ps = append(ps, n)
			}
			// Readers ask again and again while they wait.
			for range 3 {
				f.cdn.Demand(id, ps)
			}
		}()
	}
	wg.Wait()
	f.done(t, id, body)
	t.Logf("origin sent %.3f copies; ranges %q", f.copies(size), o.rangesSeen())
	require.LessOrEqual(t, f.copies(size), 1.05)
	require.LessOrEqual(t, f.cdn.SourceBytes(id), int64(size)*105/100)
}

// A source that ignores ranges switches on-demand off for the fetch (once);
// the stream fetches everything.
func TestDemandSourceIgnoresRanges(t *testing.T) {
	const size = 32 * mib
	body := blob(122, size)
	o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: 40 * mib, ignoreRanges: true})
	f := newDemandFixture(t, o)
	id := f.start(t, "/blob")
	f.cdn.Demand(id, []int{6})
	require.Eventually(t, func() bool { return demandFetches(t, f.reg, "unsupported") == 1 }, wait, time.Millisecond)
	f.cdn.Demand(id, []int{7})
	f.cdn.Demand(id, []int{5})
	f.done(t, id, body)
	require.Len(t, o.boundedSeen(), 1, "on-demand is off after the first: %q", o.rangesSeen())
	require.InDelta(t, 1, demandFetches(t, f.reg, "unsupported"), 0)
	require.LessOrEqual(t, f.copies(size), 1.05)
}

// Demand requests that fail leave their pieces to the stream: nothing is
// lost, nothing is fetched twice.
func TestDemandRequestsFail(t *testing.T) {
	const size = 32 * mib
	body := blob(123, size)
	o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: 20 * mib, failBounded: true})
	f := newDemandFixture(t, o)
	id := f.start(t, "/blob")
	for _, n := range []int{7, 5, 3, 6} {
		f.cdn.Demand(id, []int{n})
	}
	f.done(t, id, body)
	require.GreaterOrEqual(t, demandFetches(t, f.reg, "failed"), float64(1))
	require.Zero(t, demandFetches(t, f.reg, "succeeded"))
	require.LessOrEqual(t, f.copies(size), 1.05)
	require.LessOrEqual(t, len(o.boundedSeen()), maxDemandFailures*2, "on-demand is off after repeated failures (each tried twice)")
}

// A demand for a task that is not being fetched, of pieces out of range or
// with no pieces is ignored.
func TestDemandIgnored(t *testing.T) {
	const size = 8 * mib
	body := blob(124, size)
	o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}})
	f := newDemandFixture(t, o)
	f.cdn.Demand("sha256:0000000000000000000000000000000000000000000000000000000000000000", []int{0})
	id := f.start(t, "/blob")
	f.cdn.Demand(id, []int{-1, 2, 1 << 20})
	f.cdn.Demand(id, nil)
	f.done(t, id, body)
	f.cdn.Demand(id, []int{1})
	require.Empty(t, o.boundedSeen())
	f.cdn.dmu.Lock()
	defer f.cdn.dmu.Unlock()
	require.Empty(t, f.cdn.demandable)
	require.Empty(t, f.cdn.demandQueue)
	require.Zero(t, f.cdn.demandRunning)
}

// At most maxDemandPerTask demand requests run per task and maxDemandTotal
// in all; Demand returns at once even while the scheduler does not answer.
func TestDemandBoundsAndNeverBlocks(t *testing.T) {
	const tasks, size = 5, 32 * mib
	bodies := make(map[string][]byte)
	for i := range tasks {
		bodies["/"+itoa(int64(i))] = blob(uint64(130+i), size)
	}
	o := newRangeOrigin(t, &rangeOrigin{blobs: bodies, rate: 20 * mib})
	f := newDemandFixture(t, o)
	gate := make(chan struct{})
	f.gated.mu.Lock()
	f.gated.gate = gate
	f.gated.mu.Unlock()
	ids := make([]taskid.ID, tasks)
	for i := range tasks {
		ids[i] = f.start(t, "/"+itoa(int64(i)))
	}
	// Two runs per task past the pieces the stream holds (it reads two
	// ahead of the publication the scheduler holds), the scheduler holding
	// every publication.
	returned := make(chan time.Duration, 1)
	go func() {
		began := time.Now()
		for range 100 {
			for _, id := range ids {
				f.cdn.Demand(id, []int{7, 5})
				f.cdn.Demand(id, []int{5})
			}
		}
		returned <- time.Since(began)
	}()
	select {
	case d := <-returned:
		t.Logf("1000 demands took %s", d)
	case <-time.After(wait):
		t.Fatal("Demand blocked while the scheduler did")
	}
	// Demand requests start and block on the scheduler.
	require.Eventually(t, func() bool {
		f.cdn.dmu.Lock()
		defer f.cdn.dmu.Unlock()
		return f.cdn.demandRunning == maxDemandTotal
	}, wait, time.Millisecond)
	close(gate)
	for i, id := range ids {
		f.done(t, id, bodies["/"+itoa(int64(i))])
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	t.Logf("bounded requests in flight at most: %d in all, %v per blob", o.maxTotal, o.maxInflight)
	require.LessOrEqual(t, o.maxTotal, maxDemandTotal)
	for path, n := range o.maxInflight {
		require.LessOrEqual(t, n, maxDemandPerTask, path)
	}
	// The held scheduler let the streams' sockets fill: no bound on
	// copies here.
	t.Logf("origin sent %.3f copies", float64(o.sent.Load())/float64(tasks*size))
}

// A demand request that breaks midway keeps the pieces it stored and
// releases the others to the stream.
func TestDemandRequestBreaks(t *testing.T) {
	const size = 64 * mib
	body := blob(125, size)
	ps := piece.SizeFor(size)
	// Halfway through piece 11, every time.
	o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: 20 * mib, cutAt: 11*ps + ps/2})
	f := newDemandFixture(t, o)
	id := f.start(t, "/blob")
	f.cdn.Demand(id, []int{10, 11, 12})
	task, ok := f.sched.waitFor(id, 60*time.Second, func(t fakeTask) bool { _, ok := t.pieces[10]; return ok })
	require.True(t, ok)
	require.Less(t, len(task.pieces), 8, "piece 10 came from the demand request")
	f.done(t, id, body)
	require.Eventually(t, func() bool { return demandFetches(t, f.reg, "failed") == 1 }, wait, time.Millisecond)
	require.Zero(t, demandFetches(t, f.reg, "succeeded"))
	t.Logf("origin sent %.3f copies; ranges %q", f.copies(size), o.rangesSeen())
	require.LessOrEqual(t, f.copies(size), 1.05)
}

// Content of unknown size is not fetched on demand.
func TestDemandUnknownSize(t *testing.T) {
	const size = 16 * mib
	body := blob(126, size)
	o := newRangeOrigin(t, &rangeOrigin{blobs: map[string][]byte{"/blob": body}, rate: 20 * mib, noLength: true})
	f := newDemandFixture(t, o)
	id := f.start(t, "/blob")
	f.cdn.Demand(id, []int{3})
	f.done(t, id, body)
	require.Empty(t, o.boundedSeen())
}
