package cdn

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// The CDN's committed copy is checked, not trusted. A blob's piece digests
// (meta/<hex>.json) are checked against the blob, which is hashed whole at
// the same time, before this process first serves it (a task served from
// the cache after a start); content committed by this process's own fetch
// is checked as it streams. A piece of committed content an upload reaches
// is hashed against its digest before any of its bytes is handed out, once
// per file: the CDN remembers, CDN-wide, which pieces it hashed (or the
// check before first use hashed) in which file, by the file's stamp
// (device, inode, size, modification time, as the content store's own
// check, pkg/content/local). A changed stamp, a peer's corrupt report and a
// failed check forget them, so a file written, truncated or replaced is
// hashed again before it is served; a byte that changed under a piece not
// yet hashed in that file is never sent: the read fails and the response
// is cut. What changes bytes without changing the stamp after a piece was
// hashed (a write restoring the modification time, a media error) is left
// to the peers, which check every piece against its digest and report it,
// and to the background scrub (scrub.go). Content that fails, a peer's
// corrupt report against the CDN (ReportCorrupt) and the scrub all lead to
// checkContent: a blob that no longer matches its digest is removed, its
// tasks are dropped from the scheduler and their next registration fetches
// the content from a source again; piece digests that do not match a sound
// blob are rewritten from it, and its tasks dropped so that peers learn the
// right ones.

// errCorruptPiece is returned by reads of committed content whose piece no
// longer matches its digest.
var errCorruptPiece = errors.New("cdn content failed its piece digest")

// reportCooldown is how long after a check of a blob that a corrupt report
// started further reports against it are not acted on: peers cannot make
// the CDN hash a blob again and again.
const reportCooldown = 30 * time.Second

// blobVerifier is the part of a content store that hashes a committed blob
// again on demand and removes it when it fails (pkg/content/local).
type blobVerifier interface {
	Verify(ctx context.Context, d digest.Digest, pace func(ctx context.Context, n int) error) error
}

// checkedBlob is what this process checked of a committed blob: its piece
// metadata, checked against the blob, and the pieces hashed and found sound
// in the file stamped st (none while !stamped). Its fields other than meta
// are guarded by CDN.mu. Entries live as long as the blob is in the store
// (eviction, deletion and failed checks forget them); the piece set is one
// bit a piece, beside the meta's digest a piece.
type checkedBlob struct {
	meta    pieceMeta
	st      fileStamp
	stamped bool
	ok      piece.Set
}

// checkedEntry returns what this process checked of committed blob d.
func (c *CDN) checkedEntry(d digest.Digest) (*checkedBlob, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.checked[d]
	return e, ok
}

// checkedMeta returns the piece metadata of d checked by this process.
func (c *CDN) checkedMeta(d digest.Digest) (pieceMeta, bool) {
	e, ok := c.checkedEntry(d)
	if !ok {
		return pieceMeta{}, false
	}
	return e.meta, true
}

// setChecked records m as checked against its blob, with no piece hashed
// in its file yet.
func (c *CDN) setChecked(m pieceMeta) {
	c.mu.Lock()
	c.checked[m.Digest] = &checkedBlob{meta: m}
	c.mu.Unlock()
}

// setCheckedFile records m as checked against its blob by hashing every
// piece of the file stamped st (when stamped).
func (c *CDN) setCheckedFile(m pieceMeta, st fileStamp, stamped bool) {
	e := &checkedBlob{meta: m, st: st, stamped: stamped}
	if stamped {
		for i := range m.Pieces {
			e.ok.Add(i)
		}
	}
	c.mu.Lock()
	c.checked[m.Digest] = e
	c.mu.Unlock()
}

func (c *CDN) forgetChecked(d digest.Digest) {
	c.mu.Lock()
	delete(c.checked, d)
	c.mu.Unlock()
}

// forgetPieces forgets which pieces of d were hashed: the next upload
// reaching each hashes it again.
func (c *CDN) forgetPieces(d digest.Digest) {
	c.mu.Lock()
	if e := c.checked[d]; e != nil {
		e.ok = piece.Set{}
	}
	c.mu.Unlock()
}

