package simulate

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/supernode/scheduler"
)

// within asserts got is want within 1%.
func within(t *testing.T, want float64, got time.Duration, what string) {
	t.Helper()
	require.InDelta(t, want, got.Seconds(), want/100, "%s: %v", what, got)
}

// TestTwoPeersOnePiece: super-seeding, the CDN sends the only piece to one
// peer at that peer's download rate (1 s); the other waits for it (the CDN
// serves a piece to one requester at a time) and gets it from the first at
// that peer's upload rate (2 s more). With a fanout of 2 both get it from the
// CDN at once (1 s).
func TestTwoPeersOnePiece(t *testing.T) {
	t.Parallel()
	sc := Scenario{
		Size: 100, PieceSize: 100, Peers: 2,
		PeerUpload: 50, PeerDownload: 100, CDNUpload: 1000, OriginRate: 1e9,
		Scheduler: scheduler.Config{CDNPieceFanout: 2},
	}
	res, err := Run(sc)
	require.NoError(t, err)
	require.Equal(t, 2, res.Transfers)
	within(t, 1, res.Max, "max")
	require.Equal(t, int64(100), res.OriginBytes)
	require.Equal(t, int64(200), res.CDNBytes)
	require.Zero(t, res.PeerBytes)

	sc.Scheduler.CDNPieceFanout = 1
	res, err = Run(sc)
	require.NoError(t, err)
	require.Equal(t, 1, res.Pieces)
	require.Equal(t, 2, res.Transfers)
	within(t, 1, res.P50, "p50")
	within(t, 3, res.Max, "max")
	within(t, 1, res.Ideal, "ideal")
	require.Equal(t, int64(100), res.OriginBytes)
	require.Equal(t, int64(100), res.CDNBytes)
	require.Equal(t, int64(100), res.PeerBytes)
}

// TestFairShare: one peer fetches four pieces at once from the CDN. The
// CDN's 400 B/s would give each 100 B/s, but the peer's 100 B/s download is
// shared by the four: 25 B/s each, all done at 4 s = size / download rate.
// With concurrency 2 the pieces go two by two at 50 B/s: the same 4 s.
func TestFairShare(t *testing.T) {
	t.Parallel()
	for _, conc := range []int{8, 2} {
		res, err := Run(Scenario{
			Size: 400, PieceSize: 100, Peers: 1, Concurrency: conc,
			PeerUpload: 100, PeerDownload: 100, CDNUpload: 400, OriginRate: 1e9,
		})
		require.NoError(t, err)
		within(t, 4, res.Max, "max")
		require.Equal(t, int64(400), res.CDNBytes)
		require.Zero(t, res.PeerBytes)
	}
}

// TestCDNShared: super-seeding with two CDN upload slots and a slow CDN, two
// peers each get one of two pieces from the CDN at half its rate (2 s), then
// swap them at their upload rate (1 s): 3 s for both.
func TestCDNShared(t *testing.T) {
	t.Parallel()
	res, err := Run(Scenario{
		Size: 200, PieceSize: 100, Peers: 2,
		PeerUpload: 100, PeerDownload: 1000, CDNUpload: 100, OriginRate: 1e9,
		Scheduler: scheduler.Config{CDNUploadSlots: 2, CDNPieceFanout: 1},
	})
	require.NoError(t, err)
	within(t, 3, res.P50, "p50")
	within(t, 3, res.Max, "max")
	require.Equal(t, int64(200), res.CDNBytes)
	require.Equal(t, int64(200), res.PeerBytes)
}

// TestOriginPaces: the origin feeds the CDN at 100 B/s, so the last of two
// pieces is published at 2 s; the fast peer is done right after.
func TestOriginPaces(t *testing.T) {
	t.Parallel()
	res, err := Run(Scenario{
		Size: 200, PieceSize: 100, Peers: 1,
		PeerUpload: 1e6, PeerDownload: 1e6, CDNUpload: 1e6, OriginRate: 100,
	})
	require.NoError(t, err)
	within(t, 2, res.Max, "max")
}

