package peer

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConfig(t *testing.T) {
	t.Parallel()
	def := Config{}.ApplyDefaults()
	require.Equal(t, Config{Concurrency: 8, PollWait: 10 * time.Second, PieceTimeout: time.Minute,
		PieceMinRate: 1 << 20, PieceGrace: 3 * time.Second,
		StallTimeout: time.Minute, HeartbeatInterval: 10 * time.Second}, def)
	require.Equal(t, 7*time.Second, def.pieceDeadline(4<<20), "4 MiB at 1 MiB/s plus 3s")
	require.Equal(t, time.Minute, def.pieceDeadline(1<<30), "at most pieceTimeout")
	require.NoError(t, def.Validate())
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"zero concurrency", func(c *Config) { c.Concurrency = -1 }},
		{"too much concurrency", func(c *Config) { c.Concurrency = schedapi.MaxAssignments + 1 }},
		{"poll wait over max", func(c *Config) { c.PollWait = schedapi.MaxWait + time.Second }},
		{"negative piece timeout", func(c *Config) { c.PieceTimeout = -time.Second }},
		{"negative stall timeout", func(c *Config) { c.StallTimeout = -1 }},
		{"negative piece rate", func(c *Config) { c.PieceMinRate = -1 }},
		{"negative piece grace", func(c *Config) { c.PieceGrace = -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := def
			tt.mod(&c)
			require.Error(t, c.Validate())
		})
	}
}

func TestNewRejectsBadSelf(t *testing.T) {
	t.Parallel()
	sc, err := schedclient.New([]string{"127.0.0.1:1"}, schedclient.WithClusterKeys(testKeys))
	require.NoError(t, err)
	for _, self := range []schedapi.Peer{{ID: "", Addr: "127.0.0.1:1"}, {ID: "a/b", Addr: "127.0.0.1:1"}, {ID: "a", Addr: ":0"}, {ID: "a", Addr: "x"}} {
		_, err := New(Config{}, contenttest.NewMemory(), sc, self)
		require.Error(t, err, "%+v", self)
	}
}

// Pieces handed out in reverse order, from two peers and the CDN, make the
// right file; every piece is reported OK and the task is left on Close.
func TestDownloadOutOfOrder(t *testing.T) {
	t.Parallel()
	data := randomData(t, 10*testPieceSize+1234)
	a := newHolder(t, "peer-a", data, good)
	b := newHolder(t, "peer-b", data, good)
	cdn := newHolder(t, "cdn", data, good)
	f := newFakeSched(t, data, func(i, _ int) (schedapi.Peer, bool) {
		switch i % 3 {
		case 0:
			return a.peer, false
		case 1:
			return b.peer, false
		}
		return cdn.peer, true
	})
	slices.Reverse(f.order)
	store, err := local.New(t.TempDir())
	require.NoError(t, err)
	e := newTestEngine(t, f.addr, engineSetup{store: store, cfg: Config{Concurrency: 3}})

	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	require.Equal(t, f.taskID, d.TaskID())
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, digest.FromBytes(data), res.Digest)
	require.Equal(t, int64(len(data)), res.Size)
	require.False(t, res.FromSource)
	require.Equal(t, data, readBlob(t, store, res.Digest))

	p := d.Progress()
	require.Equal(t, int64(len(data)), p.Size)
	require.Equal(t, int64(len(data)), p.Completed)
	require.Equal(t, p.Completed, p.FromPeers+p.FromCDN)
	require.Equal(t, int64(3*testPieceSize), p.FromCDN) // pieces 2, 5, 8
	require.Zero(t, p.FromSource)

	reports, registers, leaves, _ := f.snapshot()
	require.Len(t, reports, 11, fmtPieces(reports))
	for _, r := range reports {
		require.True(t, r.OK, fmtPieces(reports))
	}
	require.Len(t, registers, 1)
	require.Equal(t, "self", registers[0].Peer.ID)
	require.Equal(t, int64(11), a.requests.Load()+b.requests.Load()+cdn.requests.Load())

	// While the handle is open the engine serves the blob.
	ut, err := e.Open(t.Context(), f.taskID)
	require.NoError(t, err)
	require.True(t, ut.Verified(0, int64(len(data))))
	buf := make([]byte, 100)
	_, err = ut.ReadAt(buf, 5000)
	require.NoError(t, err)
	require.Equal(t, data[5000:5100], buf)
	require.NoError(t, ut.Close())

	require.NoError(t, d.Close())
	_, _, leaves, _ = f.snapshot()
	require.Equal(t, 1, leaves)
	_, err = e.Open(t.Context(), f.taskID)
	require.ErrorIs(t, err, upload.ErrNotFound)
	// The content stays in the store.
	_, err = store.Info(t.Context(), res.Digest)
	require.NoError(t, err)
}

