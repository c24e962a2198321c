package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
)

// writebackEvery is how many bytes an ingest takes before the kernel is
// asked to start writing them to disk. Without it a large ingest stays dirty
// in the page cache until Commit's fsync, which then writes it all while
// the last readers wait.
const writebackEvery = 32 << 20

// hashReadBuf is the buffer size used to read back written ranges that the
// growing hashed prefix reaches.
const hashReadBuf = 256 << 10

// writer is one ingest. WriteAt and ReadAt may be called concurrently on
// disjoint ranges; Write must not be called concurrently with another Write.
//
// Lock order: ioMu, then hashMu, then mu. WriteAt holds ioMu shared while it
// writes to the file and hashes, so Commit and Close (which hold it
// exclusively) never race with a write in flight. Hashing has its own lock so
// that reading back a long range does not block bookkeeping (Status, other
// writers recording their ranges).
type writer struct {
	store     *Store
	ref       string
	file      *os.File
	startedAt time.Time

	// direct is file opened again with O_DIRECT (WithDirectIO), nil when
	// the store does not use it or the filesystem refused it.
	direct atomic.Pointer[os.File]
	// noHash: SkipHash was called; nothing is hashed until Commit.
	noHash atomic.Bool
	// dropped holds a direct descriptor given up on, until the writer ends.
	dropped atomic.Pointer[os.File]

	ioMu sync.RWMutex

	hashMu  sync.Mutex
	hasher  digest.Digester
	hashed  int64 // length of the prefix fed to hasher
	hashErr error // a read-back failure; the hash is unusable

	// hashedAt and hashFailed mirror hashed and hashErr != nil for
	// advanceHash's look after it released hashMu.
	hashedAt   atomic.Int64
	hashFailed atomic.Bool

	// dirty counts the bytes written since writeback was last started;
	// writingBack is set while a goroutine starts it.
	dirty       atomic.Int64
	writingBack atomic.Bool

	mu        sync.Mutex
	spans     []span // written ranges: sorted, disjoint, not adjacent
	appendOff int64  // where the next Write lands
	updatedAt time.Time
	dgst      digest.Digest
	done      bool // committed, failed to commit, or closed: no more writes
	closed    bool
}

// span is the half-open byte range [start, end).
type span struct{ start, end int64 }

// addSpan inserts [s, e) into spans, merging it with every span it overlaps
// or touches.
func addSpan(spans []span, s, e int64) []span {
	if s >= e {
		return spans
	}
	i := sort.Search(len(spans), func(i int) bool { return spans[i].end >= s })
	j := i
	for j < len(spans) && spans[j].start <= e {
		s = min(s, spans[j].start)
		e = max(e, spans[j].end)
		j++
	}
	return slices.Replace(spans, i, j, span{s, e})
}

// prefix returns the length of the contiguous written prefix.
func prefix(spans []span) int64 {
	if len(spans) == 0 || spans[0].start != 0 {
		return 0
	}
	return spans[0].end
}

func (w *writer) closedErr() error {
	return fmt.Errorf("ingest %s: %w", w.ref, fs.ErrClosed)
}

// ended returns closedErr once the writer was committed or closed, else nil.
func (w *writer) ended() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return w.closedErr()
	}
	return nil
}

// Write appends p at the append offset (the end of the previous Write).
func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	off := w.appendOff
	w.appendOff += int64(len(p))
	w.mu.Unlock()
	n, err := w.WriteAt(p, off)
	if n < len(p) {
		w.mu.Lock()
		if w.appendOff == off+int64(len(p)) {
			w.appendOff = off + int64(n)
		}
		w.mu.Unlock()
	}
	return n, err
}

// WriteAt writes p at off. Bytes already written at those offsets must be
// the same bytes.
func (w *writer) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || int64(len(p)) > math.MaxInt64-off {
		return 0, fmt.Errorf("ingest %s: write at %d: invalid offset", w.ref, off)
	}
	w.ioMu.RLock()
	defer w.ioMu.RUnlock()
	if err := w.ended(); err != nil {
		return 0, err
	}
	n, err := w.writeAt(p, off)
	if n > 0 {
		w.mu.Lock()
		w.spans = addSpan(w.spans, off, off+int64(n))
		w.updatedAt = time.Now()
		w.mu.Unlock()
		w.advanceHash(p[:n], off)
		w.writeBehind(int64(n))
	}
	if err != nil {
		return n, fmt.Errorf("ingest %s: write: %w", w.ref, err)
	}
	return n, nil
}

