package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// errSourceRead marks an error reading the source body.
var errSourceRead = errors.New("read source")

// settleTimeout bounds the scheduler calls that settle a fetch whose own
// context is already done.
const settleTimeout = 10 * time.Second

// fetch is one source fetch in progress. The streaming goroutine owns it,
// demand requests store pieces into its ingest next to it (demand.go);
// upload handles read from it under mu.
type fetch struct {
	taskID taskid.ID
	url    string // redacted source URL
	cancel context.CancelFunc
	done   chan struct{} // closed when the streaming goroutine has finished
	read   atomic.Int64  // bytes read from the source

	mu sync.RWMutex
	// w is the ingest while the fetch streams; nil once it is committed
	// or aborted. Only the streaming goroutine sets it.
	w content.Writer
	// blob is the committed content, open while handles taken during the
	// fetch still read from it.
	blob      content.ReaderAt
	size      int64 // -1 while unknown
	pieceSize int64
	published *piece.Set
	// cands are the sources offered for the task.
	cands *candidates
	// refs counts the open upload handles plus one for the fetch itself;
	// blob is closed when it drops to zero.
	refs int

	// log is the fetch's logger.
	log *zap.Logger
	// pmu guards prog, what is stored and being fetched piece by piece
	// (demand.go). It is a leaf lock, taken after c.dmu or f.mu.
	pmu  sync.Mutex
	prog progress
	// dctx bounds the demand requests (dwg tracks them); dcancel ends
	// them.
	dctx    context.Context
	dcancel context.CancelFunc
	dwg     sync.WaitGroup
	// queued says f is in c.demandQueue; guarded by c.dmu.
	queued bool
	// arrivals are the pieces the stream is reading and has not yet
	// published (arrival.go), at most two; guarded by pmu.
	arrivals []*arrival
	// recent are the stream's last published pieces, kept in the buffers
	// they were read into (at most keepRecent, oldest first), so that the
	// uploads reading a piece just after it is published (followers of
	// its arrival behind the read, peers it was assigned to) are served
	// from memory, not from the disk the ingest is written to around the
	// page cache; guarded by mu.
	recent []recentPiece
}

// keepRecent is how many published pieces a fetch's stream keeps in
// memory (fetch.recent), for pieces of at most maxRecentPiece bytes: up to
// two more read buffers for each fetch. All fetches together keep at most
// maxRecentBytes of pieces; beyond, a published piece's buffer goes back to
// the reader at once, as it did before pieces were kept.
const (
	keepRecent     = 2
	maxRecentPiece = 16 << 20
	maxRecentBytes = 64 << 20
)

// reserveRecent takes n bytes of the budget for kept pieces; false when
// they do not fit.
func (c *CDN) reserveRecent(n int64) bool {
	for {
		cur := c.recentBytes.Load()
		if cur+n > maxRecentBytes {
			return false
		}
		if c.recentBytes.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// recentPiece is a published piece at off, held in its read buffer until
// release gives the buffer back to the stream's reader.
type recentPiece struct {
	off     int64
	p       []byte
	release func()
}

// keepLocked keeps the published piece p at off in memory; the oldest
// beyond keepRecent goes back to the reader. f.mu is held.
func (f *fetch) keepLocked(off int64, p []byte, release func()) {
	f.recent = append(f.recent, recentPiece{off: off, p: p, release: release})
	if len(f.recent) > keepRecent {
		f.recent[0].release()
		f.recent = append(f.recent[:0], f.recent[1:]...)
	}
}

// readRecentLocked copies into p the bytes from off of the kept piece
// holding off, up to that piece's end; 0 when no kept piece holds off.
// f.mu is held, at least for reading.
func (f *fetch) readRecentLocked(p []byte, off int64) int {
	for _, r := range f.recent {
		if off >= r.off && off < r.off+int64(len(r.p)) {
			return copy(p, r.p[off-r.off:])
		}
	}
	return 0
}

// dropRecent gives every kept piece's buffer back.
func (f *fetch) dropRecent() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.recent {
		r.release()
	}
	f.recent = nil
}

// release drops one reference.
func (f *fetch) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refs--
	if f.refs == 0 && f.blob != nil {
		_ = f.blob.Close()
		f.blob = nil
	}
}