// A holder that misbehaves is reported with the reason, the piece goes to
// another holder, and the download is right.
func TestBadHolder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mode   holderMode
		dead   bool
		reason string
		kind   schedapi.FailureReason
	}{
		{"corrupt bytes", corrupt, false, "digest mismatch", schedapi.ReasonCorrupt},
		{"short body", short, false, "short body", schedapi.ReasonCorrupt},
		{"cut body", cut, false, "body cut short", schedapi.ReasonTransfer},
		{"long body", long, false, "long body", schedapi.ReasonCorrupt},
		{"long chunked body", longChunked, false, "long body", schedapi.ReasonCorrupt},
		{"not found", notFound, false, "status 404", schedapi.ReasonMissing},
		{"stalled", stall, false, "timeout", schedapi.ReasonTransfer},
		// A slow loris: every byte comes, far below pieceMinRate; it fails
		// at its rate deadline, not at pieceTimeout (30s here).
		{"trickling", trickle, false, "too slow", schedapi.ReasonTransfer},
		{"dead", good, true, "connection refused", schedapi.ReasonTransfer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data := randomData(t, 3*testPieceSize+77)
			goodH := newHolder(t, "good", data, good)
			var bad schedapi.Peer
			if tt.dead {
				bad = deadPeer(t, "bad")
			} else {
				bad = newHolder(t, "bad", data, tt.mode).peer
			}
			f := newFakeSched(t, data, func(_, attempt int) (schedapi.Peer, bool) {
				if attempt == 0 {
					return bad, false
				}
				return goodH.peer, false
			})
			// Only the stalled holder needs the timeout to pass: the others
			// get one that a loaded machine cannot turn into a timeout.
			pieceTimeout := 30 * time.Second
			if tt.mode == stall {
				pieceTimeout = 300 * time.Millisecond
			}
			cfg := Config{PieceTimeout: pieceTimeout}
			if tt.mode == trickle {
				// 64 KiB at 256 KiB/s: 250ms plus 100ms. The good holder
				// is far faster; the trickle (100 B/s) far slower.
				cfg.PieceMinRate, cfg.PieceGrace = 256<<10, 100*time.Millisecond
			}
			e := newTestEngine(t, f.addr, engineSetup{cfg: cfg})
			d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
			require.NoError(t, err)
			defer d.Close()
			res, err := d.Wait(t.Context())
			require.NoError(t, err)
			require.Equal(t, digest.FromBytes(data), res.Digest)
			require.Equal(t, data, readBlob(t, e.store, res.Digest))

			reports, _, _, _ := f.snapshot()
			var failed, ok int
			for _, r := range reports {
				if r.OK {
					ok++
					require.Equal(t, "good", r.From)
					continue
				}
				failed++
				require.Equal(t, "bad", r.From)
				require.Equal(t, tt.reason, r.Error)
				require.Equal(t, tt.kind, r.Reason)
			}
			require.Equal(t, 4, failed, fmtPieces(reports))
			require.Equal(t, 4, ok, fmtPieces(reports))
			require.Equal(t, "self", goodH.requester.Load(), "a piece request names its requester")
		})
	}
}

