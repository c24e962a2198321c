package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Result is the outcome of a finished download.
type Result struct {
	// Digest is the sha256 of the content, as committed in the store.
	Digest digest.Digest
	Size   int64
	// FromSource is true when the content came from the source, not from
	// peers.
	FromSource bool
}

// Progress counts the bytes of a download. Size is -1 while unknown.
type Progress struct {
	Size int64
	// Completed is the number of bytes received and verified so far.
	Completed int64
	// FromPeers, FromCDN and FromSource split the bytes received by where
	// they came from.
	FromPeers  int64
	FromCDN    int64
	FromSource int64
	// Unreachable is the supernode (host:port) this download cannot reach
	// at the moment, empty while it can; UnreachableSince is when that
	// began. The download keeps trying until StallTimeout.
	Unreachable      string
	UnreachableSince time.Time
	// RetryAfter, when set, is when the download registers with the
	// supernode again: the origin is rate-limiting and the supernode's CDN
	// retries it.
	RetryAfter time.Time
}

// EventKind names what happened.
type EventKind string

// Event kinds.
const (
	// EventFallback: P2P failed and the download goes to the source.
	EventFallback EventKind = "fallback"
	// EventUnreachable: the supernode (Event.Node) cannot be reached; the
	// download keeps trying until StallTimeout.
	EventUnreachable EventKind = "unreachable"
	// EventReachable: the supernode answers again after EventUnreachable.
	EventReachable EventKind = "reachable"
	// EventRateLimited: the origin is rate-limiting; the supernode's CDN
	// retries it, and the download waits and registers again.
	EventRateLimited EventKind = "rate-limited"
)

// Event tells a Download's owner about a turn the download took.
type Event struct {
	Kind EventKind
	// Reason says why, for example why P2P failed.
	Reason string
	// Err is the error behind Reason, if any, for errors.Is.
	Err error
	// Node is the supernode (host:port) of EventUnreachable and
	// EventReachable.
	Node string
}

// String renders the event for humans.
func (e Event) String() string {
	switch e.Kind {
	case EventFallback:
		return "falling back to source: " + e.Reason
	case EventUnreachable:
		return "supernode " + e.Node + " unreachable: " + e.Reason
	case EventReachable:
		return "supernode " + e.Node + " reachable again"
	}
	return string(e.Kind) + ": " + e.Reason
}

// eventBuffer is how many events a Download keeps for a slow reader.
const eventBuffer = 16

// Download is one handle on a task being downloaded. Close it when done:
// the last handle of a task to close leaves the task.
type Download struct {
	t      *task
	events chan Event  // guarded by t.mu for send and close
	closed bool        // events closed; guarded by t.mu
	stop   func() bool // guarded by t.mu
	once   sync.Once
}

func (t *task) newHandle() *Download {
	d := &Download{t: t, events: make(chan Event, eventBuffer)}
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.done:
		d.closeEventsLocked()
	default:
		t.handles[d] = struct{}{}
	}
	return d
}

func (d *Download) sendLocked(ev Event) {
	if d.closed {
		return
	}
	select {
	case d.events <- ev:
	default:
	}
}

func (d *Download) closeEventsLocked() {
	if !d.closed {
		d.closed = true
		close(d.events)
	}
}

// TaskID returns the ID of the task.
func (d *Download) TaskID() taskid.ID { return d.t.id }

// Events returns the download's events. The channel is closed when the
// download finishes (or the handle is closed); events a slow reader does
// not take are dropped.
func (d *Download) Events() <-chan Event { return d.events }

// Done is closed when the download has finished, successfully or not.
func (d *Download) Done() <-chan struct{} { return d.t.done }

// Wait blocks until the download finishes or ctx ends. A successful result
// is content committed and verified in the store.
func (d *Download) Wait(ctx context.Context) (Result, error) {
	select {
	case <-d.t.done:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	}
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	return d.t.result, d.t.err
}

