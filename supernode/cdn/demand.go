package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// On-demand pieces. A fetch streams its source in order, but a peer that
// reads a blob lazily (a Range reader) may want a piece far ahead of the
// stream. The scheduler tells the CDN with Demand; the pieces of a running
// fetch that are neither stored nor being fetched become the next bytes
// fetched: consecutive ones are grouped into runs (of at most maxRunBytes)
// and each run is asked of the stream's current source with one bounded
// Range request, alongside the stream. Every piece is stored and published as soon as it is whole,
// whichever request brought it. The stream skips what the demand requests
// claimed (it reopens its source past them), and goes back for pieces a
// failed demand request released, so the source sends each byte about once.
//
// A source that answers a range request with anything but that range turns
// on-demand off for the fetch: the stream does it all. A demand request that
// fails otherwise only releases its pieces; after maxDemandFailures of them
// on-demand is off for the fetch as well.

const (
	// maxDemandPerTask bounds the demand requests in flight for one fetch,
	// next to its stream.
	maxDemandPerTask = 2
	// maxDemandTotal bounds the demand requests in flight over the CDN.
	// Further demands wait for a slot.
	maxDemandTotal = 8
	// maxDemandFailures is how many demand requests of a fetch may fail
	// before on-demand is switched off for it.
	maxDemandFailures = 4
	// maxRunBytes bounds the bytes one demand request asks for (at least
	// one piece): a demand for a long stretch (readers wanting whole
	// quarters of a blob) is split into several runs, so that it does not
	// hold a slot for long while other demands wait, and the task's second
	// slot and its stream share the work instead of waiting for one
	// request.
	maxRunBytes = 32 << 20
)

// pieceState is where one piece of a fetch stands.
type pieceState uint8

const (
	pieceMissing pieceState = iota
	// pieceClaimed: a request is fetching it (a demand run), or the stream
	// is storing it.
	pieceClaimed
	pieceStored
)

// progress is what a fetch has stored and what it is fetching, piece by
// piece. It is guarded by fetch.pmu, a leaf lock: nothing is called out
// while it is held.
type progress struct {
	// state and digests have one entry per piece; for content of unknown
	// size they grow as the stream stores pieces (no demand then).
	state   []pieceState
	digests []digest.Digest
	known   bool  // the size, hence the piece count, is known
	stored  int   // pieces stored
	bytes   int64 // bytes stored
	// from lists the sources the stored pieces came from.
	from []*candidate
	// changed is closed and replaced when a piece is stored or released.
	changed chan struct{}
	// fatal is an error a demand request met that ends the fetch (the
	// scheduler refused a piece).
	fatal error

	// cur is the stream's source, the one demand requests ask; nil while
	// the stream is between sources.
	cur *candidate
	// seqAt is the piece the stream stores next and readAt the one it is
	// reading (it reads one ahead); both -1 when it is not reading. A
	// demand request leaves the pieces in between to the stream.
	seqAt, readAt int
	// wanted holds the pieces demanded and not yet claimed.
	wanted   piece.Set
	inflight int  // demand requests in flight
	failures int  // demand requests failed
	off      bool // on-demand switched off for this fetch
	closed   bool // the fetch is settling: no demand request starts
}

func newProgress(size, pieceSize int64) progress {
	p := progress{changed: make(chan struct{}), seqAt: -1, readAt: -1}
	if size >= 0 {
		n := piece.Count(size, pieceSize)
		p.state, p.digests, p.known = make([]pieceState, n), make([]digest.Digest, n), true
	}
	return p
}

func (p *progress) signal() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// complete reports whether every piece of content of known size is stored.
func (p *progress) complete() bool { return p.known && p.stored == len(p.state) }

// firstMissing returns the lowest piece neither stored nor claimed, or -1.
func (p *progress) firstMissing() int {
	for i, s := range p.state {
		if s == pieceMissing {
			return i
		}
	}
	return -1
}

// grow makes room for piece n (content of unknown size).
func (p *progress) grow(n int) {
	for len(p.state) <= n {
		p.state = append(p.state, pieceMissing)
		p.digests = append(p.digests, "")
	}
}

// store records piece n as stored, from cand.
func (p *progress) store(n int, d digest.Digest, size int64, cand *candidate) {
	p.grow(n)
	p.state[n], p.digests[n] = pieceStored, d
	p.stored++
	p.bytes += size
	if cand != nil && !slices.Contains(p.from, cand) {
		p.from = append(p.from, cand)
	}
	p.signal()
}

