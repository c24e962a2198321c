package cdn

// Cut-through: the CDN serves a piece while its sequential read from the
// source is still filling it. The read tells the scheduler the piece is
// arriving (Scheduler.PieceArriving), and a request for the piece marked
// schedapi.HeaderArriving follows the read buffer as it fills; the piece's
// digest is sent at the end, once the piece is stored and published, and a
// read that fails cuts the followers' responses. Nothing is served as
// verified before it is: only a marked request, whose peer checks the bytes
// against the digest it gets at the end, follows an arrival.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
)

var _ upload.ArrivingTask = (*handle)(nil)

// errArrivalFailed cuts the followers of a piece whose read failed or was
// abandoned.
var errArrivalFailed = errors.New("piece read from the source did not complete")

// arrival is one piece the fetch's sequential read is filling.
type arrival struct {
	n      int
	off    int64
	length int64

	mu sync.Mutex
	// buf is the read buffer, nil once the piece is published or failed
	// (the buffer then goes back to the reader for the next piece).
	buf    []byte
	filled int64
	// digest is set when the piece is published, err when its read failed.
	digest digest.Digest
	err    error
	// changed is closed and replaced when something changed and waiting
	// says someone waits for it.
	changed chan struct{}
	waiting bool
}

// notifyLocked wakes the followers; a.mu is held.
func (a *arrival) notifyLocked() {
	if a.waiting {
		close(a.changed)
		a.changed = make(chan struct{})
		a.waiting = false
	}
}

// fill records that the first k bytes of the buffer are read.
func (a *arrival) fill(k int) {
	a.mu.Lock()
	a.filled = min(int64(k), a.length)
	a.notifyLocked()
	a.mu.Unlock()
}

// end publishes (d set) or fails (err set) the arrival and lets go of its
// buffer. It does nothing to an arrival already ended.
func (a *arrival) end(d digest.Digest, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.digest != "" || a.err != nil {
		return
	}
	a.digest, a.err, a.buf = d, err, nil
	a.notifyLocked()
}

// follow registers piece n, whose read into buf starts, as arriving: in
// the fetch, then in the scheduler. It returns the function that reports
// how much of buf is filled.
func (c *CDN) follow(ctx context.Context, f *fetch, n int, buf []byte, size, pieceSize int64) func(k int) {
	off, length := piece.Bounds(n, size, pieceSize)
	a := &arrival{n: n, off: off, length: length, buf: buf, changed: make(chan struct{})}
	f.pmu.Lock()
	f.arrivals = append(f.arrivals, a)
	f.pmu.Unlock()
	if err := c.sched.PieceArriving(ctx, f.taskID, n); err != nil {
		f.log.Debug("piece arriving", zap.Int("piece", n), zap.Error(err))
	}
	return a.fill
}

// endArrival ends the arrival of piece n, if any: published with d, or
// failed when d is empty. The caller does so before the piece's buffer is
// reused.
func (f *fetch) endArrival(n int, d digest.Digest) {
	f.pmu.Lock()
	var a *arrival
	for k, x := range f.arrivals {
		if x.n == n {
			a = x
			f.arrivals = append(f.arrivals[:k], f.arrivals[k+1:]...)
			break
		}
	}
	f.pmu.Unlock()
	if a == nil {
		return
	}
	if d == "" {
		a.end("", errArrivalFailed)
		return
	}
	a.end(d, nil)
}

// endArrivals fails every arrival left and tells the scheduler no piece
// arrives. It reports whether there was one.
func (c *CDN) endArrivals(ctx context.Context, f *fetch) {
	f.pmu.Lock()
	left := f.arrivals
	f.arrivals = nil
	f.pmu.Unlock()
	for _, a := range left {
		a.end("", errArrivalFailed)
	}
	if err := c.sched.PieceArriving(ctx, f.taskID, -1); err != nil {
		f.log.Debug("piece arriving cleared", zap.Error(err))
	}
}

