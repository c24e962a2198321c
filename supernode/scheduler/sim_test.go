package scheduler

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// swarm is what the simulated peers know between them: who holds what, and
// how many uploads each source is serving, as seen from the downloaders.
type swarm struct {
	mu        sync.Mutex
	held      map[string]map[int]bool
	uploading map[string]int
	maxUpload map[string]int
	fromCDN   int
	total     int
	// cdnPiece counts the CDN's transfers of each piece in flight;
	// maxCDNPiece is the most of one piece there ever were at once.
	cdnPiece    map[int]int
	maxCDNPiece int
	// corrupt names the peers that serve bad bytes; failed counts the
	// transfers from each that failed verification.
	corrupt map[string]bool
	failed  map[string]int
}

func (w *swarm) start(a schedapi.Assignment) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !a.FromCDN && !w.held[a.From.ID][a.Piece] {
		return fmt.Errorf("piece %d assigned from %s, which does not hold it", a.Piece, a.From.ID)
	}
	w.uploading[a.From.ID]++
	w.maxUpload[a.From.ID] = max(w.maxUpload[a.From.ID], w.uploading[a.From.ID])
	w.total++
	if a.FromCDN {
		w.fromCDN++
		w.cdnPiece[a.Piece]++
		w.maxCDNPiece = max(w.maxCDNPiece, w.cdnPiece[a.Piece])
	}
	return nil
}

// finish ends a transfer and reports whether it delivered a good piece.
func (w *swarm) finish(peerID string, a schedapi.Assignment) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.uploading[a.From.ID]--
	if a.FromCDN {
		w.cdnPiece[a.Piece]--
	}
	if w.corrupt[a.From.ID] {
		w.failed[a.From.ID]++
		return false
	}
	w.held[peerID][a.Piece] = true
	return true
}

// TestSimulatedSwarm runs 32 peers fetching a 200-piece task while the CDN
// publishes it, each peer reporting every assignment as soon as it gets it.
// Every peer must end with every piece, no source may exceed its upload
// slots, the CDN may send no piece to more than cdnPieceFanout peers at once,
// and it must serve only a small multiple of the task (super-seeding), or a
// small share of the transfers, not every peer. In the corrupt runs some
// peers serve corrupt data: they are struck out after their first failures
// and everyone still completes.
func TestSimulatedSwarm(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		corrupt int
		fanout  int
	}{
		{name: "super-seed healthy", fanout: 1},
		{name: "super-seed four corrupt peers", corrupt: 4, fanout: 1},
		{name: "fanout healthy", fanout: DefaultCDNPieceFanout},
		{name: "fanout four corrupt peers", corrupt: 4, fanout: DefaultCDNPieceFanout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			simulateSwarmN(t, 32, 200, tt.corrupt, tt.fanout)
		})
	}
}

// BenchmarkSimulatedSwarm measures the scheduler with a larger swarm: 300
// peers fetching 300 pieces, 90,000 transfers per iteration.
func BenchmarkSimulatedSwarm(b *testing.B) {
	for b.Loop() {
		simulateSwarmN(b, 300, 300, 0, 0)
	}
}

