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
	pool := newBufPool(4 * piece.DefaultSize)
	c := newPieceCache(2*piece.DefaultSize, pool)
	t1, t2 := &task{}, &task{}
	ps := piece.DefaultSize
	fill := func(b byte) *[]byte {
		bp := pool.get(piece.DefaultSize)
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
	require.Len(t, pool.free, 1, "the evicted buffer is back in the pool")
	c.drop(t1)
	require.Zero(t, c.readAt(t1, ps, p, ps))
	require.Equal(t, 300, c.readAt(t2, ps, p, 0))
	require.Len(t, pool.free, 2)

	big := piece.Buffer(int(3 * ps)) // larger than the whole cache
	require.False(t, c.put(t2, 1, ps, &big, 10))
}

// The pool hands out buffers at least as long as asked, keeps at most its
// bytes, and drops a kept buffer too small for the piece asked for.
func TestBufPool(t *testing.T) {
	p := newBufPool(3 << 20)
	a, b := p.get(1<<20), p.get(1<<20)
	require.Len(t, *a, 1<<20)
	require.True(t, piece.Aligned(*a))
	p.put(a)
	p.put(b)
	c := p.get(2 << 20)
	require.Len(t, *c, 2<<20)
	require.Zero(t, p.bytes, "both 1 MiB buffers were too small: dropped")
	p.put(c)
	p.put(p.get(2 << 20))
	require.Equal(t, int64(2<<20), p.bytes)
	p.put(p.get(2 << 20))
	p.put(&[]byte{})
	d := piece.Buffer(2 << 20)
	p.put(&d) // 4 MiB would pass the pool's 3
	require.Equal(t, int64(2<<20), p.bytes)
	p.drain()
	require.Zero(t, p.bytes)
}

// An engine that fetched nothing for idleTrim lets its cache and buffers go.
func TestTrimIdle(t *testing.T) {
	e := &Engine{bufs: newBufPool(4 * piece.DefaultSize)}
	e.pcache = newPieceCache(2*piece.DefaultSize, e.bufs)
	tk := &task{}
	require.True(t, e.pcache.put(tk, 0, 0, e.bufs.get(piece.DefaultSize), 1))
	e.bufs.put(e.bufs.get(piece.DefaultSize))
	now := time.Now()
	e.lastFetch.Store(now.UnixNano())
	e.trimIdle(now.Add(idleTrim / 2))
	require.Equal(t, 1, e.pcache.lru.Len())
	e.trimIdle(now.Add(idleTrim))
	require.Zero(t, e.pcache.lru.Len())
	require.Zero(t, e.bufs.bytes)
}