// writeAt writes p at off, the aligned part around the page cache when the
// writer can.
func (w *writer) writeAt(p []byte, off int64) (int, error) {
	n := 0
	if df := w.direct.Load(); df != nil {
		m, err := directWrite(df, p, off)
		if err != nil {
			w.store.log.Debug("direct write failed, ingest uses the page cache", zap.String("ref", w.ref), zap.Error(err))
			if w.direct.CompareAndSwap(df, nil) {
				// In-flight writes and reads may still use it: it is
				// closed with the writer (closeFiles).
				w.dropped.Store(df)
			}
			m = 0
		}
		n = m
	}
	if n == len(p) {
		return n, nil
	}
	m, err := w.file.WriteAt(p[n:], off+int64(n))
	return n + m, err
}

// SkipHash stops hashing as bytes arrive (content.VouchedWriter).
func (w *writer) SkipHash() { w.noHash.Store(true) }

// closeFiles closes the ingest's file descriptors.
func (w *writer) closeFiles() {
	_ = w.file.Close()
	if df := w.direct.Swap(nil); df != nil {
		_ = df.Close()
	}
	if df := w.dropped.Swap(nil); df != nil {
		_ = df.Close()
	}
}

// writeBehind starts writeback of the file, on another goroutine, once
// writebackEvery bytes have been written since the last time.
func (w *writer) writeBehind(n int64) {
	if w.dirty.Add(n) < writebackEvery || !w.writingBack.CompareAndSwap(false, true) {
		return
	}
	w.dirty.Store(0)
	go func() {
		defer w.writingBack.Store(false)
		// A file closed meanwhile fails here, harmlessly.
		_ = startWriteback(w.file)
	}()
}

// advanceHash extends the hashed prefix as far as the written ranges allow.
// p, just written at off, is hashed directly when it continues the prefix;
// ranges written earlier that the prefix now reaches are read back from the
// file (normally from the page cache).
//
// A writer never waits for another one's hashing: when the hash is busy,
// the goroutine hashing looks at the written ranges again before it lets
// go, and once more after, so a range recorded while it hashed is never
// left behind.
func (w *writer) advanceHash(p []byte, off int64) {
	if w.noHash.Load() {
		return
	}
	for {
		if !w.hashMu.TryLock() {
			return
		}
		w.hashLocked(p, off)
		p = nil
		w.hashMu.Unlock()
		w.mu.Lock()
		more := prefix(w.spans) > w.hashedAt.Load()
		w.mu.Unlock()
		if !more || w.hashFailed.Load() {
			return
		}
	}
}

// hashLocked does advanceHash's work. w.hashMu must be held.
func (w *writer) hashLocked(p []byte, off int64) {
	if w.hashErr != nil {
		return
	}
	defer func() { w.hashedAt.Store(w.hashed) }()
	if end := off + int64(len(p)); off <= w.hashed && end > w.hashed {
		_, _ = w.hasher.Hash().Write(p[w.hashed-off:])
		w.hashed = end
	}
	var buf []byte
	for {
		w.mu.Lock()
		to := prefix(w.spans)
		w.mu.Unlock()
		if to <= w.hashed {
			return
		}
		if buf == nil {
			buf = make([]byte, min(hashReadBuf, to-w.hashed))
		}
		for w.hashed < to {
			chunk := buf[:min(int64(len(buf)), to-w.hashed)]
			n, err := w.readAt(chunk, w.hashed)
			_, _ = w.hasher.Hash().Write(chunk[:n])
			w.hashed += int64(n)
			if err != nil && w.hashed < to {
				w.hashErr = fmt.Errorf("read back ingest at %d: %w", w.hashed, err)
				w.hashFailed.Store(true)
				w.store.log.Warn("hash ingest", zap.String("ref", w.ref), zap.Error(err))
				return
			}
		}
	}
}

// ReadAt reads bytes of the ingest. It fails once the writer has committed
// or closed.
func (w *writer) ReadAt(p []byte, off int64) (int, error) {
	if err := w.ended(); err != nil {
		return 0, err
	}
	n, err := w.readAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("ingest %s: read: %w", w.ref, err)
	}
	return n, err
}

// readAt reads the ingest file, around the page cache when the writer
// writes around it.
func (w *writer) readAt(p []byte, off int64) (int, error) {
	if df := w.direct.Load(); df != nil && w.store.directReads {
		return directReadAt(df, p, off)
	}
	return w.file.ReadAt(p, off)
}

// Sync flushes the ingest file to disk. It holds ioMu shared, like WriteAt,
// so it runs alongside writes and reads; Commit's own fsync then has little
// left to write.
func (w *writer) Sync() error {
	w.ioMu.RLock()
	defer w.ioMu.RUnlock()
	if err := w.ended(); err != nil {
		return err
	}
	if err := w.file.Sync(); err != nil {
		return fmt.Errorf("ingest %s: sync: %w", w.ref, err)
	}
	return nil
}

// Digest returns the committed digest, or "" before a successful Commit.
func (w *writer) Digest() digest.Digest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dgst
}