// pieceHashed reports whether piece i of e was hashed and found sound in
// the file stamped st, e still being what the CDN knows of its blob.
func (c *CDN) pieceHashed(e *checkedBlob, st fileStamp, i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checked[e.meta.Digest] == e && e.stamped && e.st == st && e.ok.Has(i)
}

// setPieceHashed records that piece i of e was hashed and found sound in
// the file stamped st; pieces hashed in another file are forgotten.
func (c *CDN) setPieceHashed(e *checkedBlob, st fileStamp, i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checked[e.meta.Digest] != e {
		return // forgotten or checked again meanwhile
	}
	if !e.stamped || e.st != st {
		e.st, e.stamped, e.ok = st, true, piece.Set{}
	}
	e.ok.Add(i)
}

// scanBlob reads committed blob d piece by piece and returns its piece
// metadata, whether the whole content hashes to d, and the stamp of the
// file it read, taken before it read it (stamped false when the store does
// not say). pace, when set, is called before each piece is read.
func (c *CDN) scanBlob(ctx context.Context, d digest.Digest, pace func(context.Context, int) error) (m pieceMeta, whole bool, st fileStamp, stamped bool, err error) {
	ra, err := c.store.ReaderAt(ctx, d)
	if err != nil {
		return pieceMeta{}, false, fileStamp{}, false, err
	}
	defer ra.Close()
	st, stamped = stampOf(ra)
	m, whole, err = scanReader(ctx, d, ra, pace)
	return m, whole, st, stamped, err
}

// scanReader hashes committed blob d, read from ra, piece by piece and
// whole.
func scanReader(ctx context.Context, d digest.Digest, ra content.ReaderAt, pace func(context.Context, int) error) (pieceMeta, bool, error) {
	size := ra.Size()
	m := pieceMeta{Digest: d, Size: size, PieceSize: piece.SizeFor(size)}
	whole := d.Algorithm().Digester()
	buf := make([]byte, m.PieceSize)
	for n := range piece.Count(size, m.PieceSize) {
		if err := ctx.Err(); err != nil {
			return pieceMeta{}, false, err
		}
		off, ln := piece.Bounds(n, size, m.PieceSize)
		if pace != nil {
			if err := pace(ctx, int(ln)); err != nil {
				return pieceMeta{}, false, err
			}
		}
		if k, err := ra.ReadAt(buf[:ln], off); int64(k) < ln {
			if err == nil || errors.Is(err, io.EOF) {
				// Shorter than the store said: truncated under us.
				return m, false, nil
			}
			return pieceMeta{}, false, fmt.Errorf("read blob %s piece %d: %w", d, n, err)
		}
		whole.Hash().Write(buf[:ln])
		m.Pieces = append(m.Pieces, piece.Digest(buf[:ln]))
	}
	return m, whole.Digest() == d, nil
}

// checkContent hashes committed blob d and its pieces. Content that no
// longer matches d is removed and its tasks dropped; the error then wraps
// content.ErrNotFound and content.ErrCorrupt. Piece metadata that does not
// match a sound blob is rewritten and the blob's tasks dropped. It returns
// the checked metadata.
func (c *CDN) checkContent(ctx context.Context, d digest.Digest, pace func(context.Context, int) error) (pieceMeta, error) {
	// A paced check (the scrub's) is not joined by a caller that waits.
	key := d.String()
	if pace != nil {
		key = "paced:" + key
	}
	v, err, _ := c.checks.Do(key, func() (any, error) {
		return c.checkContentOnce(ctx, d, pace)
	})
	if err != nil {
		return pieceMeta{}, err
	}
	return v.(pieceMeta), nil
}