// The in-order reader gives nothing before the first piece is verified,
// then everything in order, and EOF after the commit.
func TestNewReaderStreamsInOrder(t *testing.T) {
	t.Parallel()
	data := randomData(t, 4*testPieceSize+10)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()

	r := d.NewReader(100)
	defer r.Close()
	got := make(chan []byte, 1)
	errc := make(chan error, 1)
	go func() {
		b, err := io.ReadAll(r)
		got <- b
		errc <- err
	}()

	// Later pieces first: the reader must wait for piece 0.
	h.release(4)
	h.release(3)
	require.Eventually(t, func() bool { return d.Progress().Completed == testPieceSize+10 }, 5*time.Second, 5*time.Millisecond)
	ut, err := e.Open(t.Context(), f.taskID)
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), ut.Size())
	require.True(t, ut.Verified(3*testPieceSize, testPieceSize+10))
	require.False(t, ut.Verified(0, 1))
	require.False(t, ut.Verified(2*testPieceSize+10, testPieceSize), "spans an unverified piece")
	require.False(t, ut.Verified(3*testPieceSize, testPieceSize+11), "past the end")
	buf := make([]byte, 10)
	_, err = ut.ReadAt(buf, 0)
	require.Error(t, err, "unverified bytes are never served")
	_, err = ut.ReadAt(buf, 3*testPieceSize)
	require.NoError(t, err)
	require.Equal(t, data[3*testPieceSize:3*testPieceSize+10], buf)

	select {
	case b := <-got:
		t.Fatalf("reader returned %d bytes before piece 0 was verified", len(b))
	case <-time.After(100 * time.Millisecond):
	}
	h.release(0)
	h.release(1)
	h.release(2)
	require.Equal(t, data[100:], <-got)
	require.NoError(t, <-errc, "ReadAll ends on io.EOF")

	// A reader made after the end reads the committed blob.
	r2 := d.NewReader(int64(len(data)) - 5)
	b, err := io.ReadAll(r2)
	require.NoError(t, err)
	require.Equal(t, data[len(data)-5:], b)
	require.NoError(t, r2.Close())
}

// When the whole-content digest does not verify, the reader returns the
// error instead of a clean EOF, even though every piece was served.
func TestNewReaderFailsOnFinalDigest(t *testing.T) {
	t.Parallel()
	data := randomData(t, 3*testPieceSize)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	f.contentDigest = digest.FromString("something else").String()
	e := newTestEngine(t, f.addr, engineSetup{})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file", BackToSource: true})
	require.NoError(t, err)
	defer d.Close()
	r := d.NewReader(0)
	defer r.Close()
	b, err := io.ReadAll(r)
	require.ErrorIs(t, err, ErrDigestMismatch)
	require.ErrorIs(t, err, content.ErrDigestMismatch)
	require.Equal(t, data[:len(b)], b, "what was read was verified piece by piece")
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrDigestMismatch)
	_, err = e.store.Info(t.Context(), digest.FromBytes(data))
	require.ErrorIs(t, err, content.ErrNotFound, "nothing is committed")
}

// A requested digest that the supernode contradicts fails before anything
// is committed.
func TestRequestedDigestDisagrees(t *testing.T) {
	t.Parallel()
	data := randomData(t, testPieceSize)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{})
	want := digest.FromString("other")
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file", Digest: want})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrDigestMismatch)
	require.ErrorContains(t, err, "want "+want.String())
}

// The content digest arrives only when the CDN finishes: the engine waits
// for it through its polls.
func TestWaitsForContentDigest(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize+1)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	f.late = true
	e := newTestEngine(t, f.addr, engineSetup{})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, digest.FromBytes(data), res.Digest)
}

