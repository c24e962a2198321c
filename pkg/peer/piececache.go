package peer

import (
	"container/list"
	"io"
	"sync"
	"time"

	"github.com/damselfly/damselfly/pkg/piece"
)

// pieceCache keeps the latest verified pieces in memory, in the buffers they
// were received into, so that the readers following a download (the runtime
// reading the blob in order, peers fetching the newest pieces) are served
// from memory: with a store that writes around the page cache (direct I/O)
// a byte is then copied from the socket once and never read back from disk.
// It holds at most max bytes of pieces, the first stored first out (a read
// does not keep a piece longer: the stream that read it is past it, and the
// pieces it has not read yet are the ones to keep, see pace.go); an
// evicted buffer goes back to the engine's pool. Only verified pieces
// enter it, and a task's pieces leave it when its ingest is dropped.
type pieceCache struct {
	mu    sync.Mutex
	max   int64     // bytes
	bytes int64     // of the cached buffers
	lru   list.List // of *cachedPiece, the latest stored at the front
	byKey map[cacheKey]*list.Element
	pool  *bufPool
}

type cacheKey struct {
	t     *task
	piece int
}

type cachedPiece struct {
	key cacheKey
	off int64
	buf *[]byte // the piece's bytes are (*buf)[:n]
	n   int
}

// defaultCacheBytes is how much the cache holds: eight default-sized
// pieces, a few seconds of a fast download.
const defaultCacheBytes = 8 * piece.DefaultSize

func newPieceCache(max int64, pool *bufPool) *pieceCache {
	return &pieceCache{max: max, byKey: make(map[cacheKey]*list.Element), pool: pool}
}

// put hands the cache bp, holding verified piece i of t at off (n bytes).
// It reports whether the cache took the buffer; if not, the caller keeps it.
func (c *pieceCache) put(t *task, i int, off int64, bp *[]byte, n int) bool {
	if c == nil || int64(cap(*bp)) > c.max {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := cacheKey{t, i}
	if _, ok := c.byKey[k]; ok {
		return false
	}
	c.byKey[k] = c.lru.PushFront(&cachedPiece{key: k, off: off, buf: bp, n: n})
	c.bytes += int64(cap(*bp))
	for c.bytes > c.max {
		c.removeLocked(c.lru.Back())
	}
	return true
}

// readAt copies bytes of t at off from the cached piece holding off (of
// piece size ps) into p, up to that piece's end. It returns how many bytes
// it copied: 0 when the piece is not cached.
func (c *pieceCache) readAt(t *task, ps int64, p []byte, off int64) int {
	if c == nil || ps <= 0 || off < 0 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[cacheKey{t, int(off / ps)}]
	if !ok {
		return 0
	}
	cp := e.Value.(*cachedPiece)
	rel := off - cp.off
	if rel < 0 || rel >= int64(cp.n) {
		return 0
	}
	return copy(p, (*cp.buf)[rel:cp.n])
}

// clear forgets every cached piece.
func (c *pieceCache) clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.lru.Len() > 0 {
		c.removeLocked(c.lru.Back())
	}
}

// drop forgets every cached piece of t.
func (c *pieceCache) drop(t *task) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.lru.Front(); e != nil; {
		next := e.Next()
		if e.Value.(*cachedPiece).key.t == t {
			c.removeLocked(e)
		}
		e = next
	}
}

func (c *pieceCache) removeLocked(e *list.Element) {
	cp := c.lru.Remove(e).(*cachedPiece)
	delete(c.byKey, cp.key)
	c.bytes -= int64(cap(*cp.buf))
	c.pool.put(cp.buf)
}

// readThrough fills p from t's bytes at off: cached pieces from memory, the
// rest from r. ps is the task's piece size. It behaves like io.ReaderAt.
func (c *pieceCache) readThrough(t *task, ps int64, r io.ReaderAt, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		if n := c.readAt(t, ps, p[done:], off+int64(done)); n > 0 {
			done += n
			continue
		}
		// Read from r up to the next piece boundary, which may be cached.
		pos := off + int64(done)
		end := len(p)
		if ps > 0 {
			end = min(end, done+int(ps-pos%ps))
		}
		n, err := r.ReadAt(p[done:end], pos)
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// bufPool recycles the buffers pieces are received into. It keeps up to
// keep bytes of them across garbage collections (a sync.Pool empties on
// every one, and a piece buffer allocated again costs the kernel fresh
// zeroed pages): enough for every fetch in flight and the piece cache at the
// default piece size. Buffers are as long as the largest piece asked for
// since; a smaller one taken for a larger piece is left to the GC.
type bufPool struct {
	mu    sync.Mutex
	free  []*[]byte
	bytes int64
	keep  int64
}

func newBufPool(keep int64) *bufPool { return &bufPool{keep: keep} }

// get returns a buffer of at least n bytes, aligned for direct I/O.
func (p *bufPool) get(n int64) *[]byte {
	p.mu.Lock()
	for len(p.free) > 0 {
		b := p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		p.bytes -= int64(cap(*b))
		if int64(cap(*b)) >= n {
			p.mu.Unlock()
			*b = (*b)[:cap(*b)]
			return b
		}
	}
	p.mu.Unlock()
	b := piece.Buffer(int(n))
	return &b
}

// drain lets the GC have every buffer the pool keeps.
func (p *bufPool) drain() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.free)
	p.free, p.bytes = p.free[:0], 0
}

// put gives b back; beyond the pool's bytes it is left to the GC.
func (p *bufPool) put(b *[]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes+int64(cap(*b)) > p.keep {
		return
	}
	p.free = append(p.free, b)
	p.bytes += int64(cap(*b))
}

// idleTrim is how long no piece has been fetched before an engine lets go
// of its piece cache and its pooled buffers (trimIdle): a node between
// pulls keeps no download memory.
const idleTrim = 30 * time.Second

// trimIdle empties the piece cache and the buffer pool when no piece was
// fetched for idleTrim.
func (e *Engine) trimIdle(now time.Time) {
	last := e.lastFetch.Load()
	if last == 0 || now.Sub(time.Unix(0, last)) < idleTrim {
		return
	}
	e.lastFetch.Store(0)
	e.pcache.clear()
	e.bufs.drain()
}
