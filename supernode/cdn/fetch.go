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

// fetch is one source fetch in progress. The streaming goroutine owns it;
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
	// The fetch gets its own detached context: it outlives ensure.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.FetchTimeout)
	f := &fetch{taskID: req.TaskID, url: redact.URL(req.URL), cancel: cancel, done: make(chan struct{}), size: -1, published: &piece.Set{}, refs: 1}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cancel()
		return ErrClosed
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
	c.mu.Unlock()
	started := false
	defer func() {
		if !started {
			cancel()
			c.finish(f)
		}
	}()

	spec := scheduler.TaskSpec{ID: req.TaskID, URL: redact.URL(req.URL), PieceSize: piece.SizeFor(-1), Size: -1, ContentDigest: expected}
	src, ok := c.openNext(fctx, f, 0, -1, log)
	if !ok {
		return c.addFailed(ctx, spec, f.cands.failure(), log)
	}
	size := src.resp.Size
	if size < -1 {
		size = -1
	}
	w, err := c.store.Writer(fctx, req.TaskID.FileName())
	if err != nil {
		src.resp.Body.Close()
		src.cancel()
		log.Error("open ingest", zap.Error(err))
		return c.addFailed(ctx, spec, errors.New("cdn content store unavailable"), log)
	}
	spec.Size, spec.PieceSize = size, piece.SizeFor(size)
	f.mu.Lock()
	f.w, f.size, f.pieceSize = w, size, spec.PieceSize
	f.mu.Unlock()
	if err := c.sched.AddTask(ctx, spec); err != nil {
		src.resp.Body.Close()
		src.cancel()
		f.abort()
		return fmt.Errorf("add task %s: %w", req.TaskID, err)
	}
	log.Info("source fetch started", zap.Int64("size", size), zap.Int64("pieceSize", spec.PieceSize))
	started = true
	go c.stream(fctx, f, src, expected, log)
	return nil
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
// stored. The channel is closed after the chunk carrying an error (io.EOF at
// the end), or when ctx ends.
func readPieces(ctx context.Context, r io.Reader, pieceSize int64) <-chan sourceChunk {
	out := make(chan sourceChunk)
	free := make(chan []byte, 2)
	free <- make([]byte, pieceSize)
	free <- make([]byte, pieceSize)
	go func() {
		defer close(out)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			k, err := io.ReadFull(r, buf)
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

// stream copies the source bodies into the ingest one piece at a time,
// moving to the next candidate when one fails, publishing each piece as
// soon as it is stored, then commits and settles the task.
func (c *CDN) stream(ctx context.Context, f *fetch, src sourceBody, expected digest.Digest, log *zap.Logger) {
	defer f.cancel()
	defer c.finish(f)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()

	d, m, err := c.copyPieces(ctx, f, src, expected, log)
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

// stored is what a fetch has stored and published so far: whole pieces,
// from the first on.
type stored struct {
	pieces []digest.Digest
	off    int64
	// from lists the sources the stored pieces came from.
	from []*candidate
}

// copyPieces reads the sources into the ingest, publishes every piece,
// checks the digest and commits the blob. It returns the content digest and
// the piece metadata. It closes every body it reads.
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

	var st stored
	stalls, stalledAt := 0, int64(-1)
	for {
		err := c.copyFrom(ctx, f, src, w, size, pieceSize, &st)
		if err == nil {
			break
		}
		var sf *sourceFailure
		if ctx.Err() != nil {
			return "", pieceMeta{}, ctx.Err()
		}
		if !errors.As(err, &sf) {
			return "", pieceMeta{}, err
		}
		if errors.Is(sf.err, errStalled) && !f.cands.waiting() {
			// The only source left stalled: ask it again from the stored
			// pieces after a pause, unless it keeps stalling where it was.
			if st.off > stalledAt {
				stalls, stalledAt = 0, st.off
			}
			if stalls++; stalls <= c.cfg.StallRetries {
				f.cands.retry(src.cand)
				log.Warn("source stalled; asking it again", zap.String("source", redact.URL(src.url)),
					zap.Int64("offset", st.off), zap.Int("attempt", stalls), zap.Error(sf.err))
				if err := sleepCtx(ctx, stallPause(c.cfg.MinSourceRateWindow, stalls)); err != nil {
					return "", pieceMeta{}, err
				}
				var ok bool
				if src, ok = c.openNext(ctx, f, st.off, size, log); !ok {
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
		log.Warn("source given up", zap.String("source", redact.URL(src.url)), zap.Int64("offset", st.off), zap.Error(sf.err))
		var ok bool
		if src, ok = c.openNext(ctx, f, st.off, size, log); !ok {
			if ctx.Err() != nil {
				return "", pieceMeta{}, ctx.Err()
			}
			return "", pieceMeta{}, f.cands.failure()
		}
		log.Info("source fetch resumed from another source", zap.String("source", redact.URL(src.url)), zap.Int64("offset", st.off))
	}
	off, pieces := st.off, st.pieces
	if size < 0 {
		if err := c.sched.SetSize(ctx, f.taskID, off); err != nil {
			return "", pieceMeta{}, fmt.Errorf("set size: %w", err)
		}
		f.mu.Lock()
		f.size = off
		f.mu.Unlock()
	}
	// Flush the ingest while peers still read it, so that the fsync in
	// Commit, which holds them off, has little left to write.
	if err := w.Sync(); err != nil {
		return "", pieceMeta{}, fmt.Errorf("sync: %w", err)
	}
	// Readers are held off while the ingest turns into a blob; a source is
	// blamed after they are let go (c.mu is taken before f.mu elsewhere).
	var liar *candidate
	defer func() {
		if liar != nil {
			url, _, _ := f.cands.request(liar)
			c.blame(f.taskID, url)
		}
	}()
	f.mu.Lock()
	defer f.mu.Unlock()
	err := w.Commit(ctx, off, expected)
	if errors.Is(err, content.ErrDigestMismatch) {
		if len(st.from) == 1 {
			// One source sent every byte: it is the one that lied.
			liar = st.from[0]
		}
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
	return d, pieceMeta{Digest: d, Size: off, PieceSize: pieceSize, Pieces: pieces}, nil
}

// copyFrom reads one source's body to the end of the content, storing and
// publishing the pieces after st and checking again those before it (a
// source read from the start). It returns nil once the content is
// complete, a *sourceFailure when this source is to be given up for the
// next, and any other error when the fetch cannot go on. It closes the
// body.
func (c *CDN) copyFrom(ctx context.Context, f *fetch, src sourceBody, w content.Writer, size, pieceSize int64, st *stored) error {
	body, start := src.resp.Body, src.resp.Offset
	cr := &countingReader{r: body}
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
	chunks := readPieces(rctx, r, pieceSize)
	defer func() {
		stopReading()
		src.cancel()
		body.Close() // unblocks a read in flight
		for range chunks {
		}
		<-watched
	}()

	pos := start
	for n := int(start / pieceSize); ; n++ {
		ch, ok := <-chunks
		if !ok {
			if err := ctx.Err(); err != nil {
				return err
			}
			return errors.New("source reader stopped")
		}
		if err := ctx.Err(); err != nil {
			ch.release()
			return err
		}
		p := ch.p
		end := errors.Is(ch.err, io.EOF) || errors.Is(ch.err, io.ErrUnexpectedEOF)
		if ch.err != nil && !end {
			// A short piece is not stored: the next source resumes at
			// the piece's start.
			ch.release()
			if stalled.Load() {
				return &sourceFailure{fmt.Errorf("%w: less than %s/s over %s", errStalled, c.cfg.StallRate, c.cfg.MinSourceRateWindow)}
			}
			if slow.Load() {
				return &sourceFailure{fmt.Errorf("%w: less than %s/s over %s", errTooSlow, c.cfg.MinSourceRate, c.cfg.MinSourceRateWindow)}
			}
			return &sourceFailure{sourceErrorMessage(src.url, fmt.Errorf("%w: %w", errSourceRead, ch.err))}
		}
		switch {
		case len(p) == 0:
			ch.release()
		case n < len(st.pieces):
			// Read from the start: the piece was published from
			// another source and must come again byte for byte.
			same := piece.Digest(p) == st.pieces[n]
			ch.release()
			if !same {
				return &sourceFailure{fmt.Errorf("source sends other bytes than the previous source in piece %d", n)}
			}
			pos += int64(len(p))
			f.read.Add(int64(len(p)))
			c.metrics.sourceBytes.Add(float64(len(p)))
		default:
			if size < 0 && st.off+int64(len(p)) > int64(c.cfg.MaxSourceSize) {
				ch.release()
				return fmt.Errorf("source sends more than cdn.maxSourceSize (%s)", c.cfg.MaxSourceSize)
			}
			if err := c.checkSpace(ctx, int64(len(p))); err != nil {
				ch.release()
				return err
			}
			f.read.Add(int64(len(p)))
			c.metrics.sourceBytes.Add(float64(len(p)))
			pdc := make(chan digest.Digest, 1)
			go func() { pdc <- piece.Digest(p) }()
			_, werr := w.WriteAt(p, st.off)
			if isNoSpace(werr) {
				// The disk filled under us: evict what is not in use
				// and write the piece again.
				c.log.Warn("cdn disk full while storing a piece: evicting and retrying", zap.Stringer("task", f.taskID), zap.Int("piece", n))
				c.makeRoom(ctx, int64(len(p)))
				_, werr = w.WriteAt(p, st.off)
			}
			pd := <-pdc
			ch.release()
			if werr != nil {
				return fmt.Errorf("store piece %d: %w", n, werr)
			}
			st.off += int64(len(p))
			pos = st.off
			st.pieces = append(st.pieces, pd)
			if !slices.Contains(st.from, src.cand) {
				st.from = append(st.from, src.cand)
			}
			// Readable locally before any peer is told about it.
			f.mu.Lock()
			f.published.Add(n)
			f.mu.Unlock()
			if err := c.sched.PublishPiece(ctx, f.taskID, n, pd); err != nil {
				return fmt.Errorf("publish piece %d: %w", n, err)
			}
		}
		if end {
			break
		}
	}
	switch {
	case pos < st.off:
		return &sourceFailure{fmt.Errorf("source body ended after %d bytes, before the %d already stored", pos, st.off)}
	case size >= 0 && st.off != size:
		return &sourceFailure{fmt.Errorf("source body ended after %d of %d bytes", st.off, size)}
	}
	return nil
}
