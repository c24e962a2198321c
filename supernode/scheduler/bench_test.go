package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// BenchmarkPollEvent measures the scheduler's cost of one event in a busy
// swarm, as the swarm grows: one peer reports a piece it received, the
// parked polls that the freed slot and the new holder may serve are retried,
// and the peer polls again for its free download slots. Every peer joined
// with a random half of a 256-piece task and keeps 8 pieces in flight, so
// nearly every upload slot is taken and nearly every peer has a parked poll:
// the flash-crowd state in which the scheduler works hardest. The cost per
// event should not grow with the number of peers.
func BenchmarkPollEvent(b *testing.B) {
	for _, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) { benchPollEvent(b, n) })
	}
}

// benchSwarm is the state of BenchmarkPollEvent: the scheduler and the
// assignments handed out and not yet reported, oldest first.
type benchSwarm struct {
	s        *SimState
	inflight map[string]int
	// queue[head:] are the assignments in flight.
	queue []benchFlight
	head  int
}

type benchFlight struct {
	peer string
	a    schedapi.Assignment
}

const (
	benchPieces      = 256
	benchConcurrency = 8
	benchTask        = "3d5f0e7a2c4b6d8e9f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e"
)

func newBenchSwarm(b *testing.B, peers int) *benchSwarm {
	w := &benchSwarm{inflight: make(map[string]int)}
	s, err := NewSimState(Config{}, cdnPeer, func() time.Time { return time.Unix(0, 0) },
		func(peerID string, resp schedapi.PiecesResponse) { w.got(peerID, resp.Assignments) })
	if err != nil {
		b.Fatal(err)
	}
	w.s = s
	if err := s.AddTask(TaskSpec{ID: benchTask, PieceSize: 1, Size: benchPieces}); err != nil {
		b.Fatal(err)
	}
	for i := range benchPieces {
		if err := s.PublishPiece(benchTask, i, pieceDigest(benchTask, i)); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Succeed(benchTask, benchPieces, ""); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(peers), 7))
	for i := range peers {
		have := &piece.Set{}
		for p := range benchPieces {
			if rng.IntN(2) == 0 {
				have.Add(p)
			}
		}
		if _, err := s.Join(benchTask, benchPeer(i), have); err != nil {
			b.Fatal(err)
		}
	}
	for i := range peers {
		w.poll(b, benchPeer(i).ID)
	}
	return w
}

func benchPeer(i int) schedapi.Peer {
	return schedapi.Peer{ID: fmt.Sprintf("peer-%05d", i), Addr: fmt.Sprintf("127.0.0.1:%d", 10000+i%50000)}
}

func (w *benchSwarm) got(peerID string, as []schedapi.Assignment) {
	for _, a := range as {
		w.queue = append(w.queue, benchFlight{peer: peerID, a: a})
	}
	w.inflight[peerID] += len(as)
}

func (w *benchSwarm) poll(b *testing.B, peerID string) {
	free := benchConcurrency - w.inflight[peerID]
	if free <= 0 {
		return
	}
	resp, ok, err := w.s.Poll(benchTask, peerID, free)
	if err != nil {
		b.Fatal(err)
	}
	if ok {
		w.got(peerID, resp.Assignments)
	}
}

// step reports the oldest assignment as received and has its peer poll
// again. It returns false when nothing is in flight any more.
func (w *benchSwarm) step(b *testing.B) bool {
	if w.head == len(w.queue) {
		return false
	}
	f := w.queue[w.head]
	w.head++
	if w.head > len(w.queue)/2 { // keep the queue's memory bounded
		n := copy(w.queue, w.queue[w.head:])
		w.queue, w.head = w.queue[:n], 0
	}
	w.inflight[f.peer]--
	res := []schedapi.PieceResult{{Piece: f.a.Piece, From: f.a.From.ID, OK: true, Bytes: f.a.Length}}
	if err := w.s.Report(benchTask, f.peer, res); err != nil {
		b.Fatal(err)
	}
	w.poll(b, f.peer)
	return true
}

func benchPollEvent(b *testing.B, peers int) {
	w := newBenchSwarm(b, peers)
	for b.Loop() {
		if !w.step(b) {
			b.StopTimer()
			w = newBenchSwarm(b, peers)
			b.StartTimer()
			w.step(b)
		}
	}
}