// Status describes the ingest.
func (w *writer) Status() (content.Status, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return content.Status{}, fmt.Errorf("ingest %s: %w", w.ref, content.ErrNotFound)
	}
	var written int64
	for _, s := range w.spans {
		written += s.end - s.start
	}
	return content.Status{
		Ref:       w.ref,
		Offset:    prefix(w.spans),
		Written:   written,
		StartedAt: w.startedAt,
		UpdatedAt: w.updatedAt,
	}, nil
}

// Commit checks and publishes the ingest. See content.Writer.
func (w *writer) Commit(ctx context.Context, size int64, expected digest.Digest) error {
	return w.commit(ctx, size, expected, false)
}

// CommitVouched publishes the ingest as dgst without hashing it. See
// content.VouchedWriter.
func (w *writer) CommitVouched(ctx context.Context, size int64, dgst digest.Digest) error {
	if dgst == "" {
		return fmt.Errorf("commit %s: a vouched commit needs a digest: %w", w.ref, content.ErrInvalid)
	}
	return w.commit(ctx, size, dgst, true)
}

func (w *writer) commit(ctx context.Context, size int64, expected digest.Digest, vouched bool) error {
	if expected != "" {
		if err := validateDigest(expected); err != nil {
			return fmt.Errorf("commit %s: %w", w.ref, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w.ioMu.Lock()
	defer w.ioMu.Unlock()
	if err := w.ended(); err != nil {
		return err
	}
	// No write is in flight (ioMu): hash whatever the prefix still lacks,
	// normally nothing (all of it after SkipHash, unless vouched).
	var hashErr error
	dgst := expected
	if !vouched {
		w.hashMu.Lock()
		w.hashLocked(nil, 0)
		hashErr, dgst = w.hashErr, w.hasher.Digest()
		w.hashMu.Unlock()
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	complete := size >= 0 && ((size == 0 && len(w.spans) == 0) ||
		(len(w.spans) == 1 && w.spans[0] == span{0, size}))
	if !complete {
		var written int64
		for _, s := range w.spans {
			written += s.end - s.start
		}
		w.discard()
		return fmt.Errorf("commit %s: want %d bytes, have %d contiguous and %d in total: %w",
			w.ref, size, prefix(w.spans), written, content.ErrSizeMismatch)
	}
	if hashErr != nil {
		w.discard()
		return fmt.Errorf("commit %s: %w", w.ref, hashErr)
	}
	if expected != "" && dgst != expected {
		w.discard()
		return fmt.Errorf("commit %s: got %s, want %s: %w", w.ref, dgst, expected, content.ErrDigestMismatch)
	}
	if err := w.file.Sync(); err != nil {
		w.discard()
		return fmt.Errorf("commit %s: sync: %w", w.ref, err)
	}
	if df := w.direct.Swap(nil); df != nil {
		_ = df.Close()
	}
	if err := w.file.Close(); err != nil {
		w.discard()
		return fmt.Errorf("commit %s: close: %w", w.ref, err)
	}

	s := w.store
	target := s.blobPath(dgst)
	if fi, err := os.Lstat(target); err == nil && s.verify.verified(dgst, StampOf(fi)) {
		w.dgst = dgst
		w.discard()
		return fmt.Errorf("commit %s: content %s: %w", w.ref, dgst, content.ErrAlreadyExists)
	}
	// A blob already there that this store has not verified (an earlier
	// run's, or changed on disk since) is replaced by these verified bytes.
	dir := s.ingestDir(w.ref)
	// The blobs directory may have been removed under a running store.
	if err := os.MkdirAll(s.blobDir(), dirPerm); err != nil {
		w.discard()
		return fmt.Errorf("commit %s: %w", w.ref, err)
	}
	if err := os.Rename(filepath.Join(dir, "data"), target); err != nil {
		w.discard()
		return fmt.Errorf("commit %s: publish: %w", w.ref, err)
	}
	if err := syncDir(s.blobDir()); err != nil {
		// The blob is published; only its durability across a power cut is
		// in doubt. Keep it: its bytes were verified and fsynced.
		s.log.Warn("sync blob dir", zap.Stringer("digest", dgst), zap.Error(err))
	}
	if fi, err := os.Lstat(target); err == nil {
		s.verify.set(dgst, StampOf(fi))
	}
	w.dgst = dgst
	w.discard()
	return nil
}

// discard ends the writer: closes the file, removes the ingest directory and
// releases the ref. w.mu must be held.
func (w *writer) discard() {
	if w.done {
		return
	}
	w.done = true
	w.closeFiles()
	s := w.store
	if err := os.RemoveAll(s.ingestDir(w.ref)); err != nil {
		s.log.Warn("remove ingest", zap.String("ref", w.ref), zap.Error(err))
	}
	s.mu.Lock()
	if s.active[w.ref] == w {
		delete(s.active, w.ref)
	}
	s.mu.Unlock()
}

// Close releases the ref; an uncommitted ingest is removed.
func (w *writer) Close() error {
	w.ioMu.Lock()
	defer w.ioMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	w.discard()
	return nil
}