// TestSwarm: 50 peers, 32 pieces: everyone completes, the origin sends one
// copy, and nobody beats the ideal. Super-seeding (cdnPieceFanout 1), the CDN
// uploads about one copy; with the default fanout it uploads more, but the
// peers still carry most of it.
func TestSwarm(t *testing.T) {
	t.Parallel()
	const size = 32 << 20
	run := func(fanout int) Result {
		res, err := Run(Scenario{
			Size: size, PieceSize: 1 << 20, Peers: 50,
			PeerUpload: 100e6, PeerDownload: 100e6, CDNUpload: 1e9, OriginRate: 1e9,
			Scheduler: scheduler.Config{CDNPieceFanout: fanout},
		})
		require.NoError(t, err)
		require.Equal(t, int64(50*size), res.CDNBytes+res.PeerBytes)
		require.Equal(t, int64(size), res.OriginBytes)
		require.GreaterOrEqual(t, res.P50, res.Ideal)
		require.LessOrEqual(t, res.P50, res.P99)
		require.LessOrEqual(t, res.P99, res.Max)
		require.Less(t, res.Max, 10*res.Ideal)
		return res
	}
	require.Less(t, run(1).CDNBytes, int64(2*size))
	require.Less(t, run(0).CDNBytes, int64(50*size/4))
}

// TestFanoutFatCDN: 16 peers at 8 MiB/s, a 48 MiB task published at 8 MiB/s,
// a CDN with 16 nodes' link. Super-seeding, every piece but the first copy
// crosses the peers' links hop by hop: about 2x the ideal. With a fanout of 16
// the CDN sends each new piece to everyone: close to the ideal, and the origin
// still sends one copy.
func TestFanoutFatCDN(t *testing.T) {
	t.Parallel()
	const size = 48 << 20
	run := func(fanout int) Result {
		res, err := Run(Scenario{
			Size: size, PieceSize: 4 << 20, Peers: 16,
			PeerUpload: 8 << 20, PeerDownload: 8 << 20, CDNUpload: 128 << 20, OriginRate: 8 << 20,
			Scheduler: scheduler.Config{CDNPieceFanout: fanout},
		})
		require.NoError(t, err)
		require.Equal(t, int64(size), res.OriginBytes)
		require.Equal(t, int64(16*size), res.CDNBytes+res.PeerBytes)
		return res
	}
	seed, fan := run(1), run(16)
	require.Greater(t, seed.P99, 3*seed.Ideal/2, "super-seed p99 %v", seed.P99)
	require.Less(t, fan.P99, 5*fan.Ideal/4, "fanout p99 %v", fan.P99)
	require.Equal(t, int64(size), seed.CDNBytes)
}

func TestInvalid(t *testing.T) {
	t.Parallel()
	_, err := Run(Scenario{Size: 100, Peers: 1})
	require.Error(t, err)
}

// TestDeterministic: the same scenario gives the same figures twice.
func TestDeterministic(t *testing.T) {
	t.Parallel()
	sc := Scenario{
		Size: 16 << 20, PieceSize: 1 << 20, Peers: 30,
		PeerUpload: 50e6, PeerDownload: 100e6, CDNUpload: 200e6, OriginRate: 400e6,
	}
	a, err := Run(sc)
	require.NoError(t, err)
	b, err := Run(sc)
	require.NoError(t, err)
	a.Wall, b.Wall = 0, 0
	require.Equal(t, a, b)
}

// TestLatency: with 10 ms one-way latency the poll reaches the scheduler at
// 10 ms, its answer the peer at 20 ms, the first byte arrives a round trip
// later (40 ms), and the 1 s transfer ends at 1.04 s.
func TestLatency(t *testing.T) {
	t.Parallel()
	res, err := Run(Scenario{
		Size: 100, PieceSize: 100, Peers: 1, Latency: 10 * time.Millisecond,
		PeerUpload: 100, PeerDownload: 100, CDNUpload: 1000, OriginRate: 1e9,
	})
	require.NoError(t, err)
	within(t, 1.04, res.Max, "max")
}