// abort discards the ingest, if any.
func (f *fetch) abort() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.w != nil {
		_ = f.w.Close()
		f.w = nil
	}
}

// startFetch asks the first candidate source that answers for the
// content, adds the task to the scheduler and leaves a goroutine streaming
// the body. When no candidate answers, the task is added failed and the
// error is nil.
func (c *CDN) startFetch(ctx context.Context, req Request, expected digest.Digest, log *zap.Logger) error {
	return c.start(ctx, req, expected, log, func(fctx context.Context, f *fetch) (opened, error) {
		src, ok := c.openNext(fctx, f, 0, -1, log)
		if !ok {
			return opened{}, f.cands.failure()
		}
		return opened{
			kind:   "source",
			size:   max(src.resp.Size, -1),
			demand: true,
			stream: func(fctx context.Context) { c.stream(fctx, f, src, expected, log) },
			abort: func() {
				src.resp.Body.Close()
				src.cancel()
			},
		}, nil
	})
}

// opened is a source a fetch has opened.
type opened struct {
	kind string // for the log: "source", "torrent"
	// size is the content's size, -1 while unknown.
	size int64
	// demand: the source serves ranges, so pieces readers want may be
	// fetched out of order (demand.go).
	demand bool
	// stream fetches the content into the fetch's ingest, then settles
	// the task; abort lets go of the source unused.
	stream func(ctx context.Context)
	abort  func()
}

// start registers a fetch of req's task, opens its source with open,
// opens the ingest, adds the task to the scheduler with the size the source
// gave and leaves a goroutine streaming it. A source that cannot be opened
// yields a task added failed with open's error, and a nil error.
func (c *CDN) start(ctx context.Context, req Request, expected digest.Digest, log *zap.Logger, open func(fctx context.Context, f *fetch) (opened, error)) error {
	f, fctx, err := c.newFetch(ctx, req, expected, log)
	if err != nil {
		return err
	}
	started := false
	defer func() {
		if !started {
			f.cancel()
			c.finish(f)
		}
	}()

	spec := scheduler.TaskSpec{ID: req.TaskID, URL: redact.URL(req.URL), PieceSize: piece.SizeFor(-1), Size: -1, ContentDigest: expected}
	src, err := open(fctx, f)
	if err != nil {
		return c.addFailed(ctx, spec, err, log)
	}
	w, err := c.store.Writer(fctx, req.TaskID.FileName())
	if err != nil {
		src.abort()
		log.Error("open ingest", zap.Error(err))
		return c.addFailed(ctx, spec, errors.New("cdn content store unavailable"), log)
	}
	size := src.size
	spec.Size, spec.PieceSize = size, piece.SizeFor(size)
	f.mu.Lock()
	f.w, f.size, f.pieceSize = w, size, spec.PieceSize
	f.mu.Unlock()
	f.pmu.Lock()
	f.prog = newProgress(size, spec.PieceSize)
	f.pmu.Unlock()
	if err := c.sched.AddTask(ctx, spec); err != nil {
		src.abort()
		f.abort()
		return fmt.Errorf("add task %s: %w", req.TaskID, err)
	}
	log.Info(src.kind+" fetch started", zap.Int64("size", size), zap.Int64("pieceSize", spec.PieceSize))
	started = true
	if src.demand && size > 0 {
		c.startDemand(f)
	}
	go src.stream(fctx)
	return nil
}

// newFetch registers a fetch of req's task, with its own context detached
// from ctx (the fetch outlives ensure, bounded by Config.FetchTimeout), and
// the task's source candidates: those members offered, req's among them.
// The caller starts it, or cancels and finishes it.
func (c *CDN) newFetch(ctx context.Context, req Request, expected digest.Digest, log *zap.Logger) (*fetch, context.Context, error) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.FetchTimeout)
	f := &fetch{taskID: req.TaskID, url: redact.URL(req.URL), cancel: cancel, done: make(chan struct{}), size: -1, published: &piece.Set{}, refs: 1, log: log}
	f.dctx, f.dcancel = context.WithCancel(fctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cancel()
		return nil, nil, ErrClosed
	}
	f.cands = c.pending[req.TaskID]
	delete(c.pending, req.TaskID)
	if f.cands == nil || expected == "" {
		f.cands = newCandidates(req)
	} else {
		f.cands.offer(req)
	}
	f.cands.refuse(c.blamed[req.TaskID], errLied)
	c.fetches[req.TaskID] = f
	return f, fctx, nil
}