// simulateSwarmN runs the swarm with the given cdnPieceFanout (0: the
// default).
func simulateSwarmN(t testing.TB, peers, pieces, corrupt, fanout int) {
	const (
		pieceSize  = 1000
		peerSlots  = 4
		cdnSlots   = 16
		perPoll    = 8
		simTimeout = 300 * time.Second
	)
	maxPolls := 20 * pieces
	cfg := Config{PeerUploadSlots: peerSlots, CDNUploadSlots: cdnSlots, CDNPieceFanout: fanout}.ApplyDefaults()
	s := startScheduler(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), simTimeout)
	defer cancel()
	id := testTaskID(t.Name())
	require.NoError(t, s.AddTask(ctx, TaskSpec{ID: id, URL: "http://127.0.0.1:1/big", PieceSize: pieceSize, Size: int64(pieces) * pieceSize}))

	w := &swarm{
		held: map[string]map[int]bool{}, uploading: map[string]int{}, maxUpload: map[string]int{},
		corrupt: map[string]bool{}, failed: map[string]int{}, cdnPiece: map[int]int{},
	}
	names := make([]string, peers)
	for i := range names {
		names[i] = fmt.Sprintf("peer-%02d", i)
		w.corrupt[names[i]] = i < corrupt
		w.held[names[i]] = map[int]bool{}
		_, err := s.Join(ctx, id, peerAt(names[i], 30000+i), nil)
		require.NoError(t, err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { // the CDN seeding
		for i := range pieces {
			if err := s.PublishPiece(gctx, id, i, pieceDigest(id, i)); err != nil {
				return err
			}
			if i%20 == 19 {
				time.Sleep(time.Millisecond)
			}
		}
		return s.Succeed(gctx, id, int64(pieces)*pieceSize, "")
	})
	for _, name := range names {
		g.Go(func() error {
			have := 0
			for range maxPolls {
				pctx, pcancel := context.WithTimeout(gctx, 2*time.Second)
				resp, err := s.Poll(pctx, id, name, perPoll)
				pcancel()
				if err != nil {
					return fmt.Errorf("%s: poll: %w", name, err)
				}
				results := make([]schedapi.PieceResult, 0, len(resp.Assignments))
				for _, a := range resp.Assignments {
					if a.From.ID == name {
						return fmt.Errorf("%s: assigned piece %d from itself", name, a.Piece)
					}
					if a.Digest != pieceDigest(id, a.Piece).String() {
						return fmt.Errorf("%s: piece %d has digest %s", name, a.Piece, a.Digest)
					}
					if off := int64(a.Piece) * pieceSize; a.Offset != off || a.Length != pieceSize {
						return fmt.Errorf("%s: piece %d at %d+%d", name, a.Piece, a.Offset, a.Length)
					}
					if err := w.start(a); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
				}
				for _, a := range resp.Assignments {
					if !w.finish(name, a) {
						results = append(results, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, Reason: schedapi.ReasonCorrupt, Error: "digest mismatch"})
						continue
					}
					have++
					results = append(results, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, OK: true, Bytes: a.Length})
				}
				if len(results) > 0 {
					if err := s.Report(gctx, id, name, results); err != nil {
						return fmt.Errorf("%s: report: %w", name, err)
					}
				}
				if have == pieces && resp.State == schedapi.TaskSucceeded {
					return nil
				}
			}
			return fmt.Errorf("%s: %d of %d pieces after %d polls", name, have, pieces, maxPolls)
		})
	}
	require.NoError(t, g.Wait())

	status, err := s.Task(ctx, id)
	require.NoError(t, err)
	require.Equal(t, schedapi.TaskSucceeded, status.State)
	require.Len(t, status.Peers, peers)
	for _, p := range status.Peers {
		require.Equal(t, pieces, p.Pieces, "peer %s", p.ID)
		require.Zero(t, p.Uploading, "peer %s", p.ID)
		require.Len(t, w.held[p.ID], pieces, "peer %s", p.ID)
	}
	var failed int
	for _, p := range status.Peers {
		require.Equal(t, w.corrupt[p.ID], p.Struck, "peer %s", p.ID)
		// A corrupt peer fails at most the transfers it was given before
		// a second requester's report corroborated the first: two polls'
		// worth of its slots.
		require.LessOrEqual(t, w.failed[p.ID], 2*peerSlots, "peer %s", p.ID)
		failed += w.failed[p.ID]
	}
	require.Equal(t, peers*pieces+failed, w.total, "every piece fetched once per peer, plus the failures")
	require.Equal(t, int64(w.fromCDN)*pieceSize, status.BytesFromCDN)
	require.Equal(t, int64(peers*pieces)*pieceSize, status.BytesFromCDN+status.BytesFromPeers)
	for src, n := range w.maxUpload {
		limit := peerSlots
		if src == cdnPeer.ID {
			limit = cdnSlots
		}
		require.LessOrEqual(t, n, limit, "concurrent uploads of %s", src)
	}
	t.Logf("CDN served %d of %d transfers (%.2fx the task); %d failed", w.fromCDN, w.total, float64(w.fromCDN)/float64(pieces), failed)
	require.LessOrEqual(t, w.maxCDNPiece, cfg.CDNPieceFanout, "concurrent CDN transfers of one piece")
	if cfg.CDNPieceFanout == 1 {
		require.Less(t, w.fromCDN, 3*pieces, "the CDN served too much: the load is not spread")
	} else {
		require.Less(t, w.fromCDN, w.total/4, "the CDN served too much: the load is not spread")
	}
}
