package peer

import (
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
)

// testMagnet is a magnet link with a tracker whose URL carries a passkey.
const testMagnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=set&tr=https://tracker.test/s3cret/announce"

// A torrent downloads through the supernode like any task: the engine
// registers with the link and the file, which name the task, and
// registers again with them when the supernode forgot it.
func TestTorrentRegistersWithFile(t *testing.T) {
	t.Parallel()
	for _, url := range []string{testMagnet, "torrent+https://files.test/set.torrent?passkey=s"} {
		t.Run(url[:7], func(t *testing.T) {
			t.Parallel()
			data := randomData(t, 3*testPieceSize+7)
			cdn := newHolder(t, "cdn", data, good)
			f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return cdn.peer, true })
			f.forget.Store(true) // the first poll: register again
			src := &fakeSource{data: data}
			e := newTestEngine(t, f.addr, engineSetup{store: contenttest.NewMemory(), opts: []Option{WithSource(src)}})
			req := Request{URL: url, File: "set/b.bin", BackToSource: true}
			d, err := e.Download(t.Context(), req)
			require.NoError(t, err)
			res, err := d.Wait(t.Context())
			require.NoError(t, err)
			require.False(t, res.FromSource)
			require.Equal(t, data, readBlob(t, e.store, res.Digest))
			require.NoError(t, d.Close())
			require.Zero(t, src.fetches.Load())

			_, registers, _, _ := f.snapshot()
			require.GreaterOrEqual(t, len(registers), 2, "registered again after PEER_NOT_FOUND")
			want, err := req.TaskID()
			require.NoError(t, err)
			for _, r := range registers {
				require.Equal(t, url, r.URL)
				require.Equal(t, "set/b.bin", r.File)
				got, err := r.TaskID()
				require.NoError(t, err)
				require.Equal(t, want, got)
			}
		})
	}
}

// A peer has no BitTorrent client: when P2P fails, a torrent fails with
// the P2P error (the supernode's message as it is), never going to the
// source, whatever BackToSource says.
func TestTorrentNeverBackToSource(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	const multi = "torrent has 2 files, name one: set/a.bin (10 B), set/b.bin (20 B)"
	tests := []struct {
		name  string
		sched func(t *testing.T) string
		is    error
		msg   string
	}{
		{"task failed", func(t *testing.T) string {
			f := newFakeSched(t, data, nil)
			f.failTask = multi
			return f.addr
		}, ErrP2PFailed, "task failed on the supernode: " + multi},
		{"supernode unreachable", func(t *testing.T) string { return deadPeer(t, "x").Addr }, schedclient.ErrUnreachable, "supernode unreachable"},
		{"all peers dead", func(t *testing.T) string {
			dead := deadPeer(t, "dead")
			return newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return dead, false }).addr
		}, ErrStalled, "no piece verified for 200ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := &fakeSource{data: data}
			e := newTestEngine(t, tt.sched(t), engineSetup{
				cfg:  Config{StallTimeout: 200 * time.Millisecond},
				opts: []Option{WithSource(src)},
			})
			d, err := e.Download(t.Context(), Request{URL: testMagnet, BackToSource: true})
			require.NoError(t, err)
			defer d.Close()
			_, err = d.Wait(t.Context())
			require.ErrorIs(t, err, ErrP2PFailed)
			require.ErrorIs(t, err, tt.is)
			require.ErrorContains(t, err, tt.msg)
			require.Zero(t, src.fetches.Load(), "no source fetch")
			for ev := range d.Events() {
				require.NotEqual(t, EventFallback, ev.Kind, "no fallback: %s", ev)
			}
		})
	}
}

func TestTorrentRequestValidates(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, deadPeer(t, "x").Addr, engineSetup{})
	for _, req := range []Request{
		{URL: "https://files.test/a.iso", File: "a.iso"},
		{URL: "https://files.test/a.iso", File: "a.iso", Digest: digest.FromString("a")},
		{URL: testMagnet, File: "../a.iso"},
		{URL: testMagnet, File: "/a.iso"},
		{URL: "magnet:?xt=urn:btih:short"},
		{URL: "torrent+ftp://files.test/x.torrent"},
	} {
		_, err := e.Download(t.Context(), req)
		require.ErrorIs(t, err, ErrInvalid, "%+v", req)
	}
}
