package peer

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// TestRangeReaderWantsItsPiecesFirst: a range reader opened while the
// background fill has every slot taken gets its piece asked for at once,
// first, and reads it while the pieces before it are still missing; it
// ends after its last byte without waiting for the rest.
func TestRangeReaderWantsItsPiecesFirst(t *testing.T) {
	t.Parallel()
	data := randomData(t, 16*testPieceSize+7)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{cfg: Config{Concurrency: 2}})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	// The fill takes pieces 0 and 1, which never come until released.
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.assigned[0] && f.assigned[1]
	}, 5*time.Second, 5*time.Millisecond)

	off := int64(12*testPieceSize + 100)
	r := d.NewRangeReader(off, testPieceSize) // spans pieces 12 and 13
	defer r.Close()
	got := make(chan []byte, 1)
	go func() {
		b, err := io.ReadAll(r)
		require.NoError(t, err)
		got <- b
	}()
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.assigned[12] && f.assigned[13]
	}, 5*time.Second, 5*time.Millisecond, "the wanted pieces are asked for while the fill holds every slot")
	f.mu.Lock()
	require.Contains(t, f.wants, "12-13")
	for i := 2; i < 12; i++ {
		require.False(t, f.assigned[i], "no background piece %d while wanted ones are missing", i)
	}
	f.mu.Unlock()
	h.release(12)
	h.release(13)
	select {
	case b := <-got:
		require.Equal(t, data[off:off+testPieceSize], b)
	case <-time.After(5 * time.Second):
		t.Fatal("the range was not served once its pieces were verified")
	}
	require.False(t, d.Progress().Completed == int64(len(data)))
	select {
	case <-d.Done():
		t.Fatal("the download finished with pieces 0 and 1 missing")
	default:
	}
}

// TestPrefetchOff: with the background fill off only what readers want is
// fetched; the download neither completes nor stalls out, and a full
// reader's range goes on to be served.
func TestPrefetchOff(t *testing.T) {
	t.Parallel()
	data := randomData(t, 8*testPieceSize)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{cfg: Config{Prefetch: Prefetch{Off: true}, StallTimeout: 300 * time.Millisecond}})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()

	r := d.NewRangeReader(5*testPieceSize, 10)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, data[5*testPieceSize:5*testPieceSize+10], b)
	require.NoError(t, r.Close())

	time.Sleep(time.Second) // past the stall timeout: idle by choice is no stall
	select {
	case <-d.Done():
		_, err := d.Wait(t.Context())
		t.Fatalf("the download ended: %v", err)
	default:
	}
	f.mu.Lock()
	for i := range 8 {
		require.Equal(t, i == 5, f.assigned[i] || f.done[i], "piece %d", i)
	}
	f.mu.Unlock()

	// Another range later: fetched then.
	r = d.NewRangeReader(2*testPieceSize+3, 5)
	b, err = io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, data[2*testPieceSize+3:2*testPieceSize+8], b)
	require.NoError(t, r.Close())
}