// Progress returns the byte counts so far.
func (d *Download) Progress() Progress {
	d.t.mu.Lock()
	defer d.t.mu.Unlock()
	return d.t.progress
}

// Close releases the handle. When it was the last handle of the task, the
// download stops if still running, the task is left on the supernode and
// the engine no longer serves it; committed content stays in the store.
// Close waits for all of that.
func (d *Download) Close() error {
	d.once.Do(func() {
		t := d.t
		t.mu.Lock()
		stop := d.stop
		t.mu.Unlock()
		if stop != nil {
			stop()
		}
		t.mu.Lock()
		delete(t.handles, d)
		d.closeEventsLocked()
		t.mu.Unlock()
		t.e.release(t)
	})
	return nil
}

// NewReader returns the content from off on, in order, as soon as it is
// verified: a Read blocks until the piece holding the next byte has been
// verified. It ends with io.EOF only after the whole content's digest has
// been verified and committed; if the download fails, Read returns that
// error instead. After the download finished, the reader reads the committed
// blob and outlives the Download handle.
func (d *Download) NewReader(off int64) io.ReadCloser {
	return d.NewRangeReader(off, -1)
}

// NewRangeReader returns n bytes of the content from off (n < 0: to the
// end, as NewReader). With n >= 0 the pieces covering the range become the
// first the download fetches: while the reader is open the engine asks the
// supernode for them before any other (see want.go), and the reader ends
// with io.EOF after the n-th byte, each byte verified against its piece's
// digest, without waiting for the rest of the content; a range past the end
// of the content ends at the end. A reader of the whole content (n < 0)
// wants nothing in particular: the swarm's rarest-first order serves it
// best; if it falls behind a download the supernode holds in full, it
// paces it (pace.go).
func (d *Download) NewRangeReader(off, n int64) io.ReadCloser {
	r := &reader{t: d.t, off: off, end: -1, closed: make(chan struct{})}
	if n >= 0 {
		r.end = off + n
		r.unwant = d.t.want(off, n)
	} else {
		r.unwant = d.t.stream(r)
	}
	return r
}