// addFailed adds a task and fails it at once, so every peer learns why.
func (c *CDN) addFailed(ctx context.Context, spec scheduler.TaskSpec, cause error, log *zap.Logger) error {
	if err := c.sched.AddTask(ctx, spec); err != nil {
		return fmt.Errorf("add task %s: %w", spec.ID, err)
	}
	return c.fail(ctx, spec.ID, cause, log)
}

// finish forgets a fetch: later upload handles read the committed blob.
func (c *CDN) finish(f *fetch) {
	c.mu.Lock()
	if c.fetches[f.taskID] == f {
		delete(c.fetches, f.taskID)
	}
	c.sourceBytes[f.taskID] = f.read.Load()
	c.mu.Unlock()
	f.dropRecent()
	f.release()
	close(f.done)
}

// sourceChunk is one piece's bytes read from the source (possibly short, at
// the end), or the error that ended the reading.
type sourceChunk struct {
	p       []byte
	err     error
	release func() // gives the buffer back for the next read
}

// readPieces reads r into pieceSize chunks on its own goroutine, one chunk
// ahead of the consumer: two buffers, one being filled while the other is
// stored, and kept more for the consumer to hold on to (fetch.recent),
// allocated as the reading needs them. The chunks are pieces first,
// first+1, ...; as soon as piece n-1 is read, before waiting for a buffer
// to read piece n into, it asks
// take(n). When take says no (the piece is stored or being fetched
// elsewhere: reading it would be a waste) it calls stop at once, so that
// the source sends as little of it as possible, and ends with a chunk
// carrying errReposition. The channel is closed after the chunk carrying an
// error (io.EOF at the end), or when ctx ends.
//
// A piece is read in as many reads as the source's body answers, not at
// once: with follow set, it is told when the reading of piece n into buf
// starts, and the function it returns how much of buf is filled after each
// read, so that the piece can be served while it arrives (arrival.go).
func readPieces(ctx context.Context, r io.Reader, pieceSize int64, first, kept int, take func(n int) bool, stop func(), follow func(n int, buf []byte) func(k int)) <-chan sourceChunk {
	out := make(chan sourceChunk)
	// Every buffer fits in free: a release never blocks.
	free := make(chan []byte, 2+kept)
	allocated := 0
	get := func() []byte {
		select {
		case buf := <-free:
			return buf
		default:
		}
		if allocated < cap(free) {
			allocated++
			// Aligned: a store writing around the page cache writes it
			// as it is.
			return piece.Buffer(int(pieceSize))
		}
		select {
		case buf := <-free:
			return buf
		case <-ctx.Done():
			return nil
		}
	}
	go func() {
		defer close(out)
		next := take(first)
		if !next {
			stop()
		}
		for n := first; ; n++ {
			buf := get()
			if buf == nil {
				return
			}
			var k int
			var err error
			if next {
				k, err = readFull(r, buf, n, follow)
				if err == nil {
					if next = take(n + 1); !next {
						stop()
					}
				}
			} else {
				err = errReposition
			}
			ch := sourceChunk{p: buf[:k], err: err, release: func() { free <- buf }}
			select {
			case out <- ch:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// readFull is io.ReadFull of piece n into buf, telling follow's function
// how much of buf is filled after each read.
func readFull(r io.Reader, buf []byte, n int, follow func(n int, buf []byte) func(k int)) (int, error) {
	var filled func(k int)
	if follow != nil {
		filled = follow(n, buf)
	}
	k := 0
	var err error
	for k < len(buf) && err == nil {
		var m int
		m, err = r.Read(buf[k:])
		k += m
		if m > 0 && filled != nil {
			filled(k)
		}
	}
	switch {
	case k == len(buf):
		err = nil
	case k > 0 && errors.Is(err, io.EOF):
		err = io.ErrUnexpectedEOF
	}
	return k, err
}

// stream copies the source bodies into the ingest one piece at a time,
// moving to the next candidate when one fails, publishing each piece as
// soon as it is stored, then, once the demand requests have ended, commits
// and settles the task.
func (c *CDN) stream(ctx context.Context, f *fetch, src sourceBody, expected digest.Digest, log *zap.Logger) {
	defer f.cancel()
	defer c.finish(f)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()

	d, m, err := c.copyPieces(ctx, f, src, expected, log)
	c.stopDemand(f, true)
	c.settle(ctx, sctx, f, d, m, err, log)
}

// settle ends a fetch in the scheduler: failed with err, or succeeded with
// the committed content d (the piece metadata and the task record kept).
func (c *CDN) settle(ctx, sctx context.Context, f *fetch, d digest.Digest, m pieceMeta, err error, log *zap.Logger) {
	if err != nil {
		f.abort()
		if ctx.Err() != nil {
			err = sourceErrorMessage("", ctx.Err())
		}
		if ferr := c.fail(sctx, f.taskID, err, log); ferr != nil {
			log.Warn("settle failed task", zap.Error(ferr))
		}
		return
	}
	if err := c.cache.writeMeta(m); err != nil {
		// The blob is committed; the metadata is rebuilt from it when
		// missing.
		log.Warn("keep piece metadata", zap.Error(err))
	}
	// Every piece was hashed as it was stored, and the whole by Commit.
	c.setChecked(m)
	c.setUsage(c.usage.Load() + m.Size)
	if _, byDigest := f.taskID.Digest(); !byDigest {
		if err := c.cache.writeTask(taskRecord{TaskID: f.taskID, Digest: d, URL: f.url}); err != nil {
			log.Warn("keep task record", zap.Error(err))
		}
	}
	if err := c.sched.Succeed(sctx, f.taskID, m.Size, d); err != nil {
		log.Warn("settle task", zap.Error(err))
		return
	}
	c.metrics.fetches.WithLabelValues("succeeded").Inc()
	log.Info("source fetch done", zap.Stringer("digest", d), zap.Int64("size", m.Size), zap.Int("pieces", len(m.Pieces)))
}

// errReposition ends the reading of a body that reached a piece stored or
// claimed by a demand request: the stream reopens its source at the next
// piece missing.
var errReposition = errors.New("piece ahead already stored or being fetched")

// copyPieces reads the sources into the ingest, publishes every piece,
// checks the digest and commits the blob. It returns the content digest and
// the piece metadata. It closes every body it reads.
//
// The stream fetches the lowest piece neither stored nor claimed by a
// demand request (demand.go): when the next piece of its body is, it closes
// the body and asks its source again from the next missing piece; when its
// body ends while pieces are missing (a demand request failed), it goes back
// for them; when only pieces being fetched by demand requests are missing,
// it waits for them. The content is committed once every piece is stored,
// whichever request stored it.
//
// Three things overlap, so that a fetch keeps two cores busy: the next
// piece is read from the source while the current one is stored and hashed,
// and the piece digest is computed while the ingest writer stores the piece
// and feeds the content digest (which the writer computes as the bytes
// stream, so no one hashes the content twice).
func (c *CDN) copyPieces(ctx context.Context, f *fetch, src sourceBody, expected digest.Digest, log *zap.Logger) (digest.Digest, pieceMeta, error) {
	f.mu.RLock()
	w, size, pieceSize := f.w, f.size, f.pieceSize
	f.mu.RUnlock()

	// next returns where to read from next; done when every piece is
	// stored.
	next := func() (int64, bool, error) {
		if size < 0 {
			// No demand requests: the stored pieces are a prefix.
			f.pmu.Lock()
			defer f.pmu.Unlock()
			return f.prog.bytes, false, nil
		}
		return c.nextMissing(ctx, f, pieceSize)
	}
	storedPieces := func() int {
		f.pmu.Lock()
		defer f.pmu.Unlock()
		return f.prog.stored
	}
	stalls, stalledAt := 0, -1
	for {
		err := c.copyFrom(ctx, f, src, w, size, pieceSize)
		if err == nil && size < 0 {
			break
		}
		if err == nil || errors.Is(err, errReposition) {
			off, done, err := next()
			if err != nil {
				return "", pieceMeta{}, err
			}
			if done {
				break
			}
			// The same source again, from the next missing piece.
			f.cands.retry(src.cand)
			var ok bool
			if src, ok = c.openNext(ctx, f, off, size, log); !ok {
				if ctx.Err() != nil {
					return "", pieceMeta{}, ctx.Err()
				}
				return "", pieceMeta{}, f.cands.failure()
			}
			continue
		}
		var sf *sourceFailure
		if ctx.Err() != nil {
			return "", pieceMeta{}, ctx.Err()
		}
		if !errors.As(err, &sf) {
			return "", pieceMeta{}, err
		}
		off, done, nerr := next()
		if nerr != nil {
			return "", pieceMeta{}, nerr
		}
		if done {
			// Demand requests stored the rest.
			break
		}
		if errors.Is(sf.err, errStalled) && !f.cands.waiting() {
			// The only source left stalled: ask it again from the stored
			// pieces after a pause, unless it keeps stalling where it was.
			if n := storedPieces(); n > stalledAt {
				stalls, stalledAt = 0, n
			}
			if stalls++; stalls <= c.cfg.StallRetries {
				f.cands.retry(src.cand)
				log.Warn("source stalled; asking it again", zap.String("source", redact.URL(src.url)),
					zap.Int64("offset", off), zap.Int("attempt", stalls), zap.Error(sf.err))
				if err := sleepCtx(ctx, stallPause(c.cfg.MinSourceRateWindow, stalls)); err != nil {
					return "", pieceMeta{}, err
				}
				if off, done, nerr = next(); nerr != nil {
					return "", pieceMeta{}, nerr
				} else if done {
					break
				}
				var ok bool
				if src, ok = c.openNext(ctx, f, off, size, log); !ok {
					if ctx.Err() != nil {
						return "", pieceMeta{}, ctx.Err()
					}
					return "", pieceMeta{}, f.cands.failure()
				}
				continue
			}
		}
		f.cands.fail(src.cand, sf.err)
		c.metrics.sourcesGivenUp.Inc()
		log.Warn("source given up", zap.String("source", redact.URL(src.url)), zap.Int64("offset", off), zap.Error(sf.err))
		var ok bool
		if src, ok = c.openNext(ctx, f, off, size, log); !ok {
			if ctx.Err() != nil {
				return "", pieceMeta{}, ctx.Err()
			}
			return "", pieceMeta{}, f.cands.failure()
		}
		log.Info("source fetch resumed from another source", zap.String("source", redact.URL(src.url)), zap.Int64("offset", off))
	}
	// Every piece is stored: the demand requests left only publish.
	c.stopDemand(f, false)
	f.pmu.Lock()
	off, pieces, from, fatal := f.prog.bytes, slices.Clone(f.prog.digests), slices.Clone(f.prog.from), f.prog.fatal
	f.pmu.Unlock()
	if fatal != nil {
		return "", pieceMeta{}, fatal
	}
	if size < 0 {
		if err := c.sched.SetSize(ctx, f.taskID, off); err != nil {
			return "", pieceMeta{}, fmt.Errorf("set size: %w", err)
		}
		f.mu.Lock()
		f.size = off
		f.mu.Unlock()
	}
	d, m, err := c.commitIngest(ctx, f, w, off, expected, pieceSize, pieces)
	if errors.Is(err, content.ErrDigestMismatch) && len(from) == 1 {
		// One source sent every byte: it is the one that lied. It is
		// blamed after the readers are let go (c.mu is taken before f.mu
		// elsewhere).
		url, _, _ := f.cands.request(from[0])
		c.blame(f.taskID, url)
	}
	return d, m, err
}

// commitIngest turns the ingest w of a fetch whose every piece is stored
// into a blob, checked against expected (when set), and switches f's
// readers to it. Readers are held off meanwhile; the ingest is flushed
// first, while they still read it, so that the fsync in Commit has little
// left to write.
func (c *CDN) commitIngest(ctx context.Context, f *fetch, w content.Writer, size int64, expected digest.Digest, pieceSize int64, pieces []digest.Digest) (digest.Digest, pieceMeta, error) {
	if err := w.Sync(); err != nil {
		return "", pieceMeta{}, fmt.Errorf("sync: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	err := w.Commit(ctx, size, expected)
	if errors.Is(err, content.ErrDigestMismatch) {
		return "", pieceMeta{}, fmt.Errorf("content digest mismatch: expected %s: %w", expected, err)
	}
	if err != nil && !errors.Is(err, content.ErrAlreadyExists) {
		return "", pieceMeta{}, fmt.Errorf("commit: %w", err)
	}
	d := w.Digest()
	if d == "" {
		// Only a store that cannot name what it already has gets here.
		d = expected
	}
	_ = w.Close()
	f.w = nil
	if blob, err := c.store.ReaderAt(ctx, d); err == nil {
		f.blob = blob
	}
	return d, pieceMeta{Digest: d, Size: size, PieceSize: pieceSize, Pieces: pieces}, nil
}

// copyFrom reads one source's body, storing and publishing the pieces
// missing, and checking again those stored when the source ignored the
// range asked for and sends everything from the start. It returns nil at
// the body's end, errReposition when the body reached a piece stored or
// claimed (the source honours ranges: it is asked again past them), a
// *sourceFailure when this source is to be given up for the next, and any
// other error when the fetch cannot go on. It closes the body.
func (c *CDN) copyFrom(ctx context.Context, f *fetch, src sourceBody, w content.Writer, size, pieceSize int64) error {
	body, start := src.resp.Body, src.resp.Offset
	// A source read from another offset than asked sends everything from
	// the start: pieces stored are checked, claimed ones skipped.
	ranged := start == src.asked
	if !ranged {
		// Demand requests would ask the same source.
		c.demandOff(f, "source ignores ranges: on-demand pieces off for this fetch", nil)
	}
	// The metric counts every byte read; f.read the bytes of the pieces
	// taken from the body (what an ingest may hold, see fetching).
	cr := &countingReader{r: body, add: func(n int64) { c.metrics.sourceBytes.Add(float64(n)) }}
	var r io.Reader = cr
	if size >= 0 {
		r = io.LimitReader(cr, size-start)
	} else {
		// One byte more than allowed tells an endless body from one that
		// ends at the limit.
		r = io.LimitReader(cr, int64(c.cfg.MaxSourceSize)-start+1)
	}
	rctx, stopReading := context.WithCancel(ctx)
	var slow, stalled atomic.Bool
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		watchRate(rctx, cr, int64(c.cfg.MinSourceRate), int64(c.cfg.StallRate), c.cfg.MinSourceRateWindow, f.cands.waiting, func(st bool) {
			stalled.Store(st)
			slow.Store(true)
			src.cancel()
			body.Close() // unblocks the read in flight
		})
	}()
	first := int(start / pieceSize)
	f.pmu.Lock()
	f.prog.cur, f.prog.seqAt, f.prog.readAt = src.cand, first, first
	f.pmu.Unlock()
	take := func(n int) bool {
		f.pmu.Lock()
		defer f.pmu.Unlock()
		if ranged && n < len(f.prog.state) && f.prog.state[n] != pieceMissing {
			return false
		}
		f.prog.readAt = n
		return true
	}
	var follow func(n int, buf []byte) func(k int)
	if size >= 0 {
		follow = func(n int, buf []byte) func(k int) { return c.follow(ctx, f, n, buf, size, pieceSize) }
	}
	kept := 0
	if pieceSize <= maxRecentPiece {
		kept = keepRecent
	}
	chunks := readPieces(rctx, r, pieceSize, first, kept, take, func() {
		src.cancel()
		body.Close()
	}, follow)
	c.kickDemand()
	defer func() {
		f.pmu.Lock()
		f.prog.cur, f.prog.seqAt, f.prog.readAt = nil, -1, -1
		f.pmu.Unlock()
		stopReading()
		src.cancel()
		body.Close() // unblocks a read in flight
		for range chunks {
		}
		<-watched
		// The reader has stopped: a piece it read and nobody published
		// is no longer arriving, and its followers are cut.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		c.endArrivals(actx, f)
		cancel()
	}()

	pos := start
	for n := first; ; n++ {
		ch, ok := <-chunks
		if !ok {
			if err := ctx.Err(); err != nil {
				return err
			}
			return errors.New("source reader stopped")
		}
		// Before its buffer is read into again, the piece stops
		// arriving (a no-op once it is published).
		rel := func() {
			f.endArrival(n, "")
			ch.release()
		}
		if err := ctx.Err(); err != nil {
			rel()
			return err
		}
		if errors.Is(ch.err, errReposition) {
			rel()
			return errReposition
		}
		p := ch.p
		end := errors.Is(ch.err, io.EOF) || errors.Is(ch.err, io.ErrUnexpectedEOF)
		if ch.err != nil && !end {
			// A short piece is not stored: the next source resumes at
			// the piece's start.
			rel()
			if stalled.Load() {
				return &sourceFailure{fmt.Errorf("%w: less than %s/s over %s", errStalled, c.cfg.StallRate, c.cfg.MinSourceRateWindow)}
			}
			if slow.Load() {
				return &sourceFailure{fmt.Errorf("%w: less than %s/s over %s", errTooSlow, c.cfg.MinSourceRate, c.cfg.MinSourceRateWindow)}
			}
			return &sourceFailure{sourceErrorMessage(src.url, fmt.Errorf("%w: %w", errSourceRead, ch.err))}
		}
		if len(p) == 0 {
			rel()
			break
		}
		if _, want := piece.Bounds(n, size, pieceSize); size >= 0 && int64(len(p)) != want {
			rel()
			return &sourceFailure{fmt.Errorf("source body ended after %d of %d bytes", pos+int64(len(p)), size)}
		}
		f.pmu.Lock()
		if size < 0 {
			f.prog.grow(n)
		}
		state, stored, bytes := f.prog.state[n], f.prog.digests[n], f.prog.bytes
		if state == pieceMissing {
			f.prog.state[n] = pieceClaimed
		}
		f.pmu.Unlock()
		switch {
		case state != pieceMissing && ranged:
			rel()
			return errReposition
		case state == pieceStored:
			// Read from the start: the piece was published from
			// another source (or request) and must come again byte for
			// byte.
			same := piece.Digest(p) == stored
			f.read.Add(int64(len(p)))
			rel()
			if !same {
				return &sourceFailure{fmt.Errorf("source sends other bytes than the previous source in piece %d", n)}
			}
		case state == pieceClaimed:
			// A demand request is fetching it.
			f.read.Add(int64(len(p)))
			rel()
		default:
			// A stored piece's buffer is kept (kept > 0) or given back by
			// streamPiece.
			var keep func()
			if kept > 0 {
				keep = ch.release
			}
			err := c.streamPiece(ctx, f, w, n, pos, p, size, bytes, src.cand, keep)
			if keep == nil {
				rel()
			}
			if err != nil {
				return err
			}
		}
		pos += int64(len(p))
		f.pmu.Lock()
		f.prog.seqAt = n + 1
		f.pmu.Unlock()
		if end {
			break
		}
	}
	f.pmu.Lock()
	bytes := f.prog.bytes
	f.pmu.Unlock()
	switch {
	case size < 0 && pos < bytes:
		return &sourceFailure{fmt.Errorf("source body ended after %d bytes, before the %d already stored", pos, bytes)}
	case size >= 0 && pos != size:
		return &sourceFailure{fmt.Errorf("source body ended after %d of %d bytes", pos, size)}
	}
	return nil
}

// streamPiece stores piece n (at off), claimed by the stream, and
// publishes it; bytes is what was stored before. A piece not stored is
// released. With keep set, f keeps p in memory once it is stored
// (storePiece), and keep gives p's buffer back when f lets go of it; a
// piece not stored ends its arrival and gives its buffer back at once.
func (c *CDN) streamPiece(ctx context.Context, f *fetch, w content.Writer, n int, off int64, p []byte, size, bytes int64, cand *candidate, keep func()) error {
	err := func() error {
		if size < 0 && bytes+int64(len(p)) > int64(c.cfg.MaxSourceSize) {
			return fmt.Errorf("source sends more than cdn.maxSourceSize (%s)", c.cfg.MaxSourceSize)
		}
		return c.checkSpace(ctx, int64(len(p)))
	}()
	if err == nil {
		f.read.Add(int64(len(p)))
		err = c.storePiece(ctx, f, w, n, off, p, cand, keep)
	} else if keep != nil {
		// Not stored: the piece stops arriving before its buffer is
		// read into again.
		f.endArrival(n, "")
		keep()
	}
	if err != nil {
		f.pmu.Lock()
		f.prog.release(n, 1)
		f.pmu.Unlock()
	}
	return err
}
