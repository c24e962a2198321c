package peer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/piece"
)

// The cache keeps the newest pieces, serves reads within a piece, forgets
// a task's pieces on drop, and gives evicted buffers back to the pool.
func TestPieceCache(t *testing.T) {
	pool := newBufPool(4)
	c := newPieceCache(2, pool)
	t1, t2 := &task{}, &task{}
	ps := piece.DefaultSize
	fill := func(b byte) *[]byte {
		bp := pool.get()
		for i := range *bp {
			(*bp)[i] = b
		}
		return bp
	}
	require.True(t, c.put(t1, 0, 0, fill(1), int(ps)))
	require.True(t, c.put(t1, 1, ps, fill(2), 100))
	p := make([]byte, 300)
	require.Equal(t, 300, c.readAt(t1, ps, p, 10))
	require.Equal(t, byte(1), p[299])
	require.Equal(t, 90, c.readAt(t1, ps, p, ps+10), "a read stops at the piece's end")
	require.Equal(t, byte(2), p[0])
	require.Zero(t, c.readAt(t1, ps, p, ps+100), "past the piece's bytes")

	// Piece 1 was read last: piece 0 goes first.
	require.True(t, c.put(t2, 0, 0, fill(3), int(ps)))
	require.Zero(t, c.readAt(t1, ps, p, 0))
	require.Equal(t, 1, len(pool.free), "the evicted buffer is back in the pool")
	c.drop(t1)
	require.Zero(t, c.readAt(t1, ps, p, ps))
	require.Equal(t, 300, c.readAt(t2, ps, p, 0))
	require.Equal(t, 2, len(pool.free))

	other := make([]byte, 10) // not a pooled piece buffer
	require.False(t, c.put(t2, 1, ps, &other, 10))
}

// An engine that fetched nothing for idleTrim lets its cache and buffers go.
func TestTrimIdle(t *testing.T) {
	e := &Engine{bufs: newBufPool(4)}
	e.pcache = newPieceCache(2, e.bufs)
	tk := &task{}
	require.True(t, e.pcache.put(tk, 0, 0, e.bufs.get(), 1))
	e.bufs.put(e.bufs.get())
	now := time.Now()
	e.lastFetch.Store(now.UnixNano())
	e.trimIdle(now.Add(idleTrim / 2))
	require.Equal(t, 1, e.pcache.lru.Len())
	e.trimIdle(now.Add(idleTrim))
	require.Zero(t, e.pcache.lru.Len())
	require.Zero(t, len(e.bufs.free))
}