// release gives back pieces [first, first+count) not stored.
func (p *progress) release(first, count int) {
	for n := first; n < first+count && n < len(p.state); n++ {
		if p.state[n] == pieceClaimed {
			p.state[n] = pieceMissing
		}
	}
	p.signal()
}

// nearStream reports whether the stream is reading piece n already, or
// reads it next: the bytes of the piece after the one being read may be on
// the wire already, and a range request for it would fetch them twice.
func (p *progress) nearStream(n int) bool {
	return p.seqAt >= 0 && n >= p.seqAt && n <= p.readAt+1
}

// demandable reports whether demand requests may start for this fetch.
func (p *progress) demandable() bool {
	return p.known && !p.off && !p.closed
}

// want adds the pieces to the wanted set when a demand request could fetch
// them. It reports whether any was added.
func (p *progress) want(pieces []int) bool {
	if !p.demandable() {
		return false
	}
	added := false
	for _, n := range pieces {
		if n < 0 || n >= len(p.state) || p.state[n] != pieceMissing || p.nearStream(n) || p.wanted.Has(n) {
			continue
		}
		p.wanted.Add(n)
		added = true
	}
	return added
}

// nextRun claims the next run of consecutive wanted pieces for a demand
// request, when the fetch has a slot and a source.
func (p *progress) nextRun(pieceSize int64) (first, count int, ok bool) {
	if !p.demandable() || p.inflight >= maxDemandPerTask || p.cur == nil {
		return 0, 0, false
	}
	most := max(int(maxRunBytes/pieceSize), 1)
	for _, n := range p.wanted.Indices() {
		if p.state[n] != pieceMissing || p.nearStream(n) {
			p.wanted.Remove(n)
			continue
		}
		end := n
		for end+1 < len(p.state) && end+1-n < most && p.wanted.Has(end+1) && p.state[end+1] == pieceMissing && !p.nearStream(end+1) {
			end++
		}
		for i := n; i <= end; i++ {
			p.state[i] = pieceClaimed
			p.wanted.Remove(i)
		}
		return n, end - n + 1, true
	}
	return 0, 0, false
}

// hasWanted reports whether demanded pieces wait for a request.
func (p *progress) hasWanted() bool {
	return p.demandable() && p.wanted.Len() > 0
}

// switchOff turns on-demand off; it reports whether it was on.
func (p *progress) switchOff() bool {
	was := !p.off
	p.off = true
	p.wanted = piece.Set{}
	return was
}

// Demand asks that the given pieces of a task be fetched from its source
// next, out of order, when the task's fetch is running and they are
// neither stored nor being fetched. It never blocks and never calls the
// scheduler: it records the demand and returns, so the scheduler may call
// it from its event loop, as often as it likes with the same pieces. A
// demand for a task not being fetched (settled, unknown), of unknown size,
// for pieces out of range or while on-demand is off for the fetch is
// ignored. The pieces are published as usual once stored. At most
// maxDemandPerTask requests run per fetch and maxDemandTotal in all; the
// pieces demanded beyond wait, once each, for a slot.
func (c *CDN) Demand(taskID taskid.ID, pieces []int) {
	if len(pieces) == 0 {
		return
	}
	c.dmu.Lock()
	defer c.dmu.Unlock()
	f := c.demandable[taskID]
	if f == nil {
		return
	}
	f.pmu.Lock()
	added := f.prog.want(pieces)
	f.pmu.Unlock()
	if !added {
		return
	}
	if !f.queued {
		f.queued = true
		c.demandQueue = append(c.demandQueue, f)
	}
	c.dispatchDemand()
}

// kickDemand starts the demand requests that can start (a stream has a new
// source for them to ask).
func (c *CDN) kickDemand() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.dispatchDemand()
}

// dispatchDemand starts demand requests while slots are free, fetches in
// the order their demands came. c.dmu must be held.
func (c *CDN) dispatchDemand() {
	keep := c.demandQueue[:0]
	for _, f := range c.demandQueue {
		for c.demandRunning < maxDemandTotal {
			f.pmu.Lock()
			first, count, ok := f.prog.nextRun(f.pieceSize)
			if ok {
				f.prog.inflight++
				f.dwg.Add(1)
			}
			f.pmu.Unlock()
			if !ok {
				break
			}
			c.demandRunning++
			go c.fetchRun(f, first, count)
		}
		f.pmu.Lock()
		more := f.prog.hasWanted()
		f.pmu.Unlock()
		if more {
			keep = append(keep, f)
		} else {
			f.queued = false
		}
	}
	clear(c.demandQueue[len(keep):])
	c.demandQueue = keep
}

