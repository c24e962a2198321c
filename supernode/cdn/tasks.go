package cdn

import (
	"bytes"
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
	check *pieceCheck
	c     *CDN
	// checkMu guards check and held, a piece of blob read and hashed by
	// this handle that FileRange serves from memory.
	checkMu   sync.Mutex
	held      heldPiece
	closeOnce sync.Once
}

// heldPiece is piece i of a blob, at off, read into buf.
type heldPiece struct {
	i   int // -1 while buf holds no sound piece
	off int64
	buf *[]byte // nil when the handle holds no buffer
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
	k := f.readRecentLocked(p, off)
	if k == len(p) {
		return k, nil
	}
	var n int
	var err error
	switch {
	case f.w != nil:
		n, err = f.w.ReadAt(p[k:], off+int64(k))
	case f.blob != nil:
		n, err = f.blob.ReadAt(p[k:], off+int64(k))
	default:
		return k, errGone
	}
	return k + n, err
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
	defer h.checkMu.Unlock()
	if r, err := h.fromMemory(off, n); r != nil || err != nil {
		return r, err
	}
	if err := h.check.check(h.blob, off, n); err != nil {
		return nil, err
	}
	if _, err := sf.Seek(off, io.SeekStart); err != nil {
		return nil, fmt.Errorf("seek to %d: %w", off, err)
	}
	return &io.LimitedReader{R: sf, N: n}, nil
}

// directReaderAt is a committed blob's reader that can read around the
// page cache (a local store's).
type directReaderAt interface {
	ReadAtDirect(p []byte, off int64) (int, error)
}

// maxHeldPiece is the largest piece an upload reads into memory to hash
// and send (fromMemory); larger ones are hashed and sent from the file.
const maxHeldPiece = 16 << 20

// fromMemory returns a reader of [off, off+n) when the range lies in one
// piece that the CDN has not hashed in this file yet (or that this handle
// holds): the piece is read around the page cache into a buffer, hashed,
// and served from that buffer. The bytes sent are then the bytes hashed,
// and content the CDN stored around the page cache is not read into it
// for the first upload of each piece (a second upload of a piece sends it
// from the file, and the page cache keeps it for the next). It returns
// nil and no error for a range it leaves to the file, and an error wrapping
// errCorruptPiece for a piece that fails its digest. checkMu is held.
func (h *handle) fromMemory(off, n int64) (io.Reader, error) {
	m := h.check.meta
	if n <= 0 || off < 0 || off+n > m.Size || m.PieceSize <= 0 || h.check.failed {
		return nil, nil
	}
	i := piece.Index(off, m.PieceSize)
	if piece.Index(off+n-1, m.PieceSize) != i {
		return nil, nil
	}
	hp := &h.held
	if hp.buf == nil || hp.i != i {
		dr, ok := h.blob.(directReaderAt)
		start, ln := piece.Bounds(i, m.Size, m.PieceSize)
		if !ok || ln > maxHeldPiece || h.check.known(i) {
			return nil, nil
		}
		if hp.buf != nil && int64(cap(*hp.buf)) < ln {
			h.c.held.put(hp.buf)
			hp.buf = nil
		}
		if hp.buf == nil {
			if hp.buf = h.c.held.get(ln); hp.buf == nil {
				return nil, nil // every buffer lent: from the file
			}
		}
		hp.i, hp.off = -1, start
		b := (*hp.buf)[:ln]
		k, err := dr.ReadAtDirect(b, start)
		if int64(k) < ln {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the file is shorter than the blob's size
			}
			return nil, fmt.Errorf("read piece %d: %w", i, err)
		}
		if err := h.check.settle(i, ln, digest.FromBytes(b)); err != nil {
			return nil, err
		}
		hp.i = i
	}
	rel := off - hp.off
	return bytes.NewReader((*hp.buf)[rel : rel+n]), nil
}

// heldBufs lends the buffers uploads read pieces into (fromMemory): at most
// maxHeldBufs at once, so that uploads hold a bounded amount of memory (an
// upload that finds none sends from the file), and keeps up to
// keptHeldBufs between uploads.
type heldBufs struct {
	mu   sync.Mutex
	lent int
	free []*[]byte
}

const (
	maxHeldBufs  = 8
	keptHeldBufs = 4
)

func (b *heldBufs) get(n int64) *[]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lent >= maxHeldBufs {
		return nil
	}
	b.lent++
	for len(b.free) > 0 {
		p := b.free[len(b.free)-1]
		b.free = b.free[:len(b.free)-1]
		if int64(cap(*p)) >= n {
			return p
		}
	}
	p := piece.Buffer(int(n))
	return &p
}

func (b *heldBufs) put(p *[]byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lent--
	if len(b.free) < keptHeldBufs {
		b.free = append(b.free, p)
	}
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
			h.checkMu.Lock()
			if h.held.buf != nil {
				h.c.held.put(h.held.buf)
				h.held.buf = nil
			}
			h.checkMu.Unlock()
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
