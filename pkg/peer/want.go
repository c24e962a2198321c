package peer

import (
	"slices"
	"time"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// On-demand reads. A range reader (Download.NewRangeReader with a length)
// records the bytes it needs as a want; the P2P loop asks the supernode for
// the pieces wanted by open readers before any other (schedapi.Want), a
// few from each reader so that every one of them moves, and polls again at
// once when a reader wants a piece its poll in flight does not ask for. The
// supernode assigns wanted pieces first and has its CDN fetch those nobody
// has yet from the source first. The rest of the content is the
// background fill, paced by Config.Prefetch.
//
// A reader of the whole content (no length) wants nothing: a full read
// keeps the swarm's rarest-first order, which spreads pieces fastest.

// wantRange is one reader's want: bytes [off, end).
type wantRange struct {
	seq      uint64
	off, end int64
}

// wantPerRange is how many pieces each open want contributes to a poll at
// least, so that parallel range readers all move.
const wantPerRange = 4

// want records that the bytes [off, off+n) are needed now (n < 0: nothing
// is recorded); it returns the function that drops the record.
func (t *task) want(off, n int64) func() {
	if n <= 0 || off < 0 {
		return func() {}
	}
	t.mu.Lock()
	t.wantSeq++
	w := &wantRange{seq: t.wantSeq, off: off, end: off + n}
	t.wants[w] = struct{}{}
	t.mu.Unlock()
	select {
	case t.wantCh <- struct{}{}:
	default:
	}
	return func() {
		t.mu.Lock()
		delete(t.wants, w)
		t.mu.Unlock()
	}
}

// wantedPieces returns up to limit pieces that open readers want and that
// are neither verified nor in skip (in flight), ascending: the first
// missing pieces of each want, oldest want first, at least wantPerRange of
// each while the limit allows. busy reports whether a wanted piece is in
// skip.
func (t *task) wantedPieces(skip map[int]bool, limit int) (out []int, busy bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps, size := t.info.PieceSize, t.info.Size
	if ps <= 0 || len(t.wants) == 0 || limit <= 0 || t.mode != modeP2P {
		return nil, false
	}
	ws := make([]*wantRange, 0, len(t.wants))
	for w := range t.wants {
		ws = append(ws, w)
	}
	slices.SortFunc(ws, func(a, b *wantRange) int { return int(a.seq - b.seq) })
	quota := max(limit/len(ws), wantPerRange)
	count := piece.Count(size, ps)
	for _, w := range ws {
		first, last := int(w.off/ps), int((w.end-1)/ps)
		if count >= 0 {
			last = min(last, count-1)
		}
		k := 0
		for i := first; i <= last && k < quota && len(out) < limit; i++ {
			if t.verified.Has(i) {
				continue
			}
			if skip[i] {
				busy = true
				continue
			}
			out = append(out, i)
			k++
		}
		if len(out) >= limit {
			break
		}
	}
	slices.Sort(out)
	return slices.Compact(out), busy
}

// pollPlan is what the next poll asks for.
type pollPlan struct {
	want  schedapi.Want
	limit int
	// wanted holds want.Pieces, to tell the wanted assignments from the
	// background ones.
	wanted map[int]bool
	// idle: nothing to ask for now by choice (no wants, and the background
	// fill is off or waits for the prefetch rate); after is when to look
	// again (0: when a reader wants something).
	idle  bool
	after time.Duration
}

// planPoll decides the next poll. Up to Config.Concurrency pieces are in
// flight for the background fill; wanted pieces may take as many again, so
// that a reader is not queued behind the fill, and while any wanted piece
// is missing no background piece is started: the wanted ones get the
// node's bandwidth.
func (t *task) planPoll(inflight map[int]bool, bk *bucket, now time.Time) pollPlan {
	cfg := t.e.cfg
	wanted, busy := t.wantedPieces(inflight, wantLimit(cfg))
	paced := false
	if len(wanted) == 0 && !busy {
		var next int
		if next, paced = t.pace(inflight); paced {
			// No background piece while a whole-content reader lags;
			// only the piece it waits for, if any.
			busy = true
			if next >= 0 {
				wanted = []int{next}
			}
		}
	}
	t.paced.Store(paced)
	bg := max(cfg.Concurrency-len(inflight), 0)
	var after time.Duration
	switch {
	case cfg.Prefetch.Off || len(wanted) > 0 || busy:
		bg = 0
	case bk != nil && bg > 0:
		t.mu.Lock()
		ps := t.info.PieceSize
		t.mu.Unlock()
		n, wait := bk.pieces(now, ps)
		if n < bg {
			bg, after = n, wait
		}
	}
	room := max(2*cfg.Concurrency-len(inflight)-bg, 0)
	limit := min(schedapi.MaxAssignments, bg+min(len(wanted), room))
	p := pollPlan{limit: limit, want: schedapi.NoWant}
	if len(wanted) > 0 {
		p.want = schedapi.Want{Pieces: wanted, Background: bg}
		p.wanted = make(map[int]bool, len(wanted))
		for _, i := range wanted {
			p.wanted[i] = true
		}
	}
	if limit == 0 {
		p.idle = len(inflight) == 0 && len(wanted) == 0
		p.after = after
		if paced && p.after == 0 {
			p.after = t.e.paceStale // a reader that stops moving stops pacing
		}
	}
	return p
}

// wantLimit is the most wanted pieces one poll lists.
func wantLimit(cfg Config) int { return min(schedapi.MaxWant, 2*cfg.Concurrency) }

// covers reports whether every piece of want is in asked.
func covers(asked map[int]bool, want []int) bool {
	for _, i := range want {
		if !asked[i] {
			return false
		}
	}
	return true
}