// startDemand lets Demand reach f (a fetch of known size that started).
func (c *CDN) startDemand(f *fetch) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.demandable[f.taskID] = f
}

// stopDemand stops the demand requests of f: none starts any more, and it
// returns once those in flight have ended. With cancel, they are cut short;
// without, they run to their end (every piece being stored, they only
// publish their last ones). It may be called more than once.
func (c *CDN) stopDemand(f *fetch, cancel bool) {
	c.dmu.Lock()
	if c.demandable[f.taskID] == f {
		delete(c.demandable, f.taskID)
	}
	f.pmu.Lock()
	f.prog.closed = true
	f.pmu.Unlock()
	if f.queued {
		f.queued = false
		c.demandQueue = slices.DeleteFunc(c.demandQueue, func(q *fetch) bool { return q == f })
	}
	c.dmu.Unlock()
	if cancel {
		f.dcancel()
	}
	f.dwg.Wait()
	f.dcancel()
}

// demandResult is how a demand request ended, as counted.
type demandResult string

const (
	demandSucceeded   demandResult = "succeeded"
	demandFailed      demandResult = "failed"
	demandUnsupported demandResult = "unsupported"
	// demandCancelled: the fetch ended, or its stream was between sources.
	demandCancelled demandResult = "cancelled"
)

// fetchRun fetches pieces [first, first+count) of f with one bounded
// request to the stream's source, storing and publishing each piece once
// whole. Pieces it does not store are released for the stream.
func (c *CDN) fetchRun(f *fetch, first, count int) {
	result := demandFailed
	defer func() { c.endRun(f, first, count, result) }()

	f.mu.RLock()
	w, size, pieceSize := f.w, f.size, f.pieceSize
	f.mu.RUnlock()
	f.pmu.Lock()
	cand := f.prog.cur
	f.pmu.Unlock()
	if w == nil || cand == nil {
		result = demandCancelled
		return
	}
	ctx, cancel := context.WithCancel(f.dctx)
	defer cancel()
	defer func() {
		if result == demandFailed && f.dctx.Err() != nil {
			result = demandCancelled
		}
	}()
	off, _ := piece.Bounds(first, size, pieceSize)
	lastOff, lastLen := piece.Bounds(first+count-1, size, pieceSize)
	length := lastOff + lastLen - off
	log := f.log.With(zap.Int("piece", first), zap.Int("pieces", count))
	if err := c.checkSpace(ctx, length); err != nil {
		log.Debug("demand request not started", zap.Error(err))
		return
	}
	url, header, _ := f.cands.request(cand)
	resp, err := c.src.Fetch(ctx, source.Request{URL: url, Header: header, Offset: off, Length: length})
	if err == nil && (resp.Offset != off || (resp.Size >= 0 && resp.Size != size)) {
		resp.Body.Close()
		err = fmt.Errorf("source answered from byte %d of %d bytes, not %d of %d: %w", resp.Offset, resp.Size, off, size, source.ErrBadRange)
	}
	if err != nil {
		if errors.Is(err, source.ErrBadRange) {
			result = demandUnsupported
			c.demandOff(f, "source does not serve ranges: on-demand pieces off for this fetch", sourceErrorMessage(url, err))
			return
		}
		log.Debug("demand request failed", zap.Error(sourceErrorMessage(url, err)))
		return
	}
	defer resp.Body.Close()
	cr := &countingReader{r: resp.Body, add: func(n int64) {
		c.metrics.sourceBytes.Add(float64(n))
		c.metrics.demandBytes.Add(float64(n))
	}}
	// A stall cuts the request short; the stream gets the pieces.
	var stalled atomic.Bool
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		watchRate(ctx, cr, 0, int64(c.cfg.StallRate), c.cfg.MinSourceRateWindow, func() bool { return false }, func(bool) {
			stalled.Store(true)
			cancel()
		})
	}()
	defer func() { cancel(); <-watched }()
	r := io.LimitReader(cr, length)
	buf := make([]byte, pieceSize)
	for n := first; n < first+count; n++ {
		_, plen := piece.Bounds(n, size, pieceSize)
		p := buf[:plen]
		if _, err := io.ReadFull(r, p); err != nil {
			if !stalled.Load() && ctx.Err() != nil {
				return
			}
			log.Debug("demand request broke", zap.Bool("stalled", stalled.Load()), zap.Error(sourceErrorMessage(url, err)))
			return
		}
		f.read.Add(plen)
		if err := c.storePiece(ctx, f, w, n, int64(n)*pieceSize, p, cand, nil); err != nil {
			if errors.Is(err, errPublish) {
				f.pmu.Lock()
				f.prog.fatal = err
				f.prog.signal()
				f.pmu.Unlock()
			}
			log.Debug("demand piece not stored", zap.Error(err))
			return
		}
	}
	result = demandSucceeded
	log.Debug("demand request done", zap.Int64("bytes", length))
}