func (c *CDN) checkContentOnce(ctx context.Context, d digest.Digest, pace func(context.Context, int) error) (pieceMeta, error) {
	log := c.log.With(zap.Stringer("digest", d))
	m, whole, st, stamped, err := c.scanBlob(ctx, d, pace)
	if errors.Is(err, content.ErrNotFound) {
		// Gone, or removed by the store's own check as it was opened.
		if errors.Is(err, content.ErrCorrupt) {
			c.metrics.corrupt.Inc()
		}
		c.dropContent(ctx, d, err)
		return pieceMeta{}, err
	}
	if err != nil {
		return pieceMeta{}, err
	}
	if !whole {
		// Confirm with the store, which removes what fails.
		cause := fmt.Errorf("content %s: %w: %w", d, content.ErrNotFound, content.ErrCorrupt)
		if bv, ok := c.store.(blobVerifier); ok {
			if verr := bv.Verify(ctx, d, nil); verr == nil {
				return pieceMeta{}, fmt.Errorf("content %s read differently twice", d)
			} else if !errors.Is(verr, content.ErrNotFound) {
				return pieceMeta{}, verr
			}
		} else if derr := c.store.Delete(ctx, d); derr != nil && !errors.Is(derr, content.ErrNotFound) {
			return pieceMeta{}, derr
		}
		c.metrics.corrupt.Inc()
		log.Warn("committed content does not match its digest: removed, its tasks are fetched again")
		c.dropContent(ctx, d, cause)
		return pieceMeta{}, cause
	}
	stored, rerr := c.cache.readMeta(d)
	if rerr != nil || !slices.Equal(stored.Pieces, m.Pieces) || stored.Size != m.Size || stored.PieceSize != m.PieceSize {
		if err := c.cache.writeMeta(m); err != nil {
			return pieceMeta{}, err
		}
		if rerr == nil {
			// The scheduler may hand out the wrong piece digests.
			c.metrics.corrupt.Inc()
			log.Warn("piece metadata did not match the content: rewritten, its tasks are dropped")
			c.dropContent(ctx, d, errors.New("piece metadata did not match the content"))
		} else {
			log.Info("piece metadata rebuilt from blob")
		}
	}
	c.setCheckedFile(m, st, stamped)
	return m, nil
}

// dropContent drops from the scheduler every task served from committed
// content d (except one fetching its own copy), after its content failed
// or vanished: peers learn at their next poll, register again, and the
// registration fetches the content from a source. also names tasks the
// caller knows to be served from d besides those recorded. Piece metadata
// of a blob no longer in the store is removed.
func (c *CDN) dropContent(ctx context.Context, d digest.Digest, cause error, also ...taskid.ID) {
	c.forgetChecked(d)
	gone := false
	if _, err := c.store.Info(ctx, d); errors.Is(err, content.ErrNotFound) {
		gone = true
		if err := c.cache.removeMeta(d); err != nil {
			c.log.Warn("drop content", zap.Stringer("digest", d), zap.Error(err))
		}
	}
	tasks := tasksOf(d, c.cache.tasksFor(d))
	for _, id := range also {
		if !slices.Contains(tasks, id) {
			tasks = append(tasks, id)
		}
	}
	dropped := 0
	for _, id := range tasks {
		c.mu.Lock()
		_, running := c.fetches[id]
		c.mu.Unlock()
		if running {
			continue
		}
		info, err := c.sched.TaskInfo(ctx, id)
		if err != nil || info.ContentDigest != d.String() {
			continue
		}
		if err := c.sched.RemoveTask(ctx, id); err != nil {
			continue
		}
		dropped++
		if _, byDigest := id.Digest(); !byDigest && gone {
			_ = c.cache.removeTask(id)
		}
		c.log.Warn("task dropped: its committed content failed a check; its next registration fetches it again",
			zap.Stringer("task", id), zap.Stringer("digest", d), zap.Error(cause))
	}
	if gone && dropped > 0 {
		c.metrics.contentGone.Inc()
	}
}

// ReportCorrupt tells the CDN that a peer found piece n of a task it
// fetched from the CDN corrupt. The CDN checks its committed copy of the
// task's content again at once, in the background (at most once per
// reportCooldown per blob); content that fails is removed and fetched
// again. A report against a fetch in progress, whose
// pieces were hashed as they were stored, is only logged.
func (c *CDN) ReportCorrupt(taskID taskid.ID, n int) {
	c.mu.Lock()
	_, running := c.fetches[taskID]
	c.mu.Unlock()
	log := c.log.With(zap.Stringer("task", taskID), zap.Int("piece", n))
	if running {
		log.Info("corrupt report against a fetch in progress")
		return
	}
	c.background(func(ctx context.Context) {
		d, ok := taskID.Digest()
		if !ok {
			if d, ok = c.cache.taskDigest(taskID); !ok {
				if d, ok = c.settledDigest(ctx, taskID); !ok {
					return
				}
			}
		}
		// Whatever the cooldown says, the next upload of each piece
		// hashes it again.
		c.forgetPieces(d)
		c.mu.Lock()
		at, seen := c.reportedAt[d]
		if !seen || time.Since(at) >= reportCooldown {
			c.reportedAt[d] = time.Now()
		}
		c.mu.Unlock()
		if seen && time.Since(at) < reportCooldown {
			log.Debug("corrupt report: content checked after a report moments ago")
			return
		}
		log.Info("corrupt report against the CDN: checking its copy")
		c.metrics.reverified.Inc()
		if _, err := c.checkContent(ctx, d, nil); err != nil && !errors.Is(err, content.ErrNotFound) {
			log.Warn("check content after a corrupt report", zap.Error(err))
		}
	})
}