// Size returns the content's size once the supernode (or the committed
// content) tells it; it waits for it until ctx ends or the download fails.
func (d *Download) Size(ctx context.Context) (int64, error) {
	t := d.t
	for {
		t.mu.Lock()
		size, changed := t.progress.Size, t.changed
		var err error
		select {
		case <-t.done:
			if t.err != nil {
				err = t.err
			} else {
				size = t.result.Size
			}
		default:
		}
		t.mu.Unlock()
		if err != nil {
			return -1, err
		}
		if size >= 0 {
			return size, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
}

// ErrReaderClosed is returned by Read after Close.
var ErrReaderClosed = errors.New("reader closed")

type reader struct {
	t   *task
	off int64
	// end is the offset the reader stops at (exclusive), -1 for the end of
	// the content (then io.EOF waits for the whole content's digest).
	end    int64
	unwant func() // drops the reader's wanted pieces, if any
	closed chan struct{}
	once   sync.Once

	mu   sync.Mutex // guards blob
	blob content.ReaderAt
	// pos is off and movedAt when it last moved (unix ns), for the P2P
	// loop (pace.go).
	pos, movedAt atomic.Int64
}

func (r *reader) Read(p []byte) (int, error) {
	if r.off < 0 {
		return 0, fmt.Errorf("read at %d: negative offset", r.off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.end >= 0 {
		if r.off >= r.end {
			return 0, io.EOF
		}
		p = p[:min(int64(len(p)), r.end-r.off)]
	}
	t := r.t
	for {
		select {
		case <-r.closed:
			return 0, ErrReaderClosed
		default:
		}
		t.mu.Lock()
		changed := t.changed
		var finished bool
		select {
		case <-t.done:
			finished = true
		default:
		}
		res, terr := t.result, t.err
		n := t.readableLocked(r.off)
		size, ps := t.info.Size, t.info.PieceSize
		gen := t.gen
		t.mu.Unlock()

		if finished {
			if terr != nil {
				return 0, terr
			}
			return r.readBlob(p, res, ps)
		}
		if r.end >= 0 && size >= 0 && r.off >= size {
			return 0, io.EOF // a range past the end ends at the end
		}
		if n > 0 {
			m, err := t.readIngest(p[:min(int64(len(p)), n)], r.off, gen, ps)
			if errors.Is(err, errSwapped) {
				continue
			}
			r.off += int64(m)
			r.moved()
			if m > 0 {
				return m, nil
			}
			if err != nil {
				return 0, err
			}
		}
		select {
		case <-changed:
		case <-r.closed:
			return 0, ErrReaderClosed
		}
	}
}

func (r *reader) readBlob(p []byte, res Result, ps int64) (int, error) {
	if r.off >= res.Size {
		return 0, io.EOF
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.closed:
		return 0, ErrReaderClosed
	default:
	}
	if r.blob == nil {
		b, err := r.t.e.store.ReaderAt(context.Background(), res.Digest)
		if err != nil {
			return 0, fmt.Errorf("open %s: %w", res.Digest, err)
		}
		r.blob = b
	}
	n, err := r.t.e.pcache.readThrough(r.t, ps, r.blob, p[:min(int64(len(p)), res.Size-r.off)], r.off)
	r.off += int64(n)
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	return n, err
}

// Close ends the reader; a blocked Read returns ErrReaderClosed.
func (r *reader) Close() error {
	r.once.Do(func() {
		close(r.closed)
		if r.unwant != nil {
			r.unwant()
		}
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.blob != nil {
		err := r.blob.Close()
		r.blob = nil
		return err
	}
	return nil
}

var _ upload.Tasks = (*Engine)(nil)

// errNotFoundUpload matches both this package's ErrNotFound and the upload
// server's.
var errNotFoundUpload = fmt.Errorf("%w (%w)", ErrNotFound, upload.ErrNotFound)

// uploadTask serves the verified part of a task.
type uploadTask struct {
	t *task
}

var _ upload.Task = (*uploadTask)(nil)

// Size returns the content size, -1 while unknown.
func (u *uploadTask) Size() int64 {
	t := u.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mode == modeDone {
		return t.result.Size
	}
	return t.info.Size
}

// Verified reports whether every byte of [off, off+n) is verified.
func (u *uploadTask) Verified(off, n int64) bool {
	t := u.t
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.verifiedLocked(off, n)
}

func (t *task) verifiedLocked(off, n int64) bool {
	if off < 0 || n <= 0 {
		return false
	}
	switch t.mode {
	case modeDone:
		return off+n <= t.result.Size
	case modeP2P:
		size, ps := t.info.Size, t.info.PieceSize
		if ps <= 0 || (size >= 0 && off+n > size) {
			return false
		}
		return t.verified.HasRange(int((off)/ps), int((off+n-1)/ps))
	}
	return false
}

// ReadAt reads verified bytes; unverified ones are an error.
func (u *uploadTask) ReadAt(p []byte, off int64) (int, error) {
	t := u.t
	if len(p) == 0 {
		return 0, nil
	}
	t.ioMu.RLock()
	defer t.ioMu.RUnlock()
	t.mu.Lock()
	ok := t.verifiedLocked(off, int64(len(p)))
	ps := t.info.PieceSize
	t.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("read task %s at %d+%d: not verified", t.id, off, len(p))
	}
	switch {
	case t.blob != nil:
		return t.e.pcache.readThrough(t, ps, t.blob, p, off)
	case t.w != nil:
		return t.e.pcache.readThrough(t, ps, t.w, p, off)
	}
	return 0, fmt.Errorf("read task %s: %w", t.id, ErrClosed)
}

// Close releases nothing: the task lives as long as its downloads.
func (u *uploadTask) Close() error { return nil }
