package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// errSourceRead marks an error reading the source body.
var errSourceRead = errors.New("read source")

// settleTimeout bounds the scheduler calls that settle a fetch whose own
// context is already done.
const settleTimeout = 10 * time.Second

// fetch is one source fetch in progress. The streaming goroutine owns it;
// upload handles read from it under mu.
type fetch struct {
	taskID string
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

// startFetch asks the source for the content, adds the task to the
// scheduler and leaves a goroutine streaming the body. A source that refuses
// the request yields a failed task and a nil error.
func (c *CDN) startFetch(ctx context.Context, req Request, expected digest.Digest, log *zap.Logger) error {
	// The fetch gets its own detached context: it outlives ensure.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.FetchTimeout)
	f := &fetch{taskID: req.TaskID, url: redactURL(req.URL), cancel: cancel, done: make(chan struct{}), size: -1, published: &piece.Set{}, refs: 1}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cancel()
		return ErrClosed
	}
	c.fetches[req.TaskID] = f
	c.mu.Unlock()
	started := false
	defer func() {
		if !started {
			cancel()
			c.finish(f)
		}
	}()

	spec := TaskSpec{ID: req.TaskID, URL: redactURL(req.URL), PieceSize: piece.SizeFor(-1), Size: -1, ContentDigest: expected}
	resp, err := c.src.Fetch(fctx, source.Request{URL: req.URL, Header: req.Header})
	if err != nil {
		return c.addFailed(ctx, spec, sourceErrorMessage(req.URL, err), log)
	}
	size := resp.Size
	if size < -1 {
		size = -1
	}
	w, err := c.store.Writer(fctx, taskid.FileName(req.TaskID))
	if err != nil {
		resp.Body.Close()
		log.Error("open ingest", zap.Error(err))
		return c.addFailed(ctx, spec, errors.New("cdn content store unavailable"), log)
	}
	spec.Size, spec.PieceSize = size, piece.SizeFor(size)
	f.mu.Lock()
	f.w, f.size, f.pieceSize = w, size, spec.PieceSize
	f.mu.Unlock()
	if err := c.sched.AddTask(ctx, spec); err != nil {
		resp.Body.Close()
		f.abort()
		return fmt.Errorf("add task %s: %w", req.TaskID, err)
	}
	log.Info("source fetch started", zap.Int64("size", size), zap.Int64("pieceSize", spec.PieceSize))
	started = true
	go c.stream(fctx, f, resp.Body, req.URL, expected, log)
	return nil
}

// addFailed adds a task and fails it at once, so every peer learns why.
func (c *CDN) addFailed(ctx context.Context, spec TaskSpec, cause error, log *zap.Logger) error {
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

// stream copies the source body into the ingest one piece at a time,
// publishing each piece as soon as it is stored, then commits and settles
// the task.
func (c *CDN) stream(ctx context.Context, f *fetch, body io.ReadCloser, rawURL string, expected digest.Digest, log *zap.Logger) {
	defer f.cancel()
	defer c.finish(f)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()

	d, m, err := c.copyPieces(ctx, f, body, expected)
	if err != nil && errors.Is(err, errSourceRead) {
		err = sourceErrorMessage(rawURL, err)
	}
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
	if _, byDigest := taskid.Digest(f.taskID); !byDigest {
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

// copyPieces reads the body into the ingest, publishes every piece, checks
// the digest and commits the blob. It returns the content digest and the
// piece metadata. It closes body.
//
// Three things overlap, so that a fetch keeps two cores busy: the next
// piece is read from the source while the current one is stored and hashed,
// and the piece digest is computed while the ingest writer stores the piece
// and feeds the content digest (which the writer computes as the bytes
// stream, so no one hashes the content twice).
func (c *CDN) copyPieces(ctx context.Context, f *fetch, body io.ReadCloser, expected digest.Digest) (digest.Digest, pieceMeta, error) {
	f.mu.RLock()
	w, size, pieceSize := f.w, f.size, f.pieceSize
	f.mu.RUnlock()

	var r io.Reader = body
	if size >= 0 {
		r = io.LimitReader(body, size)
	}
	rctx, stopReading := context.WithCancel(ctx)
	chunks := readPieces(rctx, r, pieceSize)
	defer func() {
		stopReading()
		body.Close() // unblocks a read in flight
		for range chunks {
		}
	}()

	var pieces []digest.Digest
	var off int64
	for n := 0; ; n++ {
		ch, ok := <-chunks
		if !ok {
			return "", pieceMeta{}, ctx.Err()
		}
		if err := ctx.Err(); err != nil {
			return "", pieceMeta{}, err
		}
		if p := ch.p; len(p) > 0 {
			f.read.Add(int64(len(p)))
			c.metrics.sourceBytes.Add(float64(len(p)))
			pdc := make(chan digest.Digest, 1)
			go func() { pdc <- piece.Digest(p) }()
			_, werr := w.WriteAt(p, off)
			pd := <-pdc
			ch.release()
			if werr != nil {
				return "", pieceMeta{}, fmt.Errorf("store piece %d: %w", n, werr)
			}
			off += int64(len(p))
			pieces = append(pieces, pd)
			// Readable locally before any peer is told about it.
			f.mu.Lock()
			f.published.Add(n)
			f.mu.Unlock()
			if err := c.sched.PublishPiece(ctx, f.taskID, n, pd); err != nil {
				return "", pieceMeta{}, fmt.Errorf("publish piece %d: %w", n, err)
			}
		} else {
			ch.release()
		}
		if errors.Is(ch.err, io.EOF) || errors.Is(ch.err, io.ErrUnexpectedEOF) {
			break
		}
		if ch.err != nil {
			return "", pieceMeta{}, fmt.Errorf("%w: %w", errSourceRead, ch.err)
		}
	}
	if size >= 0 && off != size {
		return "", pieceMeta{}, fmt.Errorf("source body ended after %d of %d bytes", off, size)
	}
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
	// Readers are held off while the ingest turns into a blob.
	f.mu.Lock()
	defer f.mu.Unlock()
	err := w.Commit(ctx, off, expected)
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
	return d, pieceMeta{Digest: d, Size: off, PieceSize: pieceSize, Pieces: pieces}, nil
}