func TestBackToSource(t *testing.T) {
	t.Parallel()
	data := randomData(t, 3*testPieceSize+5)
	tests := []struct {
		name   string
		sched  func(t *testing.T) string
		reason string
	}{
		{"supernode unreachable", func(t *testing.T) string { return deadPeer(t, "x").Addr }, "supernode unreachable"},
		{"task failed", func(t *testing.T) string {
			f := newFakeSched(t, data, nil)
			f.failTask = "origin said 500"
			return f.addr
		}, "task failed on the supernode: origin said 500"},
		{"all peers dead", func(t *testing.T) string {
			dead := deadPeer(t, "dead")
			f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return dead, false })
			return f.addr
		}, "no piece verified for 300ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := &fakeSource{data: data, headers: make(chan http.Header, 1)}
			e := newTestEngine(t, tt.sched(t), engineSetup{
				cfg:  Config{StallTimeout: 300 * time.Millisecond},
				opts: []Option{WithSource(src)},
			})
			hdr := http.Header{"Authorization": {"Bearer x"}}
			d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file", Header: hdr,
				Digest: digest.FromBytes(data), BackToSource: true})
			require.NoError(t, err)
			defer d.Close()
			r := d.NewReader(0)
			defer r.Close()
			b, err := io.ReadAll(r)
			require.NoError(t, err)
			require.Equal(t, data, b)
			res, err := d.Wait(t.Context())
			require.NoError(t, err)
			require.True(t, res.FromSource)
			require.Equal(t, digest.FromBytes(data), res.Digest)
			require.Equal(t, hdr, <-src.headers, "the source gets the request's header")
			ev, ok := <-d.Events()
			require.True(t, ok)
			require.Equal(t, EventFallback, ev.Kind)
			require.Contains(t, ev.Reason, tt.reason)
			require.ErrorIs(t, ev.Err, ErrP2PFailed)
			require.Contains(t, ev.String(), "falling back to source: ")
			_, ok = <-d.Events()
			require.False(t, ok, "events end with the download")
			require.Equal(t, int64(len(data)), d.Progress().FromSource)
			require.Equal(t, data, readBlob(t, e.store, res.Digest))
		})
	}
}

func TestBackToSourceDigestMismatch(t *testing.T) {
	t.Parallel()
	data := randomData(t, 1000)
	src := &fakeSource{data: data}
	e := newTestEngine(t, deadPeer(t, "x").Addr, engineSetup{opts: []Option{WithSource(src)}})
	want := digest.FromString("not it")
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file", Digest: want, BackToSource: true})
	require.NoError(t, err)
	defer d.Close()
	r := d.NewReader(0)
	defer r.Close()
	_, err = io.ReadAll(r)
	require.ErrorIs(t, err, ErrDigestMismatch)
	require.EqualError(t, err, "digest mismatch: want "+want.String()+", got "+digest.FromBytes(data).String())
	_, err = e.store.Info(t.Context(), digest.FromBytes(data))
	require.ErrorIs(t, err, content.ErrNotFound)
}

func TestNoBackToSource(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	tests := []struct {
		name  string
		sched func(t *testing.T) string
		is    error
		msg   string
	}{
		{"supernode unreachable", func(t *testing.T) string { return deadPeer(t, "x").Addr }, schedclient.ErrUnreachable, "supernode unreachable"},
		{"all peers dead", func(t *testing.T) string {
			dead := deadPeer(t, "dead")
			return newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return dead, false }).addr
		}, ErrP2PFailed, "no piece verified for 200ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := &fakeSource{data: data}
			e := newTestEngine(t, tt.sched(t), engineSetup{
				cfg:  Config{StallTimeout: 200 * time.Millisecond},
				opts: []Option{WithSource(src)},
			})
			d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
			require.NoError(t, err)
			defer d.Close()
			_, err = d.Wait(t.Context())
			require.ErrorIs(t, err, ErrP2PFailed)
			require.ErrorIs(t, err, tt.is)
			require.ErrorContains(t, err, tt.msg)
			require.Zero(t, src.fetches.Load())
			r := d.NewReader(0)
			_, err = r.Read(make([]byte, 10))
			require.ErrorIs(t, err, ErrP2PFailed)
			require.NoError(t, r.Close())
		})
	}
}