// endRun releases what a demand request did not store, counts it and lets
// the next one start.
func (c *CDN) endRun(f *fetch, first, count int, result demandResult) {
	c.metrics.demandFetches.WithLabelValues(string(result)).Inc()
	c.dmu.Lock()
	c.demandRunning--
	f.pmu.Lock()
	f.prog.inflight--
	f.prog.release(first, count)
	off := false
	if result == demandFailed || result == demandUnsupported {
		f.prog.failures++
		off = f.prog.failures >= maxDemandFailures && f.prog.switchOff()
	}
	f.pmu.Unlock()
	c.dispatchDemand()
	c.dmu.Unlock()
	if off {
		f.log.Warn("demand requests keep failing: on-demand pieces off for this fetch", zap.Int("failed", maxDemandFailures))
	}
	f.dwg.Done()
}

// demandOff switches on-demand off for f, logging once.
func (c *CDN) demandOff(f *fetch, msg string, cause error) {
	f.pmu.Lock()
	was := f.prog.switchOff()
	f.pmu.Unlock()
	if was {
		f.log.Info(msg, zap.Error(cause))
	}
}

// errPublish marks a piece the scheduler refused: the fetch cannot go on.
var errPublish = errors.New("publish piece")

// storePiece writes piece n of f (claimed by the caller) into the ingest,
// records it stored from cand and publishes it: readable locally before any
// peer is told. A full disk is made room on once. A piece that could not be
// written stays claimed: the caller releases it. With keep set, storePiece
// owns p's buffer: a stored piece is kept in memory (fetch.recent) from the
// moment it is readable, while the CDN-wide budget for kept pieces
// (maxRecentBytes) allows, and keep gives the buffer back when it leaves;
// a piece not kept ends its arrival and is given back before storePiece
// returns.
func (c *CDN) storePiece(ctx context.Context, f *fetch, w content.Writer, n int, off int64, p []byte, cand *candidate, keep func()) error {
	kept := false
	if keep != nil {
		defer func() {
			if !kept {
				f.endArrival(n, "") // a no-op once published
				keep()
			}
		}()
	}
	pdc := make(chan digest.Digest, 1)
	go func() { pdc <- piece.Digest(p) }()
	_, werr := w.WriteAt(p, off)
	if isNoSpace(werr) {
		// The disk filled under us: evict what is not in use and write
		// the piece again.
		c.log.Warn("cdn disk full while storing a piece: evicting and retrying", zap.Stringer("task", f.taskID), zap.Int("piece", n))
		c.makeRoom(ctx, int64(len(p)))
		_, werr = w.WriteAt(p, off)
	}
	pd := <-pdc
	if werr != nil {
		return fmt.Errorf("store piece %d: %w", n, werr)
	}
	f.pmu.Lock()
	f.prog.store(n, pd, int64(len(p)), cand)
	f.pmu.Unlock()
	f.mu.Lock()
	if keep != nil && c.reserveRecent(int64(cap(p))) {
		kept = true
		held := int64(cap(p))
		f.keepLocked(off, p, func() {
			c.recentBytes.Add(-held)
			keep()
		})
	}
	f.published.Add(n)
	f.mu.Unlock()
	if err := c.sched.PublishPiece(ctx, f.taskID, n, pd); err != nil {
		return fmt.Errorf("%w %d: %w", errPublish, n, err)
	}
	// Published: the followers of its arrival get the digest.
	f.endArrival(n, pd)
	return nil
}

// nextMissing returns the offset of the lowest piece of f neither stored
// nor claimed, waiting while the only pieces missing are being fetched by
// demand requests; done when every piece is stored.
func (c *CDN) nextMissing(ctx context.Context, f *fetch, pieceSize int64) (off int64, done bool, err error) {
	for {
		f.pmu.Lock()
		fatal, complete, n, ch := f.prog.fatal, f.prog.complete(), f.prog.firstMissing(), f.prog.changed
		f.pmu.Unlock()
		switch {
		case fatal != nil:
			return 0, false, fatal
		case complete:
			return 0, true, nil
		case n >= 0:
			return int64(n) * pieceSize, false, nil
		}
		select {
		case <-ctx.Done():
			return 0, false, ctx.Err()
		case <-ch:
		}
	}
}