// Arriving answers a request marked schedapi.HeaderArriving for the piece
// at [off, off+n): a reader of its bytes, which follows the source's read
// while the piece arrives, and its digest once it is published. It declines
// a range that is not exactly one piece, or a piece neither published nor
// arriving.
func (h *handle) Arriving(ctx context.Context, off, n int64) (upload.PieceStream, bool) {
	if h.blob != nil {
		m := h.check.meta
		i, ok := onePiece(off, n, m.Size, m.PieceSize)
		if !ok || i >= len(m.Pieces) {
			return nil, false
		}
		return &pieceStream{ctx: ctx, h: h, off: off, n: n, digest: m.Pieces[i]}, true
	}
	f := h.f
	f.mu.RLock()
	size, ps, live := f.size, f.pieceSize, f.w != nil || f.blob != nil
	i, ok := onePiece(off, n, size, ps)
	pub := ok && f.published.Has(i)
	f.mu.RUnlock()
	if !ok || !live {
		return nil, false
	}
	f.pmu.Lock()
	defer f.pmu.Unlock()
	if pub && i < len(f.prog.digests) && f.prog.digests[i] != "" {
		return &pieceStream{ctx: ctx, h: h, off: off, n: n, digest: f.prog.digests[i]}, true
	}
	for _, a := range f.arrivals {
		if a.n == i {
			return &pieceStream{ctx: ctx, h: h, off: off, n: n, a: a}, true
		}
	}
	return nil, false
}

// onePiece returns the index of the piece [off, off+n) is, exactly.
func onePiece(off, n, size, pieceSize int64) (int, bool) {
	if size < 0 || pieceSize <= 0 || off < 0 || n <= 0 || off%pieceSize != 0 || off >= size {
		return 0, false
	}
	i := int(off / pieceSize)
	if _, want := piece.Bounds(i, size, pieceSize); want != n {
		return 0, false
	}
	return i, true
}

// pieceStream reads one piece for a marked request: from the arrival's
// buffer while it fills (a set), then, once published, from the store.
type pieceStream struct {
	ctx    context.Context
	h      *handle
	off, n int64
	pos    int64
	a      *arrival
	digest digest.Digest // of a published piece (a nil)
}

func (s *pieceStream) Read(p []byte) (int, error) {
	left := s.n - s.pos
	if left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), left)]
	for s.a != nil {
		a := s.a
		a.mu.Lock()
		switch {
		case a.err != nil:
			a.mu.Unlock()
			return 0, a.err
		case a.buf != nil && a.filled > s.pos:
			k := copy(p, a.buf[s.pos:a.filled])
			a.mu.Unlock()
			s.pos += int64(k)
			return k, nil
		case a.digest != "":
			// Published: the rest is read from the store.
			s.digest = a.digest
			s.a = nil
			a.mu.Unlock()
			continue
		}
		a.waiting = true
		ch := a.changed
		a.mu.Unlock()
		select {
		case <-ch:
		case <-s.ctx.Done():
			return 0, s.ctx.Err()
		}
	}
	k, err := s.h.ReadAt(p, s.off+s.pos)
	s.pos += int64(k)
	if k == len(p) {
		return k, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return k, fmt.Errorf("read at %d: %w", s.off+s.pos, err)
}

// Ready reports whether the next Read returns without waiting for the
// source.
func (s *pieceStream) Ready() bool {
	a := s.a
	if a == nil || s.pos >= s.n {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err != nil || a.digest != "" || (a.buf != nil && a.filled > s.pos)
}

// Digest waits until the piece is published and returns its digest.
func (s *pieceStream) Digest(ctx context.Context) (string, error) {
	for a := s.a; a != nil; {
		a.mu.Lock()
		switch {
		case a.err != nil:
			a.mu.Unlock()
			return "", a.err
		case a.digest != "":
			s.digest = a.digest
			a.mu.Unlock()
			return s.digest.String(), nil
		}
		a.waiting = true
		ch := a.changed
		a.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return s.digest.String(), nil
}
