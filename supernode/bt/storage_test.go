package bt

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// recSink records WriteAt and Verified calls.
type recSink struct {
	mu       sync.Mutex
	writes   [][2]int64 // off, len
	verified [][2]int64
}

func (s *recSink) WriteAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes = append(s.writes, [2]int64{off, int64(len(p))})
	return len(p), nil
}

func (s *recSink) Verified(off, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.verified = append(s.verified, [2]int64{off, n})
}

func TestPieceStore(t *testing.T) {
	t.Parallel()
	// Pieces of 10 bytes; the target file is torrent bytes [15, 32).
	tests := []struct {
		name     string
		seed     bool
		off, len int64
		hashOK   bool
		writes   [][2]int64
		keepBuf  bool
	}{
		{name: "straddles the start", off: 10, len: 10, hashOK: true, writes: [][2]int64{{0, 5}}},
		{name: "inside", off: 20, len: 10, hashOK: true, writes: [][2]int64{{5, 10}}},
		{name: "straddles the end", off: 30, len: 10, hashOK: true, writes: [][2]int64{{15, 2}}},
		{name: "outside", off: 0, len: 10, hashOK: true},
		{name: "fails its hash", off: 20, len: 10, hashOK: false},
		{name: "seeding keeps a straddling piece", seed: true, off: 30, len: 10, hashOK: true, writes: [][2]int64{{15, 2}}, keepBuf: true},
		{name: "seeding drops an inside piece", seed: true, off: 20, len: 10, hashOK: true, writes: [][2]int64{{5, 10}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newPieceStore(tt.seed)
			sink := &recSink{}
			require.NoError(t, s.setTarget(&target{off: 15, length: 17, sink: sink}))
			p := &piece{s: s, index: int(tt.off / 10), off: tt.off, length: tt.len}
			require.False(t, p.Completion().Complete)
			data := make([]byte, tt.len)
			for i := range data {
				data[i] = byte(tt.off) + byte(i)
			}
			// Two chunks, out of order; then the hash check reads it back.
			_, err := p.WriteAt(data[5:], 5)
			require.NoError(t, err)
			_, err = p.WriteAt(data[:5], 0)
			require.NoError(t, err)
			got := make([]byte, tt.len)
			_, err = p.ReadAt(got, 0)
			require.NoError(t, err)
			require.Equal(t, data, got)
			if !tt.hashOK {
				require.NoError(t, p.MarkNotComplete())
				require.False(t, p.Completion().Complete)
				require.Empty(t, sink.writes)
				_, err = p.ReadAt(got, 0)
				require.Error(t, err, "a failed piece is discarded")
				return
			}
			require.NoError(t, p.MarkComplete())
			require.True(t, p.Completion().Complete)
			require.NoError(t, p.MarkComplete(), "verified twice")
			require.Equal(t, tt.writes, sink.writes, "written once")
			require.Equal(t, tt.writes, sink.verified)
			_, held := s.bufs[p.index]
			require.Equal(t, tt.keepBuf, held)
			left, _ := s.state()
			var n int64
			for _, w := range tt.writes {
				n += w[1]
			}
			require.Equal(t, 17-n, left)
		})
	}
}
