package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/taskid"
)

var (
	_ upload.Tasks    = (*CDN)(nil)
	_ upload.FileTask = (*handle)(nil)
)

// errGone is returned by reads of a fetch that was aborted.
var errGone = errors.New("cdn task content is gone")

// Open opens a task's content for the upload server: the ingest of a fetch
// in progress (only published pieces are Verified), or the committed blob.
// It returns an error wrapping ErrNotFound and upload.ErrNotFound when the
// CDN has neither.
func (c *CDN) Open(ctx context.Context, taskID taskid.ID) (upload.Task, error) {
	c.mu.Lock()
	f := c.fetches[taskID]
	if f != nil {
		// finish removes f from the map under c.mu before it drops its
		// own reference, so f is still referenced here.
		f.mu.Lock()
		f.refs++
		f.mu.Unlock()
	}
	c.mu.Unlock()
	if f != nil {
		return &handle{f: f}, nil
	}

	d, ok := taskID.Digest()
	if !ok {
		if d, ok = c.cache.taskDigest(taskID); !ok {
			// The task record may be lost while the scheduler still
			// serves the task: its content digest names the blob.
			if d, ok = c.settledDigest(ctx, taskID); !ok {
				return nil, fmt.Errorf("open task %s: %w: %w", taskID, ErrNotFound, upload.ErrNotFound)
			}
		}
	}
	ra, e, err := c.openChecked(ctx, d)
	if errors.Is(err, content.ErrNotFound) {
		// Content the scheduler still hands out is gone or failed its
		// check: drop its tasks so that they are fetched again instead of
		// failing every peer.
		c.dropContent(ctx, d, err, taskID)
		return nil, fmt.Errorf("open task %s: %w: %w", taskID, ErrNotFound, upload.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open task %s: %w", taskID, err)
	}
	c.mu.Lock()
	c.uploads[d]++
	c.mu.Unlock()
	pc := &pieceCheck{c: c, taskID: taskID, entry: e, meta: e.meta}
	pc.st, pc.stamped = stampOf(ra)
	return &handle{blob: ra, check: pc, c: c}, nil
}

// openChecked opens committed blob d, a file the store has checked (it
// hashes a blob again whenever its file changed), with piece metadata this
// process has checked against it. A blob opened once per request is never
// an old file kept open.
func (c *CDN) openChecked(ctx context.Context, d digest.Digest) (content.ReaderAt, *checkedBlob, error) {
	ra, err := c.store.ReaderAt(ctx, d)
	if err != nil {
		return nil, nil, err
	}
	if e, ok := c.checkedEntry(d); ok && e.meta.Size == ra.Size() {
		return ra, e, nil
	}
	_ = ra.Close()
	if _, err := c.checkContent(ctx, d, nil); err != nil {
		return nil, nil, err
	}
	if ra, err = c.store.ReaderAt(ctx, d); err != nil {
		return nil, nil, err
	}
	e, ok := c.checkedEntry(d)
	if !ok || ra.Size() != e.meta.Size {
		_ = ra.Close()
		return nil, nil, fmt.Errorf("content %s changed while it was checked", d)
	}
	return ra, e, nil
}

// handle reads one task's content for the upload server. It is safe for
// concurrent use.
type handle struct {
	// Exactly one of f (a fetch, possibly finished by now) and blob (a
	// committed blob) is set.
	f    *fetch
	blob content.ReaderAt
	// check hashes the pieces of blob reads reach (nil for f); c counts
	// the uploads of blob.
	check     *pieceCheck
	c         *CDN
	checkMu   sync.Mutex
	closeOnce sync.Once
}

// ReadAt reads content bytes. Callers read Verified ranges only.
func (h *handle) ReadAt(p []byte, off int64) (int, error) {
	if h.blob != nil {
		h.checkMu.Lock()
		err := h.check.check(h.blob, off, int64(len(p)))
		h.checkMu.Unlock()
		if err != nil {
			return 0, err
		}
		return h.blob.ReadAt(p, off)
	}
	f := h.f
	f.mu.RLock()
	defer f.mu.RUnlock()
	switch {
	case f.w != nil:
		return f.w.ReadAt(p, off)
	case f.blob != nil:
		return f.blob.ReadAt(p, off)
	}
	return 0, errGone
}

// sendableFile is a committed blob's reader that reads a file sendfile(2)
// can send from (a local store's reader is an *os.File).
type sendableFile interface {
	io.ReadSeeker
	syscall.Conn
}

// FileRange checks the pieces [off, off+n) reaches, as ReadAt does, and
// returns a reader of those bytes of the committed blob's file, positioned
// for sendfile. It declines (nil, nil) for a fetch's content, whose ingest
// and blob the fetch's handles share, and for a store that does not read
// files. The handle's file is its own (Open opens it per request), so
// moving its offset disturbs no other reader; calls must not overlap.
func (h *handle) FileRange(off, n int64) (io.Reader, error) {
	if h.blob == nil {
		return nil, nil
	}
	sf, ok := h.blob.(sendableFile)
	if !ok {
		return nil, nil
	}
	h.checkMu.Lock()
	err := h.check.check(h.blob, off, n)
	h.checkMu.Unlock()
	if err != nil {
		return nil, err
	}
	if _, err := sf.Seek(off, io.SeekStart); err != nil {
		return nil, fmt.Errorf("seek to %d: %w", off, err)
	}
	return &io.LimitedReader{R: sf, N: n}, nil
}

// Size returns the content size, or -1 while a fetch has not learned it.
func (h *handle) Size() int64 {
	if h.blob != nil {
		return h.blob.Size()
	}
	h.f.mu.RLock()
	defer h.f.mu.RUnlock()
	return h.f.size
}

// Verified reports whether every byte of [off, off+n) belongs to a piece
// that is stored and published (all of them once the content is committed).
func (h *handle) Verified(off, n int64) bool {
	if off < 0 || n <= 0 {
		return false
	}
	if h.blob != nil {
		return off+n <= h.blob.Size()
	}
	f := h.f
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.size >= 0 && off+n > f.size {
		return false
	}
	if f.blob != nil {
		return true
	}
	if f.w == nil {
		return false
	}
	return f.published.HasRange(piece.Index(off, f.pieceSize), piece.Index(off+n-1, f.pieceSize))
}

// Close releases the handle.
func (h *handle) Close() error {
	h.closeOnce.Do(func() {
		if h.blob != nil {
			_ = h.blob.Close()
			h.c.mu.Lock()
			if h.c.uploads[h.check.meta.Digest]--; h.c.uploads[h.check.meta.Digest] <= 0 {
				delete(h.c.uploads, h.check.meta.Digest)
			}
			h.c.mu.Unlock()
			return
		}
		h.f.release()
	})
	return nil
}