// Two Downloads of one task share one transfer; the task is left only when
// both are closed.
func TestSharedDownload(t *testing.T) {
	t.Parallel()
	data := randomData(t, 5*testPieceSize)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{})
	d1, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	d2, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	for i := range 5 {
		h.release(i)
	}
	r1, err := d1.Wait(t.Context())
	require.NoError(t, err)
	r2, err := d2.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, r1, r2)
	require.Equal(t, int64(5), h.requests.Load(), "one fetch per piece")

	require.NoError(t, d1.Close())
	_, _, leaves, _ := f.snapshot()
	require.Zero(t, leaves)
	_, err = e.Open(t.Context(), f.taskID)
	require.NoError(t, err, "still served while a handle is open")
	require.NoError(t, d2.Close())
	require.NoError(t, d2.Close(), "Close twice is fine")
	_, _, leaves, _ = f.snapshot()
	require.Equal(t, 1, leaves)

	// A later download of the same content completes from the store.
	d3, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d3.Close()
	r3, err := d3.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, r1.Digest, r3.Digest)
	require.Equal(t, int64(5), h.requests.Load())
}

// Content already committed under the requested digest completes at once
// and is offered to the supernode as a seed.
func TestCommittedContentCompletesAtOnce(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	store := contenttest.NewMemory()
	w, err := store.Writer(t.Context(), "seed")
	require.NoError(t, err)
	_, err = w.Write(data)
	require.NoError(t, err)
	require.NoError(t, w.Commit(t.Context(), int64(len(data)), digest.FromBytes(data)))
	require.NoError(t, w.Close())

	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { panic("no piece may be assigned") })
	f.taskID = taskid.ID(digest.FromBytes(data).String())
	e := newTestEngine(t, f.addr, engineSetup{store: store})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file", Digest: digest.FromBytes(data)})
	require.NoError(t, err)
	defer d.Close()
	select {
	case <-d.Done():
	default:
		t.Fatal("download of committed content must be done at once")
	}
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), res.Size)
	_, registers, _, polls := f.snapshot()
	require.Zero(t, polls)
	require.Len(t, registers, 1)
	// The supernode cuts content by the shared size policy.
	require.Equal(t, piece.SizeFor(int64(len(data))), registers[0].PieceSize)
	require.True(t, registers[0].Have.HasAll(piece.Count(int64(len(data)), registers[0].PieceSize)))
	b, err := io.ReadAll(d.NewReader(0))
	require.NoError(t, err)
	require.Equal(t, data, b)
}

// A supernode that forgot the peer gets a registration with the pieces held.
func TestRegistersAgainWhenForgotten(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	f.forget.Store(true)
	e := newTestEngine(t, f.addr, engineSetup{})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.NoError(t, err)
	_, registers, _, _ := f.snapshot()
	require.Len(t, registers, 2)
	require.Equal(t, int64(testPieceSize), registers[1].PieceSize)
}

// Closing the only handle mid-download stops it, leaves the task and drops
// the ingest.
func TestCloseMidDownload(t *testing.T) {
	t.Parallel()
	data := randomData(t, 3*testPieceSize)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	store := contenttest.NewMemory()
	e := newTestEngine(t, f.addr, engineSetup{store: store})
	ctx, cancel := context.WithCancel(t.Context())
	d, err := e.Download(ctx, Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	h.release(0)
	require.Eventually(t, func() bool { return d.Progress().Completed == testPieceSize }, 5*time.Second, 5*time.Millisecond)
	r := d.NewReader(testPieceSize)
	readErr := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 10))
		readErr <- err
	}()
	cancel() // ends the Download's context: same as Close
	require.ErrorIs(t, <-readErr, ErrClosed)
	require.NoError(t, d.Close())
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrClosed)
	_, _, leaves, _ := f.snapshot()
	require.Equal(t, 1, leaves)
	st, err := store.ListStatuses(t.Context())
	require.NoError(t, err)
	require.Empty(t, st)
	require.NoError(t, r.Close())
}