func TestParsePrefetch(t *testing.T) {
	for in, want := range map[string]Prefetch{"": {}, "on": {}, "OFF": {Off: true}, "20MiB/s": {Rate: 20 << 20}, "1M": {Rate: 1 << 20}} {
		got, err := ParsePrefetch(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		back, err := ParsePrefetch(got.String())
		require.NoError(t, err)
		require.Equal(t, got, back)
	}
	_, err := ParsePrefetch("sometimes")
	require.Error(t, err)
}

func TestBucketPaces(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBucket(10, now) // 10 bytes/s, pieces of 20
	n, wait := b.pieces(now, 20)
	require.Equal(t, 0, n)
	require.Equal(t, 2*time.Second, wait)
	now = now.Add(2 * time.Second)
	n, _ = b.pieces(now, 20)
	require.Equal(t, 1, n)
	b.take(now, 20, 20)
	b.take(now, 20, 20) // into debt
	_, wait = b.pieces(now, 20)
	require.Equal(t, 4*time.Second, wait)
}

func TestPrefetchYAML(t *testing.T) {
	for in, want := range map[string]Prefetch{"prefetch: off": {Off: true}, "prefetch: on": {}, "prefetch: 8MiB/s": {Rate: 8 << 20}, "{}": {}} {
		var c Config
		require.NoError(t, yaml.Unmarshal([]byte(in), &c), in)
		require.Equal(t, want, c.Prefetch, in)
	}
	var c Config
	require.Error(t, yaml.Unmarshal([]byte("prefetch: maybe"), &c))
}

// TestParkedPollUpdatedNotCancelled: a reader that wants a piece while a
// poll is parked on the supernode updates that poll (RouteWant) instead of
// cancelling it, and the parked poll brings the wanted piece.
func TestParkedPollUpdatedNotCancelled(t *testing.T) {
	t.Parallel()
	data := randomData(t, 8*testPieceSize)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	f.order = nil // nothing for the background fill: the poll parks
	e := newTestEngine(t, f.addr, engineSetup{cfg: Config{PollWait: 20 * time.Second}})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	require.Eventually(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.polls > 0
	}, 5*time.Second, 5*time.Millisecond)

	r := d.NewRangeReader(6*testPieceSize+1, 10)
	defer r.Close()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Equal(t, data[6*testPieceSize+1:6*testPieceSize+11], b)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.GreaterOrEqual(t, f.updates, 1, "the parked poll was updated")
	require.Contains(t, f.wants, "6")
	require.Zero(t, f.cancelled, "no poll was cancelled")
}

// TestPlanPoll: the poll a download sends next, from its wants, what is in
// flight and the prefetch setting.
func TestPlanPoll(t *testing.T) {
	now := time.Unix(100, 0)
	newTask := func(cfg Config) *task {
		e := &Engine{cfg: cfg.ApplyDefaults()}
		tk := &task{e: e, verified: &piece.Set{}, wants: map[*wantRange]struct{}{}, wantCh: make(chan struct{}, 1)}
		tk.info = schedapi.TaskInfo{Size: 100 * testPieceSize, PieceSize: testPieceSize, PieceCount: 100}
		return tk
	}
	inflight := func(ps ...int) map[int]bool {
		m := map[int]bool{}
		for _, i := range ps {
			m[i] = true
		}
		return m
	}

	// No wants, prefetch on: the background fill, no cap.
	tk := newTask(Config{Concurrency: 4})
	p := tk.planPoll(inflight(1), nil, now)
	require.Equal(t, 3, p.limit)
	require.Equal(t, schedapi.NoWant, p.want)

	// A reader wants pieces 10-11 while the fill holds every slot: they
	// are asked for on top of it, and no background piece.
	unwant := tk.want(10*testPieceSize, 2*testPieceSize)
	p = tk.planPoll(inflight(1, 2, 3, 4), nil, now)
	require.Equal(t, schedapi.Want{Pieces: []int{10, 11}, Background: 0}, p.want)
	require.Equal(t, 2, p.limit)
	// Wanted pieces in flight: nothing more until they are in.
	p = tk.planPoll(inflight(10, 11), nil, now)
	require.Zero(t, p.limit)
	require.False(t, p.idle)
	unwant()
	p = tk.planPoll(inflight(), nil, now)
	require.Equal(t, 4, p.limit)

	// Prefetch off: only what is wanted; idle otherwise.
	tk = newTask(Config{Concurrency: 4, Prefetch: Prefetch{Off: true}})
	p = tk.planPoll(inflight(), nil, now)
	require.Zero(t, p.limit)
	require.True(t, p.idle)
	require.Zero(t, p.after)

	// Prefetch at a rate of one piece a second: one piece now, then a wait.
	tk = newTask(Config{Concurrency: 4, Prefetch: Prefetch{Rate: testPieceSize}})
	bk := newBucket(testPieceSize, now.Add(-time.Second))
	p = tk.planPoll(inflight(), bk, now)
	require.Equal(t, 1, p.limit)
	bk.take(now, testPieceSize, testPieceSize)
	p = tk.planPoll(inflight(), bk, now)
	require.Zero(t, p.limit)
	require.True(t, p.idle)
	require.Equal(t, time.Second, p.after)
}