// background runs fn on its own goroutine on a context Run cancels when it
// stops, and Run waits for it. Nothing runs once Run has stopped.
func (c *CDN) background(fn func(ctx context.Context)) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.bg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.bg.Done()
		fn(c.bgCtx)
	}()
}

// checkBufs holds the buffers pieces are read into to be hashed.
var checkBufs = sync.Pool{New: func() any {
	b := make([]byte, 1<<20)
	return &b
}}

// pieceCheck hashes the pieces of committed content an upload reaches
// before any of their bytes is handed out, unless the CDN hashed them in
// the same file before (checkedBlob).
type pieceCheck struct {
	c      *CDN
	taskID taskid.ID
	entry  *checkedBlob
	meta   pieceMeta
	// st is the stamp of the file the handle reads, taken when it was
	// opened; without it (stamped false) only ok remembers pieces.
	st      fileStamp
	stamped bool
	ok      piece.Set // pieces checked through this handle
	failed  bool
}

// check returns nil when every piece overlapping [off, off+n) matches its
// digest in r.
func (pc *pieceCheck) check(r io.ReaderAt, off, n int64) error {
	if pc.failed {
		return errCorruptPiece
	}
	m := pc.meta
	if n <= 0 || off >= m.Size {
		return nil
	}
	last := piece.Index(min(off+n, m.Size)-1, m.PieceSize)
	for i := piece.Index(off, m.PieceSize); i <= last; i++ {
		if pc.known(i) {
			continue
		}
		start, ln := piece.Bounds(i, m.Size, m.PieceSize)
		h := sha256.New()
		bp := checkBufs.Get().(*[]byte)
		_, err := io.CopyBuffer(h, io.NewSectionReader(r, start, ln), *bp)
		checkBufs.Put(bp)
		if err != nil {
			return fmt.Errorf("check piece %d: %w", i, err)
		}
		if err := pc.settle(i, ln, digest.NewDigest(digest.SHA256, h)); err != nil {
			return err
		}
	}
	return nil
}

// known reports whether piece i was found sound through this handle, or
// hashed in the same file by the CDN before.
func (pc *pieceCheck) known(i int) bool {
	if pc.ok.Has(i) {
		return true
	}
	if pc.stamped && pc.c.pieceHashed(pc.entry, pc.st, i) {
		pc.ok.Add(i)
		return true
	}
	return false
}

// settle takes the digest got of piece i's ln bytes as read from the file:
// a piece that matches is known from now on (CDN-wide for this file); one
// that does not fails the handle, and the content is checked in the
// background.
func (pc *pieceCheck) settle(i int, ln int64, got digest.Digest) error {
	m := pc.meta
	pc.c.metrics.servedHashed.Add(float64(ln))
	if got != m.Pieces[i] {
		pc.failed = true
		pc.c.log.Warn("committed content failed its piece digest as it was served: upload cut, content checked",
			zap.Stringer("task", pc.taskID), zap.Stringer("digest", m.Digest), zap.Int("piece", i))
		pc.c.metrics.corruptServes.Inc()
		d := m.Digest
		pc.c.forgetChecked(d)
		pc.c.background(func(ctx context.Context) { _, _ = pc.c.checkContent(ctx, d, nil) })
		return fmt.Errorf("piece %d: %w", i, errCorruptPiece)
	}
	pc.ok.Add(i)
	if pc.stamped {
		pc.c.setPieceHashed(pc.entry, pc.st, i)
	}
	return nil
}