// Run heartbeats seeded tasks and registers again those the supernode no
// longer knows.
func TestRunHeartbeats(t *testing.T) {
	t.Parallel()
	data := randomData(t, testPieceSize+3)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{cfg: Config{HeartbeatInterval: 20 * time.Millisecond}})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	f.unknown.Store(true)
	require.Eventually(t, func() bool {
		_, registers, _, _ := f.snapshot()
		return len(registers) == 2
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	_, registers, _, _ := f.snapshot()
	require.Equal(t, 2, registers[1].Have.Len())
	f.mu.Lock()
	require.Equal(t, schedapi.HeartbeatRequest{Addr: "127.0.0.1:9", Tasks: []string{f.taskID.String()}}, f.beats[0])
	f.mu.Unlock()
}

// Two engines: the second fetches every piece from the first's upload
// server while the first still downloads.
func TestPeerToPeerThroughUploadServer(t *testing.T) {
	t.Parallel()
	data := randomData(t, 6*testPieceSize+9)
	cdn := newHolder(t, "cdn", data, gated)

	// Engine A gets everything from the CDN.
	upA := newUploadServer(t)
	fa := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return cdn.peer, true })
	ea := newTestEngine(t, fa.addr, engineSetup{self: schedapi.Peer{ID: "a", Addr: upA.addr}})
	upA.serve(t, ea)
	da, err := ea.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer da.Close()

	// Engine B gets everything from A.
	fb := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return ea.Self(), false })
	eb := newTestEngine(t, fb.addr, engineSetup{self: schedapi.Peer{ID: "b", Addr: "127.0.0.1:9"}})
	// Connections B dialled but never used would hold A's shutdown.
	t.Cleanup(eb.httpClient.CloseIdleConnections)
	db, err := eb.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer db.Close()

	// B's first tries hit pieces A does not have yet: 404 "range not
	// available". Release the CDN pieces one by one.
	for i := range 7 {
		cdn.release(i)
	}
	ra, err := da.Wait(t.Context())
	require.NoError(t, err)
	rb, err := db.Wait(t.Context())
	require.NoError(t, err)
	require.Equal(t, ra.Digest, rb.Digest)
	require.Equal(t, data, readBlob(t, eb.store, rb.Digest))
	require.Equal(t, int64(len(data)), db.Progress().FromPeers)
	reports, _, _, _ := fb.snapshot()
	for _, r := range reports {
		if !r.OK {
			require.Equal(t, "status 404", r.Error)
		}
	}
}

func TestDownloadValidates(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, deadPeer(t, "x").Addr, engineSetup{})
	_, err := e.Download(t.Context(), Request{})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = e.Download(t.Context(), Request{URL: "http://o/x", Digest: "md5:abc"})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = e.Download(t.Context(), Request{URL: "ftp://o/x"})
	require.ErrorIs(t, err, ErrInvalid, "no task id can be derived without a supernode")
}

var _ source.Client = (*fakeSource)(nil)

// Without WithSource the engine goes back to the source over HTTP.
func TestBackToSourceOverHTTP(t *testing.T) {
	t.Parallel()
	data := randomData(t, 300_000)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/file" {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "file", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(origin.Close)
	e := newTestEngine(t, deadPeer(t, "x").Addr, engineSetup{})

	d, err := e.Download(t.Context(), Request{URL: origin.URL + "/file", BackToSource: true})
	require.NoError(t, err)
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.True(t, res.FromSource)
	require.Equal(t, data, readBlob(t, e.store, res.Digest))
	require.NoError(t, d.Close())

	d, err = e.Download(t.Context(), Request{URL: origin.URL + "/missing", BackToSource: true})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, source.ErrNotFound)
	require.ErrorContains(t, err, "source: ")
}

