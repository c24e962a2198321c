package peer

import (
	"time"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// Pacing. A reader of the whole content (the runtime pulling a layer)
// reads the download in order; when it is slower than the download, the
// pieces it has not read yet would leave the piece cache before it gets to
// them and be read back from the disk, which the store writes around the
// page cache: as much disk traffic again as the download itself. So while
// the verified and in-flight pieces from the furthest such reader on fill
// the piece cache but for one piece, the background fill waits, asking
// only for the piece that reader waits for, and each step of the reader
// wakes the P2P loop. Only once the supernode holds the whole content (its
// task succeeded): a piece asked for is then never one the CDN must fetch
// out of order. A reader that keeps up (the network is the slower side, as
// in a swarm) paces nothing, and the swarm's rarest-first order stays; one
// that has not read for paceStale (a client that stopped reading but did
// not hang up) paces nothing either.

// paceStale is how long a whole-content reader may stand still and still
// pace the download (Engine.paceStale; tests shorten it).
const paceStale = 10 * time.Second

// stream registers r as a reader of the whole content; the function it
// returns drops it.
func (t *task) stream(r *reader) func() {
	r.pos.Store(r.off)
	r.movedAt.Store(time.Now().UnixNano())
	t.mu.Lock()
	t.streams[r] = struct{}{}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.streams, r)
		t.mu.Unlock()
		t.wake()
	}
}

// moved records the reader's offset and, while the download waits for
// readers, wakes the P2P loop.
func (r *reader) moved() {
	r.pos.Store(r.off)
	r.movedAt.Store(time.Now().UnixNano())
	if r.t.paced.Load() {
		r.t.wake()
	}
}

// wake makes the P2P loop plan its next poll again.
func (t *task) wake() {
	select {
	case t.wantCh <- struct{}{}:
	default:
	}
}

// pace reports whether the background fill waits for the furthest
// whole-content reader, and the piece that reader waits for (-1: none, or
// it is in flight).
func (t *task) pace(inflight map[int]bool) (next int, paced bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps, size := t.info.PieceSize, t.info.Size
	if len(t.streams) == 0 || ps <= 0 || size < 0 || t.mode != modeP2P || t.info.State != schedapi.TaskSucceeded || t.e.pcache == nil {
		return -1, false
	}
	ahead := t.e.pcache.max - ps // how far the download may run ahead
	if ahead < ps {
		return -1, false
	}
	pos := int64(-1)
	stale := time.Now().Add(-t.e.paceStale).UnixNano()
	for r := range t.streams {
		if r.movedAt.Load() < stale {
			continue
		}
		// The furthest reader: a slower one reading the same blob never
		// holds a faster one back (it reads behind from the disk).
		pos = max(pos, r.pos.Load())
	}
	if pos < 0 {
		return -1, false
	}
	count := piece.Count(size, ps)
	first := int(pos / ps)
	if first >= count {
		return -1, false
	}
	var lead int64
	for i := first; i < count && lead < ahead; i++ {
		if t.verified.Has(i) || inflight[i] {
			lead += ps
		}
	}
	next = -1
	if !t.verified.Has(first) && !inflight[first] {
		next = first
	}
	return next, lead >= ahead
}