// Closing a reader unblocks a Read waiting for a piece.
func TestReaderCloseUnblocks(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	r := d.NewReader(0)
	errc := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 10))
		errc <- err
	}()
	select {
	case err := <-errc:
		t.Fatalf("Read returned %v before any piece", err)
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, r.Close())
	require.ErrorIs(t, <-errc, ErrReaderClosed)
	h.release(0)
	h.release(1)
	_, err = d.Wait(t.Context())
	require.NoError(t, err)
}

// The download limiter paces piece fetches, and metrics count them.
func TestDownloadLimiterAndMetrics(t *testing.T) {
	t.Parallel()
	data := randomData(t, 8*testPieceSize) // 512 KiB
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	reg := prometheus.NewRegistry()
	lim := rate.NewLimiter(rate.Limit(2<<20), 64<<10) // 2 MiB/s
	e := newTestEngine(t, f.addr, engineSetup{opts: []Option{WithDownloadLimiter(lim), WithMetrics(reg)}})
	start := time.Now()
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.NoError(t, err)
	// 512 KiB at 2 MiB/s with a 64 KiB burst takes at least ~220ms.
	require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
	require.Equal(t, 8.0, counterValue(t, reg, "damselfly_peer_pieces_total", map[string]string{"result": "ok", "from": "peer"}))
	require.Equal(t, float64(len(data)), counterValue(t, reg, "damselfly_peer_received_bytes_total", map[string]string{"from": "peer"}))
	require.Equal(t, 1.0, counterValue(t, reg, "damselfly_peer_downloads_total", map[string]string{"result": "ok", "mode": "p2p"}))

	// A second engine on the same registry is refused, not silently merged.
	_, err = New(Config{}, contenttest.NewMemory(), e.sched, e.self, WithMetrics(reg))
	require.Error(t, err)
}

// counterValue reads one counter from a registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s%v", name, labels)
	return 0
}

// An expected size the supernode's source contradicts (an error page served
// with 200, say) fails the download before any byte is readable.
func TestExpectedSizeMismatch(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize+5)
	h := newHolder(t, "good", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file", Size: int64(len(data)) + 1})
	require.NoError(t, err)
	defer d.Close()
	r := d.NewReader(0)
	defer r.Close()
	b, err := io.ReadAll(r)
	require.ErrorIs(t, err, ErrSizeMismatch)
	require.Empty(t, b, "nothing is readable")
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrSizeMismatch)
	_, err = e.store.Info(t.Context(), digest.FromBytes(data))
	require.ErrorIs(t, err, content.ErrNotFound, "nothing is committed")
	reports, _, _, _ := f.snapshot()
	require.Empty(t, reports, "no piece was fetched")
}

// An engine cannot be built without the cluster token: it could neither
// register nor fetch a piece.
func TestNewNeedsClusterToken(t *testing.T) {
	t.Parallel()
	sc, err := schedclient.New([]string{"127.0.0.1:1"})
	require.NoError(t, err)
	_, err = New(Config{}, contenttest.NewMemory(), sc, schedapi.Peer{ID: "a", Addr: "127.0.0.1:1"})
	require.ErrorIs(t, err, clusterauth.ErrNoToken)
}

// The engine registers with the fields that name its task: the supernode
// (and pkg/schedclient, routing the register) derive from them the ID the
// engine names the download by when no supernode answers (Request.TaskID).
func TestRegisterNamesTheEngineTask(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	cdn := newHolder(t, "cdn", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return cdn.peer, true })
	e := newTestEngine(t, f.addr, engineSetup{store: contenttest.NewMemory()})
	req := Request{URL: "http://Origin.test:80/file?sig=x&b=1", Filter: []string{"sig"}, Identifier: "v1"}
	d, err := e.Download(t.Context(), req)
	require.NoError(t, err)
	_, err = d.Wait(t.Context())
	require.NoError(t, err)
	require.NoError(t, d.Close())

	_, registers, _, _ := f.snapshot()
	require.NotEmpty(t, registers)
	want, err := req.TaskID()
	require.NoError(t, err)
	got, err := registers[0].TaskID()
	require.NoError(t, err)
	require.Equal(t, want, got)
}
